"""SFT and the reward model under two processes (torchrun, gloo, on the CPU) against one
process on the same global batch: the same loss at every step, the same weights on both
ranks, files written once, and SIGKILL + --resume on two ranks continuing where the
uninterrupted run went. PPO on two ranks: the synthetic reward rises, files are written once,
and SIGKILL + --resume continues the uninterrupted run. One torchrun per phase (each phase
ends with a killed run), so the children start three times."""

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

from cai.train.ppo_config import PPOConfig
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


def ppo_config(policy: Path, where: Path, out: str) -> dict:
    """tests/test_ppo.py's reward-rises run (a policy that says "!" now and then, rewarded
    for it), with each rank taking half of every minibatch, at lr 3e-4: at 1e-3 the reward
    swings between ~0 and ~0.9 from iteration to iteration, in one process as on two."""
    from test_ppo import REWARD, TOPICS

    prompts = where / "ppo-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {t}."}) + "\n"
                               for t in TOPICS))
    return PPOConfig(
        model=str(policy), reward=REWARD, prompts=str(prompts), out=str(where / out),
        iterations=8, rollout_batch_size=8, minibatch_size=8, micro_batch_size=4, ppo_epochs=2,
        max_tokens=12, temperature=1.0, lr=3e-4, eval_size=4, eval_every=4, eval_samples=2,
        eval_temperature=1.0, missing_eos_penalty=None, adaptive_kl=True, kl_target=2.0,
        kl_horizon=40, kl_coef=0.1, backend="transformers", cpu=True, progress=False,
        mixed_precision="no", attn_implementation="eager").model_dump(mode="json")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory, embedded_tokenizer):
    """Single-process references here; two-rank runs (complete, and killed at step 3) in one
    torchrun; then the killed run resumed, and a PPO run killed at iteration 3, in a second;
    the PPO run resumed in a third."""
    from test_ppo import _exclaiming_policy

    where = tmp_path_factory.mktemp("dist")
    ppo = ppo_config(_exclaiming_policy(tmp_path_factory, embedded_tokenizer), where, "ppo-2")
    sft_data = write_sft_parquet(where / "sft-data", conversations(40))
    rm_data = write_marker_pairs(where / "pairs.jsonl", 32)
    base = dict(COMMON, model=str(tiny_model_dir))
    sft = dict(base, data=[str(sft_data)], eval_fraction=0.2)  # 8 held out, 32 to train on
    # 7 held-out pairs: the ranks score 4 and 3
    rm_eval = write_marker_pairs(where / "pairs-eval.jsonl", 7, seed=1)
    rm_eval.write_text(rm_eval.read_text().replace("Tell me something", "Held out"))
    rm = dict(base, data=[str(rm_data)], eval_data=str(rm_eval))
    one = {"sft": run_sft(SFTConfig(**sft, out=str(where / "sft-1"), batch_size=GLOBAL_BATCH)),
           "rm": run_rm(RMConfig(**rm, out=str(where / "rm-1"), batch_size=GLOBAL_BATCH))}
    half = GLOBAL_BATCH // 2
    jobs = [{"stage": "ppo_statistics", "out": str(where / "ppo-stats")},
            {"stage": "sft", "config": dict(sft, out=str(where / "sft-2"), batch_size=half)},
            {"stage": "rm", "config": dict(rm, out=str(where / "rm-2"), batch_size=half)},
            {"stage": "ppo", "config": ppo},
            {"stage": "sft", "kill_at": 3,
             "config": dict(sft, out=str(where / "sft-cut"), batch_size=half)}]
    first = torchrun(jobs, where)
    # 4 iterations, killed as the third begins: with a constant lr nothing else depends on
    # `iterations`, so its iterations 3 and 4 are the 8-iteration run's
    ppo_cut = dict(ppo, out=str(where / "ppo-cut"), iterations=4)
    resumed = torchrun([{"stage": "sft", "config": dict(jobs[-1]["config"], resume=True)},
                        {"stage": "ppo", "kill_at": 3, "config": ppo_cut}], where)
    ppo_resumed = torchrun([{"stage": "ppo", "config": dict(ppo_cut, resume=True)}], where)
    return {"where": where, "one": one, "first": first, "resumed": resumed,
            "ppo_resumed": ppo_resumed}


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
    # the RM's held-out pairs and its reward statistics, scored 4 + 3 and gathered
    one_rm, two_rm = runs["one"]["rm"], json.loads((where / "rm-2" / "DONE").read_text())
    assert two_rm["eval_pairs"] == 7 and two_rm["eval"]["n"] == one_rm["eval"]["n"]
    for key in ("accuracy", "margin"):
        assert two_rm["eval"][key] == pytest.approx(one_rm["eval"][key], abs=1e-5), key
    assert two_rm["reward_stats"]["n"] == 64
    assert two_rm["reward_stats"]["mean"] == pytest.approx(one_rm["reward_stats"]["mean"],
                                                           abs=1e-5)
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
    # the same torchrun then starts the PPO run that rank 0 kills: its code is not 0
    assert (where / "sft-cut" / "DONE").is_file(), resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    full, cut = losses(where / "sft-2"), losses(where / "sft-cut")
    assert sorted(cut) == [1, 2, 3, 4]
    for step in (3, 4):  # the steps after the checkpoint at step 2
        assert cut[step] == pytest.approx(full[step], abs=1e-6), step


