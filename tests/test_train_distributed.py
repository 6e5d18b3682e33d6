"""SFT and the reward model under two processes (torchrun, gloo, on the CPU) against one
process on the same global batch: the same loss at every step, the same weights on both
ranks, files written once, and SIGKILL + --resume on two ranks continuing where the
uninterrupted run went. One torchrun per phase, so the children start only twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import child_env
from test_train_rm import write_marker_pairs
from test_train_sft import conversations, write_sft_parquet

from cai.train.rm import RMConfig, run_rm
from cai.train.sft import SFTConfig, run_sft

CHILD = Path(__file__).with_name("dist_train_child.py")
GLOBAL_BATCH = 8
# fp32 and eager attention, named: the comparison is to 1e-5
COMMON = dict(lr=1e-3, epochs=1, log_every=1, save_every=2, eval_fraction=0.0, max_length=64,
              progress=False, mixed_precision="no", attn_implementation="eager", seed=3)


def torchrun(spec: list[dict], where: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path = where / f"spec-{len(list(where.glob('spec-*')))}.json"
    path.write_text(json.dumps(spec))
    torchrun_bin = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return subprocess.run([torchrun_bin, "--standalone", f"--nproc_per_node={nproc}", str(CHILD),
                           str(path)], env=child_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=600)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Single-process references here; two-rank runs (complete, and killed at step 3) in one
    torchrun; then the killed run resumed in a second."""
    where = tmp_path_factory.mktemp("dist")
    sft_data = write_sft_parquet(where / "sft-data", conversations(40))
    rm_data = write_marker_pairs(where / "pairs.jsonl", 32)
    base = dict(COMMON, model=str(tiny_model_dir))
    sft = dict(base, data=[str(sft_data)], eval_fraction=0.2)  # 8 held out, 32 to train on
    rm = dict(base, data=[str(rm_data)])
    one = {"sft": run_sft(SFTConfig(**sft, out=str(where / "sft-1"), batch_size=GLOBAL_BATCH)),
           "rm": run_rm(RMConfig(**rm, out=str(where / "rm-1"), batch_size=GLOBAL_BATCH))}
    half = GLOBAL_BATCH // 2
    jobs = [{"stage": "ppo_statistics", "out": str(where / "ppo-stats")},
            {"stage": "sft", "config": dict(sft, out=str(where / "sft-2"), batch_size=half)},
            {"stage": "rm", "config": dict(rm, out=str(where / "rm-2"), batch_size=half)},
            {"stage": "sft", "kill_at": 3,
             "config": dict(sft, out=str(where / "sft-cut"), batch_size=half)}]
    first = torchrun(jobs, where)
    resumed = torchrun([{"stage": "sft", "config": dict(jobs[-1]["config"], resume=True)}], where)
    return {"where": where, "one": one, "first": first, "resumed": resumed}


def test_two_ranks_follow_one_process_step_by_step(runs):
    where, first = runs["where"], runs["first"]
    assert (where / "sft-2" / "DONE").is_file() and (where / "rm-2" / "DONE").is_file(), \
        first.stderr[-3000:]
    for stage in ("sft", "rm"):
        one, two = losses(where / f"{stage}-1"), losses(where / f"{stage}-2")
        assert sorted(one) == sorted(two) == [1, 2, 3, 4]  # 32 samples / global batch 8
        assert max(abs(one[s] - two[s]) for s in one) <= 1e-5, (stage, one, two)
        done = json.loads((where / f"{stage}-2" / "DONE").read_text())
        assert done["steps"] == 4
        # ranks end with identical weights, and the saved model is rank 0's
        digests = {json.loads((where / f"{stage}-2" / "digests" / f"rank-{r}.json").read_text())
                   ["digest"] for r in (0, 1)}
        assert len(digests) == 1
    # the held-out loss: each rank scored half of the 8 conversations, the sums all-reduced
    one_eval, two_eval = runs["one"]["sft"]["eval"], json.loads(
        (where / "sft-2" / "DONE").read_text())["eval"]
    assert one_eval["tokens"] == two_eval["tokens"] > 0
    assert two_eval["loss"] == pytest.approx(one_eval["loss"], abs=1e-5)
    # rank 0 alone logs: each line once
    assert first.stderr.count("sft: 32 conversations, 8 held out") == 2  # the two sft jobs


def test_ppo_statistics_on_two_gloo_ranks_equal_one_process(runs):
    import torch
    from ppo_fixed_rollouts import fixed_rollouts, ppo_statistics
    from test_ppo_distributed import assert_same_as_one_process

    ranks = [torch.load(runs["where"] / "ppo-stats" / f"rank-{r}.pt") for r in (0, 1)]
    assert_same_as_one_process(ranks, ppo_statistics(fixed_rollouts()))


def test_sigkill_and_resume_on_two_ranks_continue_the_uninterrupted_run(runs):
    where, first, resumed = runs["where"], runs["first"], runs["resumed"]
    assert first.returncode != 0  # rank 0 died at the start of step 3
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    full, cut = losses(where / "sft-2"), losses(where / "sft-cut")
    assert sorted(cut) == [1, 2, 3, 4]
    for step in (3, 4):  # the steps after the checkpoint at step 2
        assert cut[step] == pytest.approx(full[step], abs=1e-6), step
