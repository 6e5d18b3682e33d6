"""Run by `torchrun --nproc_per_node N tests/dist_train_child.py SPEC.json` from
test_train_distributed.py: each job of the spec (a stage, its config, and optionally a step at
whose start rank 0 SIGKILLs itself) runs on every rank. Before the final model is saved each
rank writes a digest of its parameters to `digest_dir/rank-R.json`, so the test can check that
the ranks ended with the same weights (for PPO: the value model's, saved last). A `ppo` job
runs `run_ppo` (its kill_at is an iteration). A `ppo_statistics` job computes PPO's statistics on
each rank's share of fixed rollouts over gloo (tests/ppo_fixed_rollouts.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path


def param_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record_digests(digest_dir: Path):
    import cai.train.modeling as modeling

    save = getattr(modeling.save_hf_model, "original", modeling.save_hf_model)

    def save_and_record(accelerator, model, *args, **kwargs):
        digest_dir.mkdir(parents=True, exist_ok=True)
        (digest_dir / f"rank-{accelerator.process_index}.json").write_text(json.dumps(
            {"digest": param_digest(accelerator.unwrap_model(model))}))
        return save(accelerator, model, *args, **kwargs)

    save_and_record.original = save
    modeling.save_hf_model = save_and_record


def kill_rank0_at(step_to_die: int | None):
    def before_step(model, step):
        if step_to_die is not None and step == step_to_die and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
    return before_step


def kill_rank0_at_iteration(iteration_to_die: int | None) -> None:
    """PPO has no before_step hook: rank 0 SIGKILLs itself as iteration `iteration_to_die`'s
    rollout starts (after the previous iteration's checkpoint)."""
    import cai.train.ppo as ppo

    rollout = getattr(ppo.rollout, "original", ppo.rollout)

    def rollout_or_die(config, models, prompts, iteration):
        if iteration == iteration_to_die and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        return rollout(config, models, prompts, iteration)

    rollout_or_die.original = rollout
    ppo.rollout = rollout_or_die


def ppo_statistics_on_gloo(out: Path) -> None:
    """PPO's statistics on this rank's share of the fixed rollouts, summed over the ranks by
    the same all-reduce run_ppo uses (cai.train.ppo.sum_over_ranks)."""
    import torch
    from accelerate import Accelerator
    from ppo_fixed_rollouts import fixed_rollouts, ppo_statistics, shard

    from cai.train.accel import launched_on_cpu
    from cai.train.ppo import sum_over_ranks

    acc = Accelerator(cpu=launched_on_cpu(), mixed_precision="no")
    stats = ppo_statistics(shard(fixed_rollouts(), acc.process_index, acc.num_processes),
                           sum_over_ranks(acc))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(stats, out / f"rank-{acc.process_index}.pt")


def main(spec_path: str) -> None:
    from cai.train.ppo import PPOConfig, run_ppo
    from cai.train.rm import RMConfig, run_rm
    from cai.train.sft import SFTConfig, run_sft

    stages = {"sft": (SFTConfig, run_sft), "rm": (RMConfig, run_rm)}
    for job in json.loads(Path(spec_path).read_text()):
        if job["stage"] == "ppo_statistics":
            ppo_statistics_on_gloo(Path(job["out"]))
            continue
        record_digests(Path(job["config"]["out"]) / "digests")
        if job["stage"] == "ppo":
            kill_rank0_at_iteration(job.get("kill_at"))
            run_ppo(PPOConfig(**job["config"]))
            continue
        cls, run = stages[job["stage"]]
        run(cls(**job["config"]), before_step=kill_rank0_at(job.get("kill_at")))


if __name__ == "__main__":
    main(sys.argv[1])
