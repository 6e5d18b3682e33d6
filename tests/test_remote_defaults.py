"""Every engine stage through `--backend openai` with its default settings, against
`cai serve`'s app over the tiny model on loopback: only the URL, the input and the output
are given (plus sizes that keep the test short). Chat rendering and token counts come from
the server's /tokenize; the real `vllm serve` run is tests/test_vllm_serve.py (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.serve import build_app
from child_env import REPO
from test_openai_backend import Server, free_port

PROMPTS = str(REPO / "pipelines/prompts/red_team_train.jsonl")
PAIRS = str(REPO / "pipelines/prompts/human_prefs.jsonl")


@pytest.fixture(scope="module")
def url(tiny_backend):
    port = free_port()
    server = Server(build_app(tiny_backend, "tiny"), port).start()
    yield f"http://127.0.0.1:{port}/v1"
    server.stop()


def cai(url: str, *args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--backend", "openai", "--base-url", url,
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return res.output


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_generate_with_defaults(url, tmp_path):
    cai(url, "generate", "--prompts", PROMPTS, "--limit", "2", "--max-tokens", "8",
        "-o", str(tmp_path / "gen"))
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["summary"]["records"] == 2


def test_sample_with_defaults(url, tmp_path):
    out = tmp_path / "cands.jsonl"
    cai(url, "sample", PROMPTS, "--limit", "2", "--max-tokens", "8", "-o", str(out))
    rows = jsonl(out)
    assert len(rows) == 2 and all(len(r["responses"]) == 2 for r in rows)


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_label_with_defaults(url, tmp_path, mode):
    out = tmp_path / f"{mode}.jsonl"
    cai(url, "label", "--pairs", PAIRS, "--limit", "2", "--mode", mode, "-o", str(out))
    rows = jsonl(out)
    assert len(rows) == 2 and all(0.0 <= r["p_chosen"] <= 1.0 for r in rows)


def test_score_judge_with_defaults(url, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["prompt"], "response": p["chosen"]}) + "\n"
                            for p in jsonl(REPO / "pipelines/prompts/human_prefs.jsonl")[:2]))
    out = tmp_path / "scored.jsonl"
    cai(url, "score", "--judge", "--data", str(data), "-o", str(out))
    rows = jsonl(out)
    assert len(rows) == 2 and all(0.0 <= r["judge_score"] <= 1.0 for r in rows)


def test_eval_policy_with_defaults(url, tmp_path):
    # the policy to evaluate is named: here, the model the server serves
    cai(url, "eval", "policy", "--model", "tiny", "--prompts", PROMPTS, "--limit", "2", "--max-tokens", "8",
        "-o", str(tmp_path / "ev"))
    samples = jsonl(tmp_path / "ev" / "samples.jsonl")
    assert len(samples) == 2 and all("response" in s["policy"] for s in samples)
