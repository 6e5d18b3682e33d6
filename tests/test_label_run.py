"""`run_label` / `run_sample` as stages (config in, summary out) on the tiny model
(transformers backend). `cai demo` is `cai run pipelines/demo.yaml`: see
test_pipeline_generate.py for stages sharing one engine and label alone on a user's pairs."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cai.config import ConfigError
from cai.constitution import feedback_hashes, load_constitution, principle_hash
from cai.data.store import read_manifest, read_preferences
from cai.io import DataError
from cai.label.run import LabelRunConfig, load_label_config, run_label
from cai.label.sample import SampleRunConfig, run_sample

runner = CliRunner()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_label_with_a_shared_engine(tiny_backend, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "word " * 3000},
        {"prompt": "Name a planet.", "chosen": "Mars.", "rejected": "Mars."},
    ])
    report = tmp_path / "report.json"
    cfg = LabelRunConfig(pairs=str(pairs), out=str(tmp_path / "labels"), principles=2, seed=3,
                         few_shot=False, report=str(report))
    messages: list[str] = []
    summary = run_label(cfg, backend=tiny_backend, log=messages.append)

    records = read_preferences(tmp_path / "labels")
    assert [r.prompt[-1].content for r in records] == ["Name a fruit."]
    assert records[0].labeler == tiny_backend.model and len(records[0].principle_ids) == 2
    # the hash of each principle the label used, and of the shared frame (no examples here)
    c = load_constitution("harmless")
    assert records[0].metadata["ai_feedback"]["principle_hashes"] == {
        "@frame": feedback_hashes(c, few_shot=False)["@frame"],
        **{pid: principle_hash(c, pid) for pid in records[0].principle_ids}}
    rejects = [json.loads(x) for x in (tmp_path / "labels" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rejects] == [
        ("pairs.jsonl:3", "identical"), ("pairs.jsonl:2", "too-long")]
    assert summary["records"] == 1 and summary["rejected"] == 2 and summary["too_long"] == 1
    assert json.loads(report.read_text())["report"] == summary["report"]
    assert read_manifest(tmp_path / "labels")["label"]["run"] == summary["run"]
    assert any("1 pairs too long" in m for m in messages)
    # the engine was the caller's: still usable
    assert tiny_backend.context_length() == 2048


def test_run_label_refuses_more_principles_than_the_constitution_has(tmp_path):
    pairs = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    cfg = LabelRunConfig(pairs=str(pairs), out=str(tmp_path / "o"), principles=99)
    with pytest.raises(ConfigError, match="harmless has only 14 principles"):
        run_label(cfg)  # before any engine is loaded


def test_run_label_with_nothing_to_label_writes_the_rejects(tmp_path):
    pairs = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    cfg = LabelRunConfig(pairs=str(pairs), out=str(tmp_path / "o.jsonl"))
    with pytest.raises(DataError, match="nothing to label"):
        run_label(cfg)
    rej = json.loads((tmp_path / "o.rejects.jsonl").read_text())
    assert rej["code"] == "identical"


def test_label_config_from_a_pipeline_section_with_flags_on_top(tmp_path):
    path = tmp_path / "pipe.yaml"
    path.write_text("generate:\n  prompts: p.jsonl\n  out: run\n"
                    "label:\n  pairs: run/preferences\n  out: labels\n  principles: 3\n")
    cfg = load_label_config(path, {"principles": None, "seed": 7})
    assert (cfg.pairs, cfg.principles, cfg.seed, cfg.few_shot) == ("run/preferences", 3, 7, True)
    path.write_text("label:\n  pairs: x\n  out: y\n  principels: 3\n")
    with pytest.raises(ConfigError, match="principels"):
        load_label_config(path)


def test_sample_config_and_cli_agree_that_temperature_must_be_positive(tmp_path):
    with pytest.raises(ValidationError, match="greater than 0"):
        SampleRunConfig(prompts="p.jsonl", out="c.jsonl", temperature=0.0)
    from cai.cli import app

    r = runner.invoke(app, ["sample", str(tmp_path / "p.jsonl"), "-o", str(tmp_path / "c.jsonl"),
                            "--temperature", "0"])
    assert r.exit_code == 2 and "--temperature" in r.output  # a flag its field refuses: usage


def test_run_sample_with_a_shared_engine(tiny_backend, tmp_path):
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "a", "prompt": "Name a colour."}, {"id": "b", "prompt": "Name a colour."}])
    cfg = SampleRunConfig(prompts=str(prompts), out=str(tmp_path / "c.jsonl"), n=2,
                          max_tokens=4, seed=1)
    summary = run_sample(cfg, backend=tiny_backend, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["source_id"] for r in rows] == ["a"] and len(rows[0]["responses"]) == 2
    # only the sampling settings go into a row (and its id), not where the run writes
    assert rows[0]["sampling"] == {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_tokens": 4,
                                   "seed": 1}
    rej = [json.loads(x) for x in (tmp_path / "c.rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rej] == [("prompts.jsonl:2", "duplicate")]
    assert summary["rows"] == 1 and summary["rejected"] == 1
    # a model directory on the CPU, dtype auto: fp32, and the summary says why
    assert summary["engine_precision"] == "fp32: auto (bf16 on a CUDA GPU, fp32 elsewhere), on cpu"