def ppo_rows(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_on_two_ranks_raises_the_reward_and_writes_once(runs):
    where, first = runs["where"], runs["first"]
    out = where / "ppo-2"
    assert (out / "DONE").is_file(), first.stderr[-3000:]
    rows = ppo_rows(out)
    train = [r for r in rows if "reward/raw" in r]
    # one line per iteration and per evaluation (0, 4, 8): rank 0 alone appends
    assert [r["iteration"] for r in train] == list(range(1, 9))
    assert [r["iteration"] for r in rows if "eval/reward" in r] == [0, 4, 8]
    rewards = [r["reward/raw"] for r in train]
    print("2-rank PPO rewards", [round(x, 3) for x in rewards])
    # measured: 0.19 at iteration 1 (the starting policy's), 0.77 and 0.79 at 7 and 8
    assert sum(rewards[-2:]) / 2 > 2 * rewards[0], rewards
    # the held-out prompts, split 2 + 2 over the ranks, gathered in prompt order: 3
    # evaluations x 4 prompts x 2 samples, each row once
    samples = [json.loads(l) for l in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24
    prompts = [s["prompt"] for s in samples if s["iteration"] == 0]
    assert prompts[::2] == prompts[1::2] and len(set(prompts)) == 4
    assert [s["sample"] for s in samples[:8]] == [0, 1] * 4
    evals = [r for r in rows if "eval/reward" in r]
    assert evals[-1]["eval/reward"] > evals[0]["eval/reward"] + 0.2  # measured 0.31 -> 0.91
    assert evals[0]["eval/reward"] == pytest.approx(
        sum(s["reward"] for s in samples[:8]) / 8, abs=1e-6)
    assert "eval/reward_gain" in evals[-1]  # paired with iteration 0's, saved by rank 0
    # the two ranks ended with the same value model, saved once with the policy
    digests = {json.loads((out / "digests" / f"rank-{r}.json").read_text())["digest"]
               for r in (0, 1)}
    assert len(digests) == 1
    assert (out / "policy" / "model.safetensors").is_file()
    assert json.loads((out / "DONE").read_text())["iterations"] == 8


def test_ppo_sigkill_and_resume_on_two_ranks_continue_the_uninterrupted_run(runs):
    where, resumed, again = runs["where"], runs["resumed"], runs["ppo_resumed"]
    assert resumed.returncode != 0  # rank 0 died as iteration 3 began
    assert again.returncode == 0, again.stderr[-3000:]
    assert "eval/reward_gain" in ppo_rows(where / "ppo-cut")[-1]  # iteration 0's, kept
    full = {r["iteration"]: r for r in ppo_rows(where / "ppo-2") if "reward/raw" in r}
    cut = {r["iteration"]: r for r in ppo_rows(where / "ppo-cut") if "reward/raw" in r}
    assert sorted(cut) == [1, 2, 3, 4]
    for it in (3, 4):  # the iterations after the checkpoint at 2 (4 with its evaluation)
        for key, value in full[it].items():
            if not key.startswith("time/"):
                assert cut[it][key] == pytest.approx(value, abs=1e-6), (it, key)
