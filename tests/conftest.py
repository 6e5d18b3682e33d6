"""Shared fixtures: the embedded model (pulled once into the user's cai cache) and tiny
random Llama models built with the embedded tokenizer, for fast backend tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from cai.models import pull

    return pull()  # a no-op after the first pull


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def build_tiny_llama(tokenizer, seed: int = 0, head_dim: int | None = None):
    """A 2-layer random Llama with the embedded tokenizer's vocabulary. `head_dim`: vLLM's
    CPU attention has no kernel for the default 16 (hidden 64 / 4 heads); 64 runs there."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        **({"head_dim": head_dim} if head_dim else {}),
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A random one-layer reward model (sequence classification, one label) on the embedded
    model's tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(3)
    tok = embedded_tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A tiny random Llama saved as a safetensors HF directory (loads like any model)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(embedded_tokenizer).save_pretrained(path, safe_serialization=True)
    embedded_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from cai.backends.hf_backend import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), batch_size=4)


@pytest.fixture(scope="session")
def vllm_backend(embedded_model_dir):
    """One vLLM engine on the embedded model for the whole test session (start costs ~40-70 s
    on CPU, so every vLLM test shares it). Small KV cache so the suite fits beside other work."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed")
    from cai.backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(embedded_model_dir), max_model_len=4096, gpu_memory_utilization=0.2)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def embedded_hf_backend(embedded_model_dir):
    from cai.backends.hf_backend import TransformersBackend

    return TransformersBackend(str(embedded_model_dir))
