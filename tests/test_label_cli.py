"""`cai sample` and `cai label` end to end on the tiny model (transformers backend), and
one check of the labeler on the embedded model through the shared vLLM engine."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from cai.data.store import read_manifest, read_preferences

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    from cai.cli import app

    return app


def test_sample_then_label_with_eval_and_report(app, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": "p1", "prompt": "How do I pick a lock?"},
        {"id": "p2", "messages": [{"role": "user", "content": "Name a colour."}]},
        {"id": "p3", "prompt": "   "},
    ]) + "\n")
    cands = tmp_path / "cands.jsonl"
    common = ["--model", str(tiny_model_dir), "--backend", "transformers"]
    r = runner.invoke(app, ["sample", str(prompts), "-o", str(cands), "--n", "3",
                            "--max-tokens", "6", "--seed", "1", *common])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in cands.read_text().splitlines()]
    assert [row["source_id"] for row in rows] == ["p1", "p2"]
    assert all(len(row["responses"]) == 3 and len(row["finish_reasons"]) == 3 for row in rows)
    rejects = [json.loads(line) for line in (tmp_path / "cands.rejects.jsonl").read_text().splitlines()]
    assert [(x["location"], x["code"]) for x in rejects] == [("prompts.jsonl:3", "empty")]

    # a human label for one candidate pair, to evaluate against
    first = rows[0]
    human = tmp_path / "human.jsonl"
    human.write_text(json.dumps({"prompt": first["prompt"], "chosen": first["responses"][1],
                                 "rejected": first["responses"][0]}) + "\n")
    out, report = tmp_path / "labeled", tmp_path / "report.json"
    r = runner.invoke(app, ["label", "--pairs", str(cands), "-o", str(out), "-k", "2", "--seed", "4",
                            "--eval-against", str(human), "--report", str(report), *common])
    assert r.exit_code == 0, r.output
    records = read_preferences(out)
    from itertools import combinations

    norm = lambda t: " ".join(t.split())  # noqa: E731
    usable = [(a, b) for row in rows for a, b in combinations(row["responses"], 2)
              if a.strip() and b.strip() and norm(a) != norm(b)]
    assert len(records) == len(usable) >= 1  # every unordered pair of 3 samples, minus ties
    label_rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert len(label_rejects) == 6 - len(usable)
    for rec in records:
        assert rec.source == "ai-feedback" and rec.p_chosen >= 0.5 and len(rec.principle_ids) == 2
        assert rec.labeler == str(tiny_model_dir)
        assert rec.metadata["input"]["source"] == "candidates"
    summary = json.loads(report.read_text())
    assert summary["report"]["pairs"] == len(records)
    assert summary["report"]["comparisons"] == 2 * len(records)
    assert summary["report"]["human_accuracy"]["pairs"] == 1
    assert read_manifest(out)["label"]["report"] == summary["report"]
    assert "position consistency" in r.output and "accuracy vs human" in r.output

    # relabel the labeled store as pairs, to a JSONL file, without few-shot
    out2 = tmp_path / "relabeled.jsonl"
    r = runner.invoke(app, ["label", "--pairs", str(out), "-o", str(out2), "--no-few-shot",
                            "--limit", "2", *common])
    assert r.exit_code == 0, r.output
    again = read_preferences(out2)
    assert len(again) == 2 and all(x.metadata["input"]["source"] == "ai-feedback" for x in again)
    assert again[0].metadata["ai_feedback"]["few_shot"] is False


def test_label_rejects_too_many_principles_and_empty_input(app, tmp_path, tiny_model_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(tmp_path / "o"), "-k", "99"])
    assert r.exit_code == 1 and "only" in r.output
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n")
    r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(tmp_path / "o"),
                            "--model", str(tiny_model_dir), "--backend", "transformers"])
    assert r.exit_code == 1 and "nothing to label" in r.output
    rej = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["code"] == "identical"


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")
def test_vllm_labels_like_transformers_on_the_embedded_model(vllm_backend, embedded_hf_backend):
    from cai.constitution import load_constitution
    from cai.label import LabelConfig, label_pairs, read_pairs

    pairs, _ = read_pairs("pipelines/prompts/human_prefs.jsonl")
    pairs = pairs[:2]
    c, cfg = load_constitution("harmless"), LabelConfig(principles=1, seed=0)
    v = label_pairs(vllm_backend, c, pairs, cfg)
    h = label_pairs(embedded_hf_backend, c, pairs, cfg)
    for lv, lh in zip(v, h):
        assert [x.principle for x in lv.verdicts] == [x.principle for x in lh.verdicts]
        for xv, xh in zip(lv.verdicts, lh.verdicts):
            assert xv.p_a == pytest.approx(xh.p_a, abs=0.02)
        assert lv.p_first == pytest.approx(lh.p_first, abs=0.02)


def test_label_sets_aside_pairs_longer_than_the_context(app, tmp_path, tiny_model_dir):
    """A pair whose comparison prompt cannot fit the feedback model's context (the tiny
    model's is 2048 tokens) goes to the rejects with its location; the others are labeled."""
    long_answer = "word " * 3000
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": long_answer},
        {"prompt": "Name a planet.", "chosen": "Mars.", "rejected": "The Moon."},
    ]) + "\n")
    out = tmp_path / "labeled"
    r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(out), "--model",
                            str(tiny_model_dir), "--backend", "transformers", "--no-few-shot"])
    assert r.exit_code == 0, r.output
    assert "1 pairs too long" in r.output
    assert sorted(rec.prompt[-1].content for rec in read_preferences(out)) == [
        "Name a fruit.", "Name a planet."]
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(x["location"], x["code"]) for x in rej] == [("pairs.jsonl:2", "too-long")]
    assert "the feedback model's context is 2048" in rej[0]["reason"]


def test_sample_rejects_prompts_that_leave_no_room_to_answer(app, tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n"
                       + json.dumps({"prompt": "word " * 2100}) + "\n")
    cands = tmp_path / "cands.jsonl"
    r = runner.invoke(app, ["sample", str(prompts), "-o", str(cands), "--max-tokens", "4",
                            "--model", str(tiny_model_dir), "--backend", "transformers"])
    assert r.exit_code == 0, r.output
    assert len(cands.read_text().splitlines()) == 1
    rej = [json.loads(x) for x in (tmp_path / "cands.rejects.jsonl").read_text().splitlines()]
    assert [x["location"] for x in rej] == ["prompts.jsonl:2"]
    assert rej[0]["code"] == "over-length" and "max_prompt_tokens 2044" in rej[0]["reason"]
