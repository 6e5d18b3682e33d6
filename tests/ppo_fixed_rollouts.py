"""Fixed PPO rollouts and the statistics a PPO iteration computes from them, for one process
or for one rank's share with `reduce_sum` (tests/test_ppo_distributed.py, and the gloo ranks
of tests/dist_train_child.py)."""

from __future__ import annotations

import torch

from cai.train import losses as L

ROWS, T = 6, 7
LENGTHS = [7, 2, 5, 1, 6, 3]  # uneven: the ranks' shares hold different numbers of tokens


def fixed_rollouts() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    return {"mask": mask,
            "logp": -torch.rand(ROWS, T, generator=g, dtype=torch.float64) * 3,
            "ref_logp": -torch.rand(ROWS, T, generator=g, dtype=torch.float64) * 3,
            "values": torch.randn(ROWS, T, generator=g, dtype=torch.float64),
            "scores": torch.randn(ROWS, generator=g, dtype=torch.float64) * 2 + 1,
            "new_logp": -torch.rand(ROWS, T, generator=g, dtype=torch.float64) * 3,
            "new_values": torch.randn(ROWS, T, generator=g, dtype=torch.float64)}


def shard(rollouts: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s contiguous share of the rows (as a distributed sampler deals them)."""
    per = ROWS // world
    return {k: v[rank * per:(rank + 1) * per].clone() for k, v in rollouts.items()}


def ppo_statistics(r: dict[str, torch.Tensor], reduce_sum=None, beta: float = 0.1) -> dict:
    """Whitened scores and advantages, the KL fed to the adaptive controller, the losses and
    the gradient of the policy loss with respect to the new log-probs."""
    from cai.train.ppo import global_kl_and_count

    mask = r["mask"]
    scores = L.whiten_scores(r["scores"], reduce_sum)
    kl = L.kl_estimate(r["logp"], r["ref_logp"], "k1") * mask
    rewards = L.shape_rewards(scores, kl, mask, beta)
    adv, returns = L.gae(rewards, r["values"], mask, 1.0, 0.95)
    adv = L.masked_whiten(adv, mask, reduce_sum=reduce_sum) * mask

    class Exp:  # what global_kl_and_count reads
        pass

    exp = Exp()
    exp.kl, exp.messages = kl, [None] * mask.shape[0]
    kl_mean, n = global_kl_and_count(exp, reduce_sum)
    new_logp = r["new_logp"].clone().requires_grad_(True)
    pg, _, _ = L.policy_loss(new_logp, r["logp"], adv, mask, 0.2, reduce_sum=reduce_sum)
    vf, _ = L.value_loss(r["new_values"], r["values"], returns, mask, 0.2, reduce_sum=reduce_sum)
    pg.backward()
    return {"scores": scores, "advantages": adv, "kl": kl_mean, "n": n, "pg_loss": pg.item(),
            "vf_loss": vf.item(), "grad": new_logp.grad}
