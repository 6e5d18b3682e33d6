from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cai import models
from cai.models import DEFAULT_MODEL, ModelError, pull, resolve_model


def test_pull_materialises_safetensors_and_second_pull_is_noop(embedded_model_dir):
    files = {p.name for p in embedded_model_dir.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith((".bin", ".pt", ".gguf")) for f in files)
    config = (embedded_model_dir / "config.json").read_text()
    assert "quantization_config" not in config
    before = (embedded_model_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert pull() == embedded_model_dir
    assert time.perf_counter() - start < 1.0
    assert (embedded_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_pulled_model_loads_and_answers_in_chat_format(embedded_model_dir, embedded_tokenizer):
    from cai.backends import SamplingConfig
    from cai.backends.hf_backend import TransformersBackend

    backend = TransformersBackend(DEFAULT_MODEL)
    out = backend.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                           SamplingConfig(temperature=0.0, max_tokens=24))
    assert "Paris" in out[0][0].text


def test_interrupted_pull_leaves_nothing_behind(tmp_path, monkeypatch, embedded_tokenizer):
    monkeypatch.setenv("CAI_HOME", str(tmp_path))
    from conftest import build_tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    # the package's GGUF read as a tiny model (dequantising the real one takes 25 s; what
    # is tested is what an interrupted write leaves)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: build_tiny_llama(embedded_tokenizer))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: embedded_tokenizer)
    written = []

    def boom(self, path, **k):
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        written.append(path)
        raise KeyboardInterrupt  # as if the user hit Ctrl-C mid-write

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        pull()
    assert written  # the write had begun
    assert not models.is_pulled(DEFAULT_MODEL)
    assert list((tmp_path / "models").iterdir()) == []  # no half-written directory


def test_resolve_accepts_registry_name_and_local_dir(embedded_model_dir, tiny_model_dir):
    assert resolve_model(None) == str(embedded_model_dir)
    assert resolve_model(DEFAULT_MODEL) == str(embedded_model_dir)
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


def test_resolve_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(tmp_path / "missing"))
    # Offline, a hub id fails fast with a message that says what to do instead.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not fetch hub model 'someorg/somemodel'.*local directory"):
        resolve_model("someorg/somemodel")


def test_models_cli_list_and_pull(embedded_model_dir):
    from typer.testing import CliRunner

    from cai.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["models", "pull"])
    assert res.exit_code == 0 and "already present" in res.output
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and DEFAULT_MODEL in res.output and "pulled" in res.output
