"""The precision a training stage picks is reported with why (summary and `cai run`'s end
summary), from the same function that picks it; the CPU's flags are faked here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cai.train import accel


def _cpu(monkeypatch, *, amx: bool | None, avx512_bf16: bool | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, flag in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if flag is None:  # an older torch without the probe
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda flag=flag: flag, raising=False)


@pytest.mark.parametrize("amx, avx512_bf16, want", [
    (True, True, ("bf16", "bf16: AMX (native bf16 matmul on this CPU)")),
    (False, True, ("no", "fp32: no AMX; avx512_bf16 alone measured slower than fp32")),
    (False, False, ("no", "fp32: no AMX; avx512_bf16 absent")),
    (None, None, ("no", "fp32: no AMX; avx512_bf16 absent")),
])
def test_cpu_flags_decide_precision_and_why(monkeypatch, amx, avx512_bf16, want):
    _cpu(monkeypatch, amx=amx, avx512_bf16=avx512_bf16)
    assert accel.choose_mixed_precision("auto") == want
    assert accel.choose_mixed_precision("auto", cpu=True) == want
    assert accel.pick_mixed_precision("auto") == want[0]


def test_a_probe_that_fails_means_absent(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo unavailable")

    _cpu(monkeypatch, amx=None, avx512_bf16=None)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert accel.choose_mixed_precision("auto") == ("no", "fp32: no AMX; avx512_bf16 absent")


def test_gpu_and_named_precisions_say_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.choose_mixed_precision("auto") == ("bf16", "bf16: CUDA GPU with bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert accel.choose_mixed_precision("auto") == ("no", "fp32: CUDA GPU without bf16")
    assert accel.choose_mixed_precision("no") == ("no", "fp32: mixed_precision: no in the config")
    assert accel.choose_mixed_precision("bf16", cpu=True) == (
        "bf16", "bf16: mixed_precision: bf16 in the config")


def _step(tmp_path: Path, key: str, summary: dict) -> SimpleNamespace:
    from cai.pipeline.manifest import write_manifest

    d = tmp_path / key
    write_manifest(d, {"status": "done", "seconds": 60.0, "summary": summary})
    return SimpleNamespace(key=key, dir=d, stage=SimpleNamespace(brief=lambda s: "", final=None))


def test_run_summary_states_the_training_precision(tmp_path):
    from cai.pipeline.summary import format_summary

    why = "fp32: no AMX; avx512_bf16 absent"
    steps = [_step(tmp_path, "generate", {}), _step(tmp_path, "sft", {"precision": why}),
             _step(tmp_path, "ppo", {"precision": why})]
    assert f"training precision: {why}" in format_summary(steps).splitlines()
    steps.append(_step(tmp_path, "rm", {"precision": "fp32: mixed_precision: no in the config"}))
    assert ("training precision: sft " + why + " | ppo " + why
            + " | rm fp32: mixed_precision: no in the config") in format_summary(steps)
    assert "precision" not in format_summary(steps[:1])


def test_engine_dtype_rules_say_why():
    from cai.backends.hf_backend import hf_precision
    from cai.backends.vllm_backend import vllm_precision

    assert vllm_precision("auto", False, "float32") == (
        "fp32: vLLM on a CPU, kept in float32 (in bf16 the embedded model stops answering "
        "simple questions)")
    assert vllm_precision("bfloat16", False, "bfloat16") == (
        "bf16: dtype: bfloat16 in the backend options")
    assert vllm_precision("auto", True, "bfloat16") == (
        "bf16: vLLM's auto on a CUDA GPU (the model's own dtype)")
    assert hf_precision("float16", "cpu", "float16") == "fp16: dtype: float16 in the backend options"
    assert hf_precision("model", "cpu", "float32") == "fp32: the model object's own dtype"


def test_eval_states_each_engines_precision_once_when_they_agree():
    from cai.eval.policy import engine_precision_line

    fp32 = "fp32: vLLM on a CPU"
    assert engine_precision_line({"policy": fp32, "reference": fp32}) == fp32
    assert engine_precision_line({"policy": fp32, "reference": "bf16: x"}) == (
        "policy fp32: vLLM on a CPU | reference bf16: x")
    assert engine_precision_line({"policy": fp32, "reference": None}) == "policy fp32: vLLM on a CPU"
    assert engine_precision_line({"policy": None}) is None


def test_run_summary_states_the_engine_precision_apart_from_training(tmp_path):
    from cai.pipeline.summary import format_summary

    engine, train = "fp32: vLLM on a CPU, kept in float32", "fp32: no AMX; avx512_bf16 absent"
    steps = [_step(tmp_path, "generate", {"engine_precision": engine}),
             _step(tmp_path, "sft", {"precision": train}),
             _step(tmp_path, "eval", {"engine_precision": engine})]
    lines = format_summary(steps).splitlines()
    assert f"training precision: {train}" in lines
    assert f"engine precision: {engine}" in lines
