"""Data-parallel PPO's statistics: two ranks, each with its share of fixed rollouts, whiten
scores and advantages, feed the KL controller and compute losses and gradients exactly as one
process with all of them. Here the two ranks are threads with a sum over them; the gloo ranks
of tests/test_train_distributed.py run the same function through accelerate."""

from __future__ import annotations

import threading

import pytest
import torch
from ppo_fixed_rollouts import LENGTHS, fixed_rollouts, ppo_statistics, shard


class ThreadSum:
    """An all-reduce (sum) between `world` threads: each puts its tensor in, all read the sum."""

    def __init__(self, world: int):
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world)

    def for_rank(self, rank: int):
        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before all have read it
            return total
        return reduce_sum


def run_ranks(world: int) -> list[dict]:
    rollouts, comm, results = fixed_rollouts(), ThreadSum(world), [None] * world

    def rank(r):
        results[r] = ppo_statistics(shard(rollouts, r, world), comm.for_rank(r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def assert_same_as_one_process(ranks: list[dict], one: dict) -> None:
    world = len(ranks)
    for key in ("scores", "advantages"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[key], rtol=0,
                                   atol=1e-12)
    for r in ranks:
        assert r["kl"] == pytest.approx(one["kl"], abs=1e-12) and r["n"] == one["n"] == 6
    # DDP averages the ranks' losses' gradients: the average is the one-process value
    for key in ("pg_loss", "vf_loss"):
        assert sum(r[key] for r in ranks) / world == pytest.approx(one[key], abs=1e-12)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / world, one["grad"],
                               rtol=0, atol=1e-12)


def test_two_ranks_compute_what_one_process_does():
    one = ppo_statistics(fixed_rollouts())
    ranks = run_ranks(2)
    # the shares are uneven (7+2+5 tokens against 1+6+3), so per-rank statistics would differ
    assert sum(LENGTHS[:3]) != sum(LENGTHS[3:])
    local = ppo_statistics(shard(fixed_rollouts(), 0, 2))
    assert not torch.allclose(local["advantages"], one["advantages"][:3])
    assert_same_as_one_process(ranks, one)


def test_three_ranks_too():
    assert_same_as_one_process(run_ranks(3), ppo_statistics(fixed_rollouts()))


def test_whitening_by_hand():
    # scores 1, 2, 3, 4 on two ranks: mean 2.5, unbiased std sqrt(5/3)
    comm = ThreadSum(2)
    out = [None, None]

    def rank(r):
        from cai.train.losses import whiten_scores

        out[r] = whiten_scores(torch.tensor([1.0, 2.0], dtype=torch.float64) + 2 * r,
                               comm.for_rank(r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) - 2.5) / (5 / 3) ** 0.5
    torch.testing.assert_close(torch.cat(out), expected, rtol=0, atol=1e-7)


def test_rank_shares_are_contiguous_and_cover_the_items_in_order():
    from types import SimpleNamespace

    from cai.train.accel import rank_share

    def shares(n, world):
        return [rank_share(list(range(n)), SimpleNamespace(process_index=r, num_processes=world))
                for r in range(world)]

    assert shares(8, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a rollout batch of 8 on 2 ranks
    assert shares(7, 2) == [[0, 1, 2, 3], [4, 5, 6]]  # the first ranks take the extra one
    assert shares(2, 3) == [[0], [1], []]  # more ranks than held-out prompts
