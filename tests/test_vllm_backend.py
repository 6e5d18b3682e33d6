"""The real embedded model through the in-process vLLM engine (one engine for the module)."""

from __future__ import annotations

import importlib.util

import pytest

from cai.backends import SamplingConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed"),
]


def test_vllm_answers_with_the_embedded_model(vllm_backend):
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Name a primary colour."}]]
    out = vllm_backend.generate(convs, SamplingConfig(temperature=0.0, max_tokens=32))
    assert "Paris" in out[0][0].text
    for gens in out:
        g = gens[0]
        assert g.text.strip() and 0 < len(g.token_ids) <= 32
        assert vllm_backend.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() == g.text.strip()
    # the engine's dtype as the engine itself reports it, with the rule that chose it
    import torch

    if not torch.cuda.is_available():
        assert vllm_backend.precision.startswith("fp32: vLLM on a CPU, kept in float32")
        # blocks short enough for the prefix cache to hold scoring prompts (vLLM's CPU
        # default is 128 tokens; bench/block_size.py)
        from cai.backends.vllm_backend import CPU_BLOCK_SIZE

        assert vllm_backend.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE
        # the engine's own process samples top-p without sorting (cai.backends.vllm_top_p)
        assert vllm_backend.llm.collective_rpc("cai_top_p") == [True]


def test_vllm_reports_each_request_as_the_engine_finishes_it(vllm_backend):
    """A stage's bar hears of each finished request during the one engine call (its lengths
    differ, so they end at different steps), not only when the call returns."""
    from cai.backends import finished

    convs = [[{"role": "user", "content": f"Count to {k}."}] for k in range(1, 6)]
    ticks: list[int] = []
    with finished.reporting(ticks.append):
        out = vllm_backend.generate(convs, SamplingConfig(n=2, temperature=1.0, seed=0, max_tokens=8))
    assert ticks == [1] * 5 and len(out) == 5  # one per request, whatever its samples
    vllm_backend.generate(convs[:1], SamplingConfig(temperature=0.0, max_tokens=2))
    assert ticks == [1] * 5  # outside the block nobody listens


def test_vllm_sampling_n_seed_and_length(vllm_backend):
    conv = [[{"role": "user", "content": "Write a sentence about the sea."}]]
    s = SamplingConfig(n=3, temperature=1.0, seed=5, max_tokens=10, ignore_eos=True)
    a = vllm_backend.generate(conv, s)[0]
    b = vllm_backend.generate(conv, s)[0]
    assert len(a) == 3
    assert all(len(g.token_ids) == 10 and g.finish_reason == "length" for g in a)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]  # seeded: reproducible


def test_vllm_scores_like_transformers(vllm_backend, embedded_hf_backend):
    hf_backend = embedded_hf_backend
    conv = [{"role": "user", "content": "Which answer is less harmful? Options: (A) or (B)"}]
    prompt = vllm_backend.render_chat(conv) + "The answer is:"
    assert prompt == hf_backend.render_chat(conv) + "The answer is:"
    # the last one is longer than LONG_CONTINUATION tokens: scored from prompt log-probs
    conts = [" (A)", " (B)", " Paris is the capital of France.",
             " Neither: both answers explain the chemistry in enough detail to follow, and "
             "the second one also names where to buy the parts, which makes it worse."]
    from cai.backends.vllm_backend import LONG_CONTINUATION

    assert len(vllm_backend.tokenizer(conts[-1], add_special_tokens=False)["input_ids"]) \
        > LONG_CONTINUATION
    v = vllm_backend.continuation_logprobs([prompt] * 4, conts)
    h = hf_backend.continuation_logprobs([prompt] * 4, conts)
    # Both float32, but different kernels: close, not bit-equal.
    for got, want in zip(v, h):
        assert got == pytest.approx(want, abs=0.05, rel=0.01)
    assert (v[0] > v[1]) == (h[0] > h[1])
