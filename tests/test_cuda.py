"""Training on a CUDA GPU. CI has none, so these skip there; a machine with one runs them with
`pytest tests/test_cuda.py` (with the other training tests, which pick the GPU by themselves).
They check what CPU runs cannot: the tensor maths gives the CPU's numbers on the GPU, each
stage really trains on the GPU in the precision `auto` picks there, an fp32 reward model
trained on the GPU ends where the same run on the CPU ends, and PPO with LoRA runs its
rollout -> score -> update loop on the GPU (transformers rollouts where vLLM is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).parent))
from child_env import child_env  # noqa: E402
from test_ppo import REWARD, exclaiming_policy_dir, prompts_file  # noqa: E402,F401 (fixtures)
from test_train_rm import rm_config, write_marker_pairs  # noqa: E402
from test_train_sft import conversations, write_sft_parquet  # noqa: E402


def test_losses_give_the_cpu_numbers_on_the_gpu():
    from cai.train import losses as L

    g = torch.Generator().manual_seed(0)
    b, t = 4, 7
    cpu = {
        "logprobs": -torch.rand(b, t, generator=g) * 3, "old": -torch.rand(b, t, generator=g) * 3,
        "ref": -torch.rand(b, t, generator=g) * 3, "values": torch.randn(b, t, generator=g),
        "old_values": torch.randn(b, t, generator=g), "scores": torch.randn(b, generator=g),
        "logits": torch.randn(b, t, 11, generator=g),
        "mask": (torch.arange(t)[None, :] < torch.tensor([7, 5, 3, 1])[:, None]).float(),
    }

    def run(x):
        kl = L.kl_estimate(x["logprobs"], x["ref"], "k3")
        rewards = L.shape_rewards(x["scores"], L.kl_estimate(x["logprobs"], x["ref"], "k1"), x["mask"], 0.1)
        adv, ret = L.gae(rewards, x["values"], x["mask"], gamma=1.0, lam=0.95)
        adv = L.masked_whiten(adv, x["mask"])
        pl, clip_frac, approx_kl = L.policy_loss(x["logprobs"], x["old"], adv, x["mask"])
        vl, vclip = L.value_loss(x["values"], x["old_values"], ret, x["mask"])
        bt = L.bradley_terry_loss(x["scores"], x["values"][:, 0], torch.full((b,), 0.8, device=x["scores"].device))
        return [kl, rewards, adv, ret, pl, clip_frac, approx_kl, vl, vclip, bt,
                L.entropy_from_logits(x["logits"]), L.explained_variance(x["values"], ret, x["mask"])]

    on_cpu = run(cpu)
    on_gpu = run({k: v.cuda() for k, v in cpu.items()})
    for i, (a, c) in enumerate(zip(on_cpu, on_gpu)):
        assert c.device.type == "cuda"
        torch.testing.assert_close(c.cpu(), a, rtol=1e-5, atol=1e-6, msg=f"output {i}")


def test_sft_trains_on_the_gpu_in_bf16_with_lora(tiny_model_dir, tmp_path):
    from cai.train.sft import SFTConfig, run_sft

    data = write_sft_parquet(tmp_path / "sft", conversations(24))
    out = tmp_path / "model"
    summary = run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(data)], out=str(out), lr=1e-3,
                                batch_size=8, epochs=3, eval_fraction=0.2, lora_r=4, log_every=1,
                                progress=False, save_every=None))
    assert summary["device"].startswith("cuda")
    assert summary["mixed_precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if "loss" in r]
    assert train_losses[-1] < train_losses[0]
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)  # merged, fp32 weights on disk
    assert next(saved.parameters()).dtype == torch.float32


_CPU_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[3])
from test_train_rm import rm_config
from cai.train.rm import run_rm
print(json.dumps(run_rm(rm_config(sys.argv[1], sys.argv[2], sys.argv[4], epochs=2, eval_fraction=0.25,
                                  max_length=48))["eval"]))
"""


