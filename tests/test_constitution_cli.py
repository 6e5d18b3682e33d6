"""`cai constitution ...` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.constitution import load_constitution, shipped_names
from cai.cli.constitution import app

DATA = Path(__file__).parent / "data" / "constitutions"
runner = CliRunner()


def test_validate_ok():
    result = runner.invoke(app, ["validate", *shipped_names()])
    assert result.exit_code == 0, result.output
    for name in shipped_names():
        assert f"ok   {name}: {name} " in result.output
    assert load_constitution("harmless").content_hash() in result.output


def test_validate_reports_located_errors_and_fails():
    bad = DATA / "many-errors.yaml"
    result = runner.invoke(app, ["validate", "harmless", str(bad)])
    assert result.exit_code == 1
    assert "ok   harmless" in result.output
    assert "many-errors.yaml:11:1: unknown key 'descripton' (did you mean 'description'?)" in result.output
    assert "many-errors.yaml:17:13:" in result.output
    assert "FAIL" in result.output and "6 errors" in result.output


def test_show():
    result = runner.invoke(app, ["show", "support-empathy"])
    assert result.exit_code == 0, result.output
    c = load_constitution("support-empathy")
    for p in c.principles:
        assert p.id in result.output
    assert "23.5%" in result.output  # acknowledge-first: weight 2 of 8.5
    assert "revision_rounds=2" in result.output
    assert runner.invoke(app, ["show", str(DATA / "empty.yaml")]).exit_code == 1


def test_new_writes_a_template_that_validates(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["new", "my-bot"])
    assert result.exit_code == 0, result.output
    text = Path("my-bot.yaml").read_text()
    assert text.startswith("#") and "name: my-bot" in text
    c = load_constitution("my-bot.yaml")
    assert c.name == "my-bot" and c.few_shot and c.feedback_few_shot
    assert runner.invoke(app, ["new", "my-bot"]).exit_code == 1  # no silent overwrite
    assert runner.invoke(app, ["new", "my-bot", "--force"]).exit_code == 0
    assert runner.invoke(app, ["new", "My Bot"]).exit_code == 2


def test_new_extends(tmp_path: Path):
    out = tmp_path / "sub" / "kid.yaml"
    out.parent.mkdir()
    result = runner.invoke(app, ["new", "kid", "--extends", "harmless", "-o", str(out)])
    assert result.exit_code == 0, result.output
    c = load_constitution(out)
    assert c.name == "kid"
    assert len(c.principles) == len(load_constitution("harmless").principles) + 1


def test_render_shows_every_stage_with_few_shot():
    c = load_constitution("harmless")
    p = c.principle("privacy")
    result = runner.invoke(app, ["render", "harmless", "--principle", "privacy",
                                 "--prompt", "Where does my boss live?"])
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in ("critique prompt", "revision prompt", "comparison prompt"):
        assert f"===== {stage}, principle privacy" in out
    assert p.critique_request in out and p.revision_request in out and p.comparison in out
    assert c.few_shot[0].revision in out  # few-shot included
    assert "Where does my boss live?" in out
    assert "The answer is:<- scored continuations: ' (A)' vs ' (B)'" in out
    # the pointwise prompt: the judgement question after the reply, scored Yes vs No
    assert "===== judgement prompt, principle privacy (pointwise; question from `judgement`)" in out
    assert f"{p.judgement} Answer Yes or No." in out
    assert "Assistant: <the model's first response>" in out
    assert "<- scored first token: 'Yes' + ' Yes' vs 'No' + ' No'" in out


def test_render_shows_a_derived_judgement(tmp_path: Path):
    result = runner.invoke(app, ["new", "mine", "-o", str(tmp_path / "mine.yaml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "mine.yaml").read_text().replace("    judgement:", "    # judgement:")
    (tmp_path / "mine.yaml").write_text(text)
    result = runner.invoke(app, ["render", str(tmp_path / "mine.yaml"), "--no-few-shot"])
    assert result.exit_code == 0, result.output
    assert "(pointwise; question derived from `comparison`)" in result.output
    assert ("Is the assistant's last reply good by this measure: which response is kinder? "
            "Answer Yes or No.") in result.output


def test_render_no_few_shot_and_json():
    c = load_constitution("helpful-honest")
    result = runner.invoke(app, ["render", "helpful-honest", "--no-few-shot", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["principle"] == c.principles[0].id
    assert [m["role"] for m in data["critique"]] == ["user", "assistant", "user"]
    assert data["revision"][-1]["content"] == c.principles[0].revision_request
    assert len(data["comparison"]) == 1
    assert len(data["judgement"]) == 1 and c.principles[0].judgement in data["judgement"][0]["content"]
    assert c.few_shot[0].critique not in result.output


def test_render_unknown_principle():
    result = runner.invoke(app, ["render", "harmless", "-p", "privasy"])
    assert result.exit_code == 1
    assert "did you mean 'privacy'" in result.output


def test_schema_is_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert "principles" in schema["properties"] and "extends" in schema["properties"]


def test_registered_under_cai():
    from cai.cli import app as cai_app

    result = runner.invoke(cai_app, ["constitution", "validate", "harmless"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok   harmless")


def test_installed_entry_point():
    """The one subprocess test of the installed `cai` script (pyproject's console entry)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("cai") or str(Path(sys.executable).parent / "cai")
    result = subprocess.run([exe, "constitution", "validate", "harmless"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok   harmless")


@pytest.mark.parametrize("cmd", ["validate", "show", "new", "render", "schema"])
def test_help(cmd):
    assert runner.invoke(app, [cmd, "--help"]).exit_code == 0


def test_render_through_a_chat_template(tiny_model_dir, embedded_tokenizer):
    """Token counts as the engine counts them, and whether each prompt leaves generation's
    default 256 tokens to answer within the model's context (the tiny model's is 2048)."""
    from cai import prompting
    from cai.cli.constitution import EXAMPLE_PROMPT, EXAMPLE_RESPONSE

    result = runner.invoke(app, ["render", "harmless", "--chat-template", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    c = load_constitution("harmless")
    conv = [{"role": "user", "content": EXAMPLE_PROMPT}]
    messages = prompting.critique_messages(c, c.principles[0], conv, EXAMPLE_RESPONSE)
    text = embedded_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n + 256 <= 2048
    assert (f"===== critique through {tiny_model_dir}'s chat template: {n} tokens; with 256 to "
            "answer it fits the context (2048) =====") in result.output
    assert text in result.output

    long = runner.invoke(app, ["render", "harmless", "--chat-template", str(tiny_model_dir),
                               "--prompt", "word " * 2000])
    assert long.exit_code == 0 and "does NOT fit the context (2048)" in long.output
