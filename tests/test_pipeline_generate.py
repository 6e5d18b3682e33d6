"""`cai run` with the real generate, sample and label stages on the tiny random model
(transformers backend, one engine for all three): prompt sets from two files, a second run
that does nothing, a config change that reruns its stage and those downstream, located
errors, --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import pytest

from cai.pipeline import PipelineError
from cai.pipeline.manifest import read_manifest

runner = CliRunner()
PROMPTS = Path(__file__).resolve().parent.parent / "pipelines" / "prompts"


def _write(tmp_path: Path, model: Path, max_tokens: int = 6) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""\
run:
  name: tiny
  out: {tmp_path / 'run'}
  model: {model}
  backend: transformers
  seed: 3
prompts:
  train:
    - {{file: {PROMPTS / 'red_team_train.jsonl'}, limit: 3}}
    - {{file: {PROMPTS / 'helpful_train.jsonl'}, limit: 2}}
generate:
  prompts: train
  constitution: harmless
  rounds: 1
  max_tokens: {max_tokens}
  few_shot: false
sample:
  prompts: train
  limit: 3
  max_tokens: 5
label:
  principles: 1
""")
    return path


def _cai(*args):
    from cai.cli import app

    return runner.invoke(app, list(map(str, args)))


def test_cai_run_generate_then_noop_then_rerun_on_change(tmp_path, tiny_model_dir):
    path = _write(tmp_path, tiny_model_dir)
    r = _cai("run", path)
    assert r.exit_code == 0, r.output
    stage_dir = tmp_path / "run" / "generate"
    m = read_manifest(stage_dir)
    assert m["status"] == "done" and m["summary"]["records"] == 5
    assert m["config"]["seed"] == 3 and m["config"]["model"] == str(tiny_model_dir)
    assert m["config"]["prompts"] == str(tmp_path / "run" / "prompts" / "train.jsonl")
    assert set(m["inputs"]) == {"file:prompts", "constitution"}
    assert "[1/3] generate  running: never ran" in r.output
    assert r.output.count("starting the transformers engine") == 1
    lab = read_manifest(tmp_path / "run" / "label")
    assert lab["config"]["pairs"] == str(tmp_path / "run" / "sample" / "candidates.jsonl")
    assert lab["summary"]["records"] == 3
    assert set(lab["inputs"]) == {"sample", "constitution", "file:pairs"}
    assert (tmp_path / "run" / "logs" / "engine.log").exists()
    ids = [json.loads(x)["id"] for x in
           (tmp_path / "run" / "prompts" / "train.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (PROMPTS / "red_team_train.jsonl").read_text().splitlines()[:3]]
    assert ids[:3] == [x["id"] for x in rows] and ids[3].startswith("hp-") and len(ids) == 5

    r2 = _cai("run", path)
    assert r2.exit_code == 0, r2.output
    assert "up to date" in r2.output and "running" not in r2.output
    assert read_manifest(stage_dir)["finished"] == m["finished"]
    table = lambda out: out[out.index("stage "):]  # noqa: E731 - the summary, from manifests
    assert table(r2.output).replace("skipped", "ran    ") == table(r.output)

    r3 = _cai("run", "--dry-run", _write(tmp_path, tiny_model_dir, max_tokens=7))
    assert "generate         config changed" in r3.output
    assert "sample           up to date" in r3.output  # sample reads prompts, not generate
    r4 = _cai("run", path.with_name("tiny.yaml"))
    assert r4.exit_code == 0 and "running: config changed" in r4.output
    assert "label     up to date" in r4.output
    assert read_manifest(stage_dir)["config"]["max_tokens"] == 7


def test_cai_run_bad_pipeline_is_a_located_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: {name: x}\ngenerate:\n  prompts: p.jsonl\n  temprature: 0.5\n")
    r = _cai("run", path)
    assert r.exit_code == 1
    assert f"{path}:4:3: generate.temprature: unknown key 'temprature'" in r.output
    assert f"{path}:2:1: generate.out: filled in by the runner" not in r.output


def test_cai_run_after_editing_one_principle_relabels_only_its_pairs(tmp_path, tiny_model_dir):
    """label keeps its directory when only the constitution changed and relabels exactly
    the pairs judged under the edited principle; the other labels stay as they were."""
    from cai.constitution import SHIPPED_DIR
    from cai.data.store import read_preferences

    constitution = tmp_path / "c.yaml"
    constitution.write_text((SHIPPED_DIR / "harmless.yaml").read_text())
    path = _write(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace("constitution: harmless", f"constitution: {constitution}")
                    .replace("label:\n", f"label:\n  constitution: {constitution}\n"))
    assert _cai("run", path).exit_code == 0
    out = tmp_path / "run" / "label" / "preferences"
    before = {r.prompt[-1].content + r.chosen[-1].content + r.rejected[-1].content: r
              for r in read_preferences(out)}
    used = [r.principle_ids[0] for r in before.values()]
    edited = used[0]
    assert 0 < used.count(edited) < len(used)  # some labels relabeled, some kept
    text = constitution.read_text()  # reword the comparison question of the first label's
    at = text.index("    comparison: ", text.index(f"  - id: {edited}\n")) + len("    comparison: ")
    constitution.write_text(text[:at] + "Judged strictly, " + text[at:])
    r = _cai("run", path)
    assert r.exit_code == 0, r.output
    lab = read_manifest(tmp_path / "run" / "label")["summary"]
    assert (lab["relabeled"], lab["kept"]) == (used.count(edited), len(used) - used.count(edited))
    after = list(read_preferences(out))
    kept = [r for r in after if r.principle_ids[0] != edited]
    assert len(kept) == lab["kept"] and all(
        before[r.prompt[-1].content + r.chosen[-1].content + r.rejected[-1].content] == r
        or before[r.prompt[-1].content + r.rejected[-1].content + r.chosen[-1].content] == r
        for r in kept)


def test_label_alone_on_the_users_pairs(tmp_path, tiny_model_dir):
    """Stages left out: a user with their own pairs starts at label. The label stage's own
    checks still hold (an over-long pair is a reject; too many principles is an error)."""
    from cai.data.store import read_preferences

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "word " * 3000}]))
    path = tmp_path / "p.yaml"
    text = (f"run: {{name: u, out: {tmp_path / 'run'}, model: {tiny_model_dir}, "
            f"backend: transformers}}\nlabel:\n  pairs: {pairs}\n  few_shot: false\n")
    path.write_text(text)
    r = _cai("demo", "--config", path)  # cai demo is cai run on a pipeline file
    assert r.exit_code == 0, r.output
    out = tmp_path / "run" / "label"
    assert [x.prompt[-1].content for x in read_preferences(out / "preferences")] == ["Name a fruit."]
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [x["code"] for x in rej] == ["too-long"]
    assert set(read_manifest(out)["inputs"]) == {"constitution", "file:pairs"}
    labeled = read_preferences(out / "preferences")

    # one more pair in the user's file: label reruns in place and labels only that pair
    with pairs.open("a") as f:
        f.write(json.dumps({"prompt": "Name a tree.", "chosen": "An oak.", "rejected": "A rose."}) + "\n")
    r = _cai("run", path)
    assert r.exit_code == 0, r.output
    summary = read_manifest(out)["summary"]
    assert (summary["relabeled"], summary["kept"], summary["records"]) == (1, 1, 2)
    assert "2 labeled pairs (1 labeled, 1 kept)" in r.output
    assert read_preferences(out / "preferences")[0] == labeled[0]  # kept as it was

    path.write_text(text + "  principles: 99\n")
    r = _cai("run", path)
    assert r.exit_code == 1 and "only 14 principles" in r.output
    assert read_manifest(out)["status"] == "failed"


