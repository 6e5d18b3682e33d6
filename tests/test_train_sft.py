"""SFT on a tiny random Llama: the assistant-only mask, a real run whose output loads with
cai's transformers backend (and vLLM, under the lock), bad input, and the CLI path of the
reward model (train -> eval -> score)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.io import DataError
from cai.train.accel import choose_mixed_precision
from cai.train.sft import SFTConfig, encode_conversation, run_sft


def conversations(n: int) -> list[dict]:
    return [{"id": str(i), "messages": [
        {"role": "user", "content": f"What comes after {i}?"},
        {"role": "assistant", "content": f"{i + 1} comes after {i}."}]} for i in range(n)]


def write_sft_parquet(path: Path, rows: list[dict]) -> Path:
    """The layout of `cai generate`'s sft/ directory."""
    import pyarrow as pa

    from cai.generate.outputs import SFT_SCHEMA
    from cai.io import write_parquet_atomic

    full = [{**r, "source_id": r["id"], "principle_ids": ["p"], "constitution": "harmless",
             "model": "m"} for r in rows]
    path.mkdir(parents=True)
    write_parquet_atomic(pa.Table.from_pylist(full, schema=SFT_SCHEMA), path / "part-00000.parquet")
    return path


def test_assistant_only_mask_on_two_turns(embedded_tokenizer):
    messages = [{"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke"},
                {"role": "assistant", "content": "Why did the chicken cross the road?"}]
    ids, labels = encode_conversation(embedded_tokenizer, messages)
    assert len(ids) == len(labels)
    trained = [i for i, l in zip(ids, labels) if l != -100]
    assert all(l in (-100, i) for i, l in zip(ids, labels))
    # exactly the two answers, each with its end-of-turn token; nothing of the system prompt,
    # the user turns or the role headers
    assert embedded_tokenizer.decode(trained) == (
        "Hello! How can I help?<|im_end|>Why did the chicken cross the road?<|im_end|>")
    first = labels.index(next(l for l in labels if l != -100))
    assert embedded_tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_sft_run_saves_a_model_that_cai_loads_and_answers(tiny_model_dir, tmp_path):
    data = write_sft_parquet(tmp_path / "sft", conversations(24))
    out = tmp_path / "model"
    summary = run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(data)], out=str(out),
                                lr=1e-3, batch_size=8, epochs=2, eval_fraction=0.2,
                                lora_r=4, log_every=1, progress=False, save_every=None))
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if "loss" in r]
    assert train_losses[-1] < train_losses[0]  # it learns
    assert summary["eval_conversations"] == 5 and "loss" in summary["eval"]
    assert summary["trainable_parameters"] < summary["parameters"] / 10  # LoRA
    assert summary["attn_implementation"] == "eager"  # auto, on the CPU, short rows
    assert summary["precision"] == choose_mixed_precision("auto")[1]
    assert (out / "DONE").is_file() and not (out / "checkpoints").exists()
    assert not list(out.glob("adapter_*"))  # merged: a plain model directory
    assert (out / "tensorboard").is_dir()

    from cai.backends import SamplingConfig
    from cai.backends.hf_backend import TransformersBackend

    backend = TransformersBackend(str(out), batch_size=2)
    [gens] = backend.generate([[{"role": "user", "content": "What comes after 3?"}]],
                              SamplingConfig(max_tokens=8, temperature=0.0))
    assert len(gens[0].token_ids) >= 1 and isinstance(gens[0].text, str)


def test_sft_bad_inputs(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="pairs.jsonl: this is preference pairs"):
        run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(pairs)], out=str(tmp_path / "a")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(DataError, match=r"no usable conversations.*bad.jsonl:1: no non-empty "
                                        "assistant turn"):
        run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(bad)], out=str(tmp_path / "b")))


