"""The transformers backend on a tiny random Llama: batching, padding, sampling, scoring."""

from __future__ import annotations

import pytest
import torch

from cai.backends import SamplingConfig

CONVS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "A much longer question about the history of the printing press"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me a joke"}],
]


def test_generate_shapes_n_and_max_tokens(tiny_backend):
    out = tiny_backend.generate(CONVS, SamplingConfig(n=2, temperature=1.0, max_tokens=7, seed=1))
    assert len(out) == 3 and all(len(g) == 2 for g in out)
    for gens in out:
        for g in gens:
            assert len(g.token_ids) <= 7
            assert g.finish_reason in ("stop", "length")
            if g.finish_reason == "length":
                assert len(g.token_ids) == 7
            assert g.text == tiny_backend.tokenizer.decode(g.token_ids, skip_special_tokens=True)


def test_left_padding_does_not_change_greedy_output(tiny_backend):
    greedy = SamplingConfig(temperature=0.0, max_tokens=8, ignore_eos=True)
    batched = tiny_backend.generate(CONVS, greedy)
    for conv, gens in zip(CONVS, batched):
        alone = tiny_backend.generate([conv], greedy)[0][0]
        assert alone.token_ids == gens[0].token_ids


def test_seeded_sampling_is_reproducible(tiny_backend):
    s = SamplingConfig(temperature=1.0, max_tokens=6, seed=123, ignore_eos=True)
    a = tiny_backend.generate(CONVS, s)
    b = tiny_backend.generate(CONVS, s)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    c = tiny_backend.generate(CONVS, s.model_copy(update={"seed": 124}))
    assert [g[0].token_ids for g in a] != [g[0].token_ids for g in c]


def test_ignore_eos_generates_exactly_max_tokens(tiny_backend):
    out = tiny_backend.generate(CONVS, SamplingConfig(temperature=0.0, max_tokens=5, ignore_eos=True))
    assert all(len(g[0].token_ids) == 5 and g[0].finish_reason == "length" for g in out)


def test_stop_string_truncates_and_reports_stop(tiny_backend):
    sampling = SamplingConfig(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    free = tiny_backend.generate([CONVS[0]], sampling)[0][0]
    assert free.finish_reason == "length"
    words = [w for w in free.text.split() if len(w) >= 3 and free.text.count(w) == 1]
    stop = words[len(words) // 2]  # a string the seeded continuation is known to contain once
    cut = tiny_backend.generate([CONVS[0]], sampling.model_copy(update={"stop": [stop]}))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]


def test_continuation_logprobs_match_direct_log_softmax(tiny_backend):
    tok, lm = tiny_backend.tokenizer, tiny_backend.lm
    prompt = tiny_backend.render_chat([{"role": "user", "content": "Which is better?"}]) + "The answer is:"
    # the last prompt has only one-token continuations: scored from one pass over the prompt
    asks = [(prompt, " (A)"), (prompt, " (B)"), ("short", " text here"), (prompt + "\n", "Yes"),
            ("short", " Yes"), (prompt + "\n", " No")]
    scores = tiny_backend.continuation_logprobs([p for p, _ in asks], [c for _, c in asks])
    for (p, c), got in zip(asks, scores):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = lm(torch.tensor([p_ids + c_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        want = sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids))
        assert got == pytest.approx(want, abs=1e-4)


def test_an_empty_continuation_scores_zero(tiny_backend):
    """An empty answer (a tiny model's, or one cut at zero tokens) is log P = 0, not an
    IndexError from indexing with an empty float tensor."""
    scores = tiny_backend.continuation_logprobs(["short", "short"], ["", " text"])
    assert scores[0] == 0.0 and scores[1] < 0.0


def test_render_chat_uses_tokenizer_template(tiny_backend):
    text = tiny_backend.render_chat(CONVS[2])
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nTell me a joke<|im_end|>" in text