def test_the_recipe_is_wired_from_upstream_outputs(tmp_path):
    """What the runner writes into each real stage's config for the RL-CAI recipe, two
    rounds: SFT on generate's revisions, sampling from the SFT model then from round 1's PPO
    policy, labels from this round's samples, the reward model on them plus human pairs by
    weight (continuing the previous round's), PPO from the latest policy against this round's
    reward model, eval of the final policy against the SFT model with the last reward model."""
    from cai.pipeline import builtin_stages, load_pipeline, plan

    human = tmp_path / "human.jsonl"
    human.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(f"""\
run: {{name: r, out: {tmp_path / 'run'}, model: base-model, rounds: 2, seed: 4}}
prompts:
  train: [{{file: {PROMPTS / 'red_team_train.jsonl'}, limit: 2}}]
generate: {{prompts: train}}
sft: {{lr: 1.0e-5}}
sample: {{prompts: train}}
label: {{}}
rm: {{data: [{human}:0.5, upstream:2]}}
ppo: {{prompts: train, iterations: 2, lora_r: 16}}
eval: {{harmful: [{PROMPTS / 'red_team_eval.jsonl'}], benign: [{PROMPTS / 'helpful_eval.jsonl'}]}}
""")
    stages = builtin_stages()
    steps = {s.key: s.config for s in plan(load_pipeline(path, [s.name for s in stages]),
                                           stages, echo=lambda m: None)}
    run = tmp_path / "run"
    assert list(steps) == ["generate", "sft", "round1/sample", "round1/label", "round1/rm",
                           "round1/ppo", "round2/sample", "round2/label", "round2/rm",
                           "round2/ppo", "eval"]
    assert steps["generate"].model == "base-model" and steps["generate"].seed == 4
    assert steps["sft"].data == [str(run / "generate" / "sft")] and steps["sft"].model == "base-model"
    # a directory the runner kept (same config and inputs) holds this run: continue it
    assert steps["sft"].resume and steps["round1/rm"].resume
    assert steps["round1/sample"].model == str(run / "sft")
    assert steps["round2/label"].pairs == str(run / "round2" / "sample" / "candidates.jsonl")
    assert steps["round1/rm"].data == [f"{human}:0.5", f"{run / 'round1' / 'label' / 'preferences'}:2"]
    assert steps["round1/rm"].model == "base-model"
    assert steps["round2/rm"].model == str(run / "round1" / "rm")
    assert (steps["round1/ppo"].model, steps["round1/ppo"].reward) == (str(run / "sft"),
                                                                         str(run / "round1" / "rm"))
    assert steps["round1/ppo"].out == str(run / "round1" / "ppo")
    policy1 = str(run / "round1" / "ppo" / "policy")
    assert steps["round2/sample"].model == policy1 and steps["round2/ppo"].model == policy1
    assert steps["round2/ppo"].prompts == str(run / "prompts" / "train.jsonl")
    ev = steps["eval"]
    assert (ev.model, ev.reference, ev.reward) == (str(run / "round2" / "ppo" / "policy"),
                                                         str(run / "sft"), str(run / "round2" / "rm"))
    # `reference: base`: the whole recipe's before/after (the base model as reference)
    path.write_text(path.read_text().replace("eval: {", "eval: {reference: base, "))
    steps = {s.key: s.config for s in plan(load_pipeline(path, [s.name for s in stages]),
                                           stages, echo=lambda m: None)}
    assert (steps["eval"].model, steps["eval"].reference) == (str(run / "round2" / "ppo" / "policy"),
                                                              "base-model")
    path.write_text(path.read_text().replace("reference: base", "reference: other"))
    with pytest.raises(PipelineError, match="reference. is filled in by the runner"):
        plan(load_pipeline(path, [s.name for s in stages]), stages, echo=lambda m: None)


def test_shipped_pipelines_plan(tmp_path, monkeypatch):
    """pipelines/demo.yaml and pipelines/gpu-7b.yaml validate with every stage's config."""
    from cai.pipeline import builtin_stages, load_pipeline, plan

    root = PROMPTS.parent.parent
    monkeypatch.chdir(root)
    stages = builtin_stages()
    for name in ("demo", "gpu-7b"):
        pipeline = load_pipeline(root / "pipelines" / f"{name}.yaml", [s.name for s in stages])
        pipeline.run.out = str(tmp_path / name)  # keep the prompt sets out of the checkout
        steps = plan(pipeline, stages, echo=lambda m: None)
        assert steps[0].key == "generate"