def test_cli_train_rm_eval_and_score(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app
    from test_train_rm import write_marker_pairs

    data = write_marker_pairs(tmp_path / "pairs.jsonl", 24)
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"rm:\n  data: [{data}]\n  lr: 0.001\n  max_length: 48\n  max_steps: 3\n")
    runner = CliRunner()
    out = tmp_path / "rm"
    r = runner.invoke(app, ["train", "rm", "--config", str(cfg), "--model", str(tiny_model_dir),
                            "-o", str(out), "--no-progress", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "train_config.json").read_text())["batch_size"] == 4
    assert json.loads((out / "train_config.json").read_text())["lr"] == 0.001
    r = runner.invoke(app, ["eval", "rm", "--model", str(out), "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout[r.stdout.index("{"):])
    assert m["n"] == 24 and 0 <= m["accuracy"] <= 1 and m["length_baseline"] is not None
    assert m["by_principle"]["(none)"]["n"] == 24  # human pairs: labeled under no principle
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": "hi", "response": t}) + "\n"
                            for t in ("one banana", "two")))
    r = runner.invoke(app, ["score", "--model", str(out), "--data", str(rows), "-o",
                            str(tmp_path / "scored.jsonl")])
    assert r.exit_code == 0, r.output
    scored = [json.loads(l) for l in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [s["response"] for s in scored] == ["one banana", "two"]
    assert all(isinstance(s["reward"], float) for s in scored)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = runner.invoke(app, ["eval", "rm", "--model", str(out), "--data", str(empty)])
    assert r.exit_code == 1 and "empty dataset" in r.output


@pytest.mark.vllm
def test_vllm_loads_the_sft_output(embedded_model_dir, tmp_path):
    """The embedded model, fine-tuned for two steps, loads in vLLM and answers. Run under
    `flock /tmp/cai-vllm.lock`."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed")
    data = write_sft_parquet(tmp_path / "sft", conversations(8))
    out = tmp_path / "model"
    run_sft(SFTConfig(model=str(embedded_model_dir), data=[str(data)], out=str(out), lr=1e-5,
                      batch_size=4, max_steps=2, progress=False, save_every=None))
    from cai.backends import SamplingConfig
    from cai.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(out), max_model_len=1024, gpu_memory_utilization=0.15)
    try:
        [gens] = backend.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                  SamplingConfig(max_tokens=16, temperature=0.0))
    finally:
        backend.close()
    assert "Paris" in gens[0].text


def test_auto_mixed_precision_follows_the_device(monkeypatch):
    """auto: bf16 on a CUDA GPU with bf16 and on a CPU with AMX, else fp32; a named
    precision is kept."""
    import torch

    from cai.train import accel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.pick_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert accel.pick_mixed_precision("auto") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert accel.pick_mixed_precision("auto") == "bf16"
    assert accel.pick_mixed_precision("auto", cpu=True) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert accel.pick_mixed_precision("auto", cpu=True) == "no"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert accel.pick_mixed_precision("auto", cpu=True) == "no"
    assert accel.pick_mixed_precision("bf16", cpu=True) == "bf16"
    assert accel.pick_mixed_precision("no") == "no"


def test_a_cpu_stage_after_a_gpu_stage_gets_a_fresh_state(monkeypatch):
    """accelerate refuses `cpu=True` once its state sits on a GPU; `cai run` may train one stage
    on the GPU and the next on the CPU, so the state is dropped, process group and all, when
    the device changes in a single process (and kept when only the precision changes)."""
    import torch
    from accelerate.state import AcceleratorState, PartialState

    from cai.train.accel import allow_precision

    def fake(device: str, precision: str):
        monkeypatch.setattr(PartialState, "_shared_state",
                            {"device": torch.device(device), "num_processes": 1})
        monkeypatch.setattr(AcceleratorState, "_shared_state",
                            {"device": torch.device(device), "_mixed_precision": precision})

    fake("cuda", "bf16")
    allow_precision("no", cpu=True)
    assert PartialState._shared_state == {} and AcceleratorState._shared_state == {}
    fake("cpu", "bf16")
    allow_precision("no", cpu=True)  # same device, other precision: keep the process group
    assert PartialState._shared_state and AcceleratorState._shared_state == {}
    fake("cpu", "no")
    allow_precision("no", cpu=True)  # nothing changes
    assert AcceleratorState._shared_state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    allow_precision("no")  # a GPU is there now and the stage does not ask for the CPU
    assert PartialState._shared_state == {}
    PartialState._shared_state["num_processes"] = 2
    PartialState._shared_state["device"] = torch.device("cuda")
    with pytest.raises(RuntimeError, match="distributed"):
        allow_precision("no", cpu=True)


def test_attention_pick_follows_device_and_the_saved_weights_budget(tiny_model_dir):
    """auto: eager on a CPU while rows × heads × T² × 4 bytes × layers fits the budget (its
    backward is the faster one there), else the model's default; an explicit choice stands."""
    from cai.train.modeling import EAGER_ATTENTION_BUDGET, pick_attn_implementation

    pick = lambda req="auto", cpu=True, rows=8, T=512: pick_attn_implementation(  # noqa: E731
        req, str(tiny_model_dir), on_cpu=cpu, rows=rows, max_len=T)
    assert pick() == "eager"
    assert pick(cpu=False) is None
    assert pick("sdpa") == "sdpa" and pick("eager", cpu=False) == "eager"
    # the tiny Llama: 4 heads, 2 layers -> 32 bytes per row per T²
    T = int((EAGER_ATTENTION_BUDGET / 32) ** 0.5)
    assert pick(rows=1, T=T) == "eager" and pick(rows=1, T=T + 1) is None


def test_a_field_added_after_a_run_started_counts_at_its_default(tmp_path):
    from cai.train.config import config_changes

    cfg = SFTConfig(data=["x.parquet"], out=str(tmp_path / "o"))
    saved = cfg.model_dump(mode="json")
    del saved["attn_implementation"]  # a run started before the field existed
    assert config_changes(saved, cfg) == []
    assert config_changes(saved, cfg.model_copy(update={"attn_implementation": "sdpa"})) == [
        "attn_implementation (was 'auto', now 'sdpa')"]