def test_fp32_reward_model_on_the_gpu_ends_where_the_cpu_run_ends(tiny_model_dir, tmp_path):
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 80)
    from cai.train.rm import run_rm

    gpu = run_rm(rm_config(tiny_model_dir, data, tmp_path / "gpu", epochs=2, eval_fraction=0.25,
                           max_length=48))
    assert gpu["device"].startswith("cuda") and gpu["mixed_precision"] == "no"
    # accelerate keeps one device per process: the CPU run is a child told to use the CPU
    env = child_env(ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _CPU_CHILD, str(tiny_model_dir), str(data),
                           str(Path(__file__).parent), str(tmp_path / "cpu")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    # the same data order, initialisation and steps; only the kernels' rounding differs
    assert gpu["eval"]["accuracy"] == cpu["accuracy"]
    assert gpu["eval"]["margin"] == pytest.approx(cpu["margin"], rel=1e-3, abs=1e-4)


def test_ppo_with_lora_runs_on_the_gpu_and_resumes_the_same_curve(tmp_path, exclaiming_policy_dir,
                                                                    prompts_file):
    """Four iterations on the GPU; then the same run resumed from its iteration-2 checkpoint
    (optimiser, scheduler, β, CPU and CUDA RNG restored) gives iterations 3 and 4 again."""
    import shutil

    from cai.train.ppo import PPOConfig, run_ppo

    full = tmp_path / "full"
    cfg = PPOConfig(model=str(exclaiming_policy_dir), reward=REWARD, prompts=str(prompts_file),
                    out=str(full), progress=False,
                    iterations=4, rollout_batch_size=8, minibatch_size=8, micro_batch_size=4,
                    ppo_epochs=2, max_tokens=12, temperature=1.0, lr=3e-3,
                    eval_size=4, eval_every=2, eval_temperature=1.0, missing_eos_penalty=None,
                    lora_r=16, adaptive_kl=True, kl_target=2.0, kl_horizon=40, keep_checkpoints=4)
    summary = run_ppo(cfg)
    assert summary["device"].startswith("cuda")
    assert summary["rollout_backend"] in ("transformers", "vllm")
    rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    train = {r["iteration"]: r for r in rows if "reward/raw" in r}
    assert sorted(train) == [1, 2, 3, 4]
    assert train[1]["kl"] == 0.0  # policy and reference scored alike before any update
    assert train[4]["kl"] != 0.0
    for r in train.values():
        assert all(v == v for v in r.values() if isinstance(v, float)), r  # no NaN
    assert any("eval/reward" in r for r in rows)

    # a copy cut back to its iteration-2 checkpoint, as a run killed during iteration 3 leaves it
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("iter-000003", "iter-000004"):
        shutil.rmtree(cut / "checkpoints" / name)
    (cut / "summary.json").unlink()
    (cut / "DONE").unlink()
    run_ppo(cfg.model_copy(update={"out": str(cut), "resume": True}))
    again = {r["iteration"]: r for r in (json.loads(l) for l in (cut / "metrics.jsonl").read_text().splitlines())
             if "reward/raw" in r}
    assert sorted(again) == [1, 2, 3, 4]
    for it in (3, 4):
        for key, value in train[it].items():
            if not key.startswith("time/"):
                assert again[it][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (it, key)


def _torchrun_sft(tmp_path, tiny_model_dir, strategy: str) -> Path:
    """SFT with `strategy` in one torchrun process on the GPU (FSDP2 and DeepSpeed need a
    process group even on one GPU); returns the output directory."""
    data = write_sft_parquet(tmp_path / "sft", conversations(32))
    out = tmp_path / strategy
    config = dict(model=str(tiny_model_dir), data=[str(data)], out=str(out), lr=1e-3,
                  batch_size=8, epochs=2, log_every=1, save_every=4, eval_fraction=0.0,
                  progress=False, mixed_precision="bf16", strategy=strategy)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"stage": "sft", "config": config}]))
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=1",
                           str(Path(__file__).with_name("dist_train_child.py")), str(spec)],
                          env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _assert_trained_and_loads(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert (out / "DONE").is_file()
    AutoModelForCausalLM.from_pretrained(out)  # the gathered HF directory is whole


def test_fsdp2_sft_on_one_gpu(tiny_model_dir, tmp_path):
    _assert_trained_and_loads(_torchrun_sft(tmp_path, tiny_model_dir, "fsdp2"))


def test_deepspeed_zero2_sft_on_one_gpu(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    _assert_trained_and_loads(_torchrun_sft(tmp_path, tiny_model_dir, "deepspeed_zero2"))


def test_ddp_sft_on_one_ray_train_gpu_worker(tiny_model_dir, tmp_path):
    pytest.importorskip("ray.train")
    import ray

    from cai.train.sft import SFTConfig, run_sft

    data = write_sft_parquet(tmp_path / "sft", conversations(16))
    try:
        summary = run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(data)],
                                    out=str(tmp_path / "ray"), lr=1e-3, batch_size=8,
                                    log_every=1, save_every=None, eval_fraction=0.0,
                                    progress=False, workers=1, gpus_per_worker=1))
    finally:
        ray.shutdown()
    assert summary["device"].startswith("cuda") and summary["steps"] == 2
    assert len(summary["workers"]) == 1
