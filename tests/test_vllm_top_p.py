"""Top-p without the sort (cai.backends.vllm_top_p) against vLLM's own sort-based function."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from cai.backends import vllm_top_p
from cai.backends.vllm_top_p import FIRST_K, apply_top_p, top_p_mask

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")


def vllm_cut(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    return apply_top_k_top_p_pytorch(logits.clone(), None, p, allow_cpu_sync=True) == -math.inf


def test_hand_computed_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    # ascending sums 0.05, 0.2, 0.5, 1.0: vLLM cuts a token whose sum is <= 1 - p
    assert top_p_mask(logits, torch.tensor([0.75])).tolist() == [[True, False, True, False]]
    assert top_p_mask(logits, torch.tensor([0.9])).tolist() == [[True, False, False, False]]
    assert top_p_mask(logits, torch.tensor([0.1])).tolist() == [[True, False, True, True]]
    assert top_p_mask(logits, torch.tensor([1.0])).tolist() == [[False] * 4]


def lm_like_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Peaked rows (a language model's next token) and a few flat ones, with -inf entries
    (tokens a logits processor has banned) and a tie."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2
    logits[:, :8] += torch.rand(rows, 8, generator=g) * 12  # a handful of likely tokens
    logits[::7] = torch.randn(rows // 7 + (rows % 7 > 0), vocab, generator=g) * 0.3  # flat
    logits[:, 100:110] = -math.inf
    logits[3, 9] = logits[3, 8]
    return logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuts_what_vllms_sort_cuts(seed):
    logits = lm_like_logits(48, 4096, seed)
    p = torch.tensor([0.9, 0.5, 0.99, 1.0] * 12)
    ours, theirs = top_p_mask(logits, p), vllm_cut(logits, p)
    differ = (ours != theirs).nonzero().tolist()
    # the two add the same probabilities in different orders: they may differ only for a
    # token whose ascending sum is within float32 rounding of 1 - p
    for row, token in differ:
        s, order = logits[row].sort()
        ascending = s.softmax(-1).cumsum(-1)
        at = (order == token).nonzero().item()
        assert abs(ascending[at].item() - (1 - p[row].item())) < 4e-7, (row, token)
    assert len(differ) <= 2
    assert not (ours & ~torch.isinf(logits))[p == 1.0].any()  # top_p 1 cuts only the banned


def test_flat_rows_grow_past_the_first_k():
    logits = torch.randn(4, 8 * FIRST_K, generator=torch.Generator().manual_seed(3)) * 0.1
    p = torch.full((4,), 0.9)
    ours = top_p_mask(logits, p)
    assert (~ours).sum(dim=-1).min() > FIRST_K  # the nucleus is wider than the first topk
    assert torch.equal(ours, vllm_cut(logits, p))


def test_top_k_and_non_cpu_go_to_vllms_function():
    calls = []

    def fallback(logits, k, p):
        calls.append((k, p))
        return logits

    logits = torch.randn(2, 50)
    apply_top_p(logits, torch.tensor([5, 5]), torch.tensor([0.9, 0.9]), fallback)
    apply_top_p(logits, None, None, fallback)
    assert len(calls) == 2
    out = apply_top_p(logits.clone(), None, torch.tensor([0.5, 0.5]), fallback)
    assert len(calls) == 2 and torch.isinf(out).any()


def test_install_routes_vllms_cpu_sampler_through_it(monkeypatch):
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    current = sampler.apply_top_k_top_p  # already ours if an in-process engine started
    original = getattr(current, "original", current)
    monkeypatch.setattr(sampler, "apply_top_k_top_p", original)  # restored after the test
    assert vllm_top_p.install() and vllm_top_p.install()  # idempotent
    patched = sampler.apply_top_k_top_p
    assert patched is not original and patched.cai_top_p and patched.original is original
    logits = lm_like_logits(8, 512, 4)
    p = torch.full((8,), 0.8)
    assert torch.equal(patched(logits.clone(), None, p) == -math.inf, top_p_mask(logits, p))
