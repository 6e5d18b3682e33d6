"""`cai train sft` and `cai train rm`: flags -> SFTConfig / RMConfig (over a pipeline YAML's
`sft:` / `rm:` section with --config) -> run_sft / run_rm -> summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cai.cli.common import fail

app = typer.Typer(no_args_is_help=True)


def _shared(model, out, max_length, lr, epochs, max_steps, batch_size, grad_accum, warmup_steps,
            warmup_ratio, scheduler, max_grad_norm, gradient_checkpointing, lora_r, lora_alpha,
            lora_dropout, merge_lora, seed, eval_data, eval_fraction, eval_every, save_every,
            log_every, resume, progress) -> dict:
    return dict(model=model, out=None if out is None else str(out), max_length=max_length, lr=lr,
                epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, scheduler=scheduler,
                max_grad_norm=max_grad_norm, gradient_checkpointing=gradient_checkpointing,
                lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                merge_lora=merge_lora, seed=seed, eval_data=eval_data, eval_fraction=eval_fraction,
                eval_every=eval_every, save_every=save_every, log_every=log_every,
                resume=resume or None, progress=progress)


# Flags shared by both stages; None means "not given" (the YAML or the config default wins).
O = typer.Option
MODEL = O(None, "--model", "-m", help="registry name, HF directory or hub id (default: embedded)")
OUT = O(None, "--out", "-o", help="output directory (model, metrics.jsonl, tensorboard/, checkpoints/)")
CONFIG = O(None, "--config", help="pipeline YAML; its `sft:` / `rm:` section, flags on top")
MIXED = O(None, "--mixed-precision", help="auto | no | bf16 | fp16; auto: bf16 autocast on a CUDA "
                                          "GPU with bf16 or a CPU with AMX, else fp32")


def _run(stage: str, cls, run, config_path, overrides) -> None:
    from cai.config import ConfigError, load_section
    from cai.io import DataError
    from cai.models import ModelError
    from cai.train.metrics import NonFiniteLossError

    try:
        config = load_section(config_path, stage, cls, overrides, marker_key="data")
        summary = run(config, echo=typer.echo)
    except (ConfigError, DataError, ModelError) as e:
        fail(str(e))
    except NonFiniteLossError as e:
        fail(str(e))
    if summary.get("skipped"):
        return
    ev = summary.get("eval") or {}
    typer.echo(f"{summary['steps']} steps in {summary['train_seconds']:.1f} s "
               f"({summary['tokens_per_second']:,.0f} tokens/s); model -> {summary['out']}")
    if ev:
        typer.echo("eval: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                          for k, v in ev.items()}))




@app.command("sft")
def sft_cmd(
    data: List[str] = O(None, "--data", "-d", help="sft/ dir of `cai generate`, or JSONL/Parquet "
                                                   "with a `messages` column (repeatable)"),
    model: Optional[str] = MODEL, out: Optional[Path] = OUT, config: Optional[Path] = CONFIG,
    messages_field: Optional[str] = O(None, help="column holding the conversation"),
    max_length: Optional[int] = O(None, help="tokens per conversation (default 512)"),
    overlong: Optional[str] = O(None, help="truncate (cut the end) | drop"),
    lr: Optional[float] = O(None, help="learning rate (default 2e-5)"),
    epochs: Optional[int] = O(None), max_steps: Optional[int] = O(None),
    batch_size: Optional[int] = O(None), grad_accum: Optional[int] = O(None),
    warmup_steps: Optional[int] = O(None), warmup_ratio: Optional[float] = O(None),
    scheduler: Optional[str] = O(None, help="linear | cosine | constant | constant_with_warmup"),
    max_grad_norm: Optional[float] = O(None),
    gradient_checkpointing: Optional[bool] = O(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    lora_r: Optional[int] = O(None, help="LoRA rank (off when unset)"),
    lora_alpha: Optional[int] = O(None), lora_dropout: Optional[float] = O(None),
    merge_lora: Optional[bool] = O(None, "--merge-lora/--no-merge-lora"),
    seed: Optional[int] = O(None),
    eval_data: Optional[str] = O(None, help="held-out conversations"),
    eval_fraction: Optional[float] = O(None, help="share of prompts held out (default 0)"),
    eval_every: Optional[int] = O(None), save_every: Optional[int] = O(None),
    log_every: Optional[int] = O(None),
    resume: bool = O(False, "--resume", help="continue from the last checkpoint in -o"),
    progress: Optional[bool] = O(None, "--progress/--no-progress"),
    mixed_precision: Optional[str] = MIXED,
) -> None:
    """Supervised fine-tuning on conversations (SL-CAI): loss on assistant tokens only, with
    the model's own chat template. -o becomes a HF model directory (cai chat, vLLM)."""
    from cai.train.sft import SFTConfig, run_sft

    overrides = _shared(model, out, max_length, lr, epochs, max_steps, batch_size, grad_accum,
                        warmup_steps, warmup_ratio, scheduler, max_grad_norm,
                        gradient_checkpointing, lora_r, lora_alpha, lora_dropout, merge_lora, seed,
                        eval_data, eval_fraction, eval_every, save_every, log_every, resume,
                        progress)
    overrides.update(data=data or None, messages_field=messages_field, overlong=overlong,
                     mixed_precision=mixed_precision)
    _run("sft", SFTConfig, run_sft, config, overrides)


@app.command("rm")
def rm_cmd(
    data: List[str] = O(None, "--data", "-d", help="SRC or SRC:WEIGHT: a preference store or any "
                                                   "file `cai label --pairs` reads (repeatable)"),
    model: Optional[str] = MODEL, out: Optional[Path] = OUT, config: Optional[Path] = CONFIG,
    max_length: Optional[int] = O(None, help="tokens per prompt+response (default 512)"),
    overlong: Optional[str] = O(None, help="truncate (keep the end) | drop"),
    margin: Optional[float] = O(None, help="Bradley-Terry margin"),
    center_rewards_coefficient: Optional[float] = O(None, help="weight of (r_c + r_r)^2"),
    share_prompt: Optional[bool] = O(None, "--share-prompt/--no-share-prompt",
                                     help="run each pair's prompt once (default on)"),
    lr: Optional[float] = O(None, help="learning rate (default 1e-5)"),
    epochs: Optional[int] = O(None), max_steps: Optional[int] = O(None),
    batch_size: Optional[int] = O(None, help="pairs per batch"), grad_accum: Optional[int] = O(None),
    warmup_steps: Optional[int] = O(None), warmup_ratio: Optional[float] = O(None),
    scheduler: Optional[str] = O(None, help="linear | cosine | constant | constant_with_warmup"),
    max_grad_norm: Optional[float] = O(None),
    gradient_checkpointing: Optional[bool] = O(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    lora_r: Optional[int] = O(None, help="LoRA rank (off when unset)"),
    lora_alpha: Optional[int] = O(None), lora_dropout: Optional[float] = O(None),
    merge_lora: Optional[bool] = O(None, "--merge-lora/--no-merge-lora"),
    seed: Optional[int] = O(None),
    eval_data: Optional[str] = O(None, help="held-out pairs (else split from --data by prompt)"),
    eval_fraction: Optional[float] = O(None, help="share of prompts held out (default 0.1)"),
    eval_every: Optional[int] = O(None), save_every: Optional[int] = O(None),
    log_every: Optional[int] = O(None),
    resume: bool = O(False, "--resume", help="continue from the last checkpoint in -o"),
    progress: Optional[bool] = O(None, "--progress/--no-progress"),
    mixed_precision: Optional[str] = MIXED,
) -> None:
    """Train a reward model (scalar head) with the soft-label Bradley-Terry loss."""
    from cai.train.rm import RMConfig, run_rm

    overrides = _shared(model, out, max_length, lr, epochs, max_steps, batch_size, grad_accum,
                        warmup_steps, warmup_ratio, scheduler, max_grad_norm,
                        gradient_checkpointing, lora_r, lora_alpha, lora_dropout, merge_lora, seed,
                        eval_data, eval_fraction, eval_every, save_every, log_every, resume,
                        progress)
    overrides.update(data=data or None, overlong=overlong, margin=margin,
                     center_rewards_coefficient=center_rewards_coefficient,
                     share_prompt=share_prompt, mixed_precision=mixed_precision)
    _run("rm", RMConfig, run_rm, config, overrides)


@app.command("ppo")
def ppo_cmd(
    model: Optional[str] = O(None, "--model", help="causal LM to start from: SFT output dir, "
                                                   "registry name or hub id"),
    reward: Optional[str] = O(None, "--reward", help="`cai train rm` dir, any seq-classification "
                                                     "RM dir, or FILE.py:FUNCTION"),
    prompts: Optional[str] = O(None, "--prompts", help="prompt file (JSONL/CSV/... with prompt or messages)"),
    out: Optional[Path] = OUT, config: Optional[Path] = O(None, "--config", help="pipeline YAML; "
                                                          "its `ppo:` section, flags on top"),
    value_model: Optional[str] = O(None, help="value model init (default: the reward model)"),
    eval_prompts: Optional[str] = O(None, help="held-out prompts (else --eval-size from --prompts)"),
    eval_size: Optional[int] = O(None), eval_every: Optional[int] = O(None),
    eval_temperature: Optional[float] = O(None, help="held-out sampling temperature (default 0: greedy)"),
    eval_samples: Optional[int] = O(None, help="responses per held-out prompt (needs "
                                               "--eval-temperature > 0 above 1)"),
    iterations: Optional[int] = O(None, help="rollout/update iterations (default 20)"),
    rollout_batch_size: Optional[int] = O(None, help="prompts per iteration (default 16)"),
    max_tokens: Optional[int] = O(None), temperature: Optional[float] = O(None),
    backend: Optional[str] = O(None, help="rollout engine: transformers | vllm (default: vllm "
                                          "where installed)"),
    ppo_epochs: Optional[int] = O(None), minibatch_size: Optional[int] = O(None),
    micro_batch_size: Optional[int] = O(None), lr: Optional[float] = O(None, "--lr"),
    forward_batch_size: Optional[int] = O(None, help="rows per no-grad scoring pass (default 16)"),
    attn_implementation: Optional[str] = O(None, help="auto | eager | sdpa (auto: eager on CPU "
                                                      "for short sequences)"),
    kl_coef: Optional[float] = O(None, help="β (initial value with --adaptive-kl)"),
    adaptive_kl: Optional[bool] = O(None, "--adaptive-kl/--fixed-kl"),
    kl_target: Optional[float] = O(None),
    kl_horizon: Optional[int] = O(None, help="adaptive β's horizon in responses (default 10000): "
                                             "β moves by at most 20%·batch/horizon an iteration"),
    kl_estimator: Optional[str] = O(None, help="k1 | k3"),
    lora_r: Optional[int] = O(None, help="LoRA rank (default: off, train all weights)"),
    seed: Optional[int] = O(None),
    resume: bool = O(False, "--resume", help="continue from the last checkpoint in -o"),
    progress: bool = O(True, "--progress/--no-progress"),
    mixed_precision: Optional[str] = MIXED,
) -> None:
    """KL-regularised PPO of a policy against a reward model (RL-CAI's last stage)."""
    from cai.config import ConfigError, load_section
    from cai.io import DataError
    from cai.models import ModelError
    from cai.train.metrics import NonFiniteLossError
    from cai.train.ppo import PPOConfig, run_ppo

    overrides = dict(model=model, reward=reward, prompts=prompts,
                     out=None if out is None else str(out), value_model=value_model,
                     eval_prompts=eval_prompts, eval_size=eval_size, eval_every=eval_every,
                     eval_temperature=eval_temperature, eval_samples=eval_samples,
                     iterations=iterations, rollout_batch_size=rollout_batch_size,
                     max_tokens=max_tokens, temperature=temperature,
                     backend=backend, ppo_epochs=ppo_epochs,
                     minibatch_size=minibatch_size, micro_batch_size=micro_batch_size,
                     forward_batch_size=forward_batch_size, attn_implementation=attn_implementation,
                     lr=lr, kl_coef=kl_coef, adaptive_kl=adaptive_kl,
                     kl_target=kl_target, kl_horizon=kl_horizon, kl_estimator=kl_estimator,
                     lora_r=lora_r, seed=seed, mixed_precision=mixed_precision,
                     resume=resume or None, progress=None if progress else False)
    try:
        cfg = load_section(config, "ppo", PPOConfig, overrides)
        summary = run_ppo(cfg)
    except (ConfigError, DataError, ModelError, FileExistsError, ValueError, NonFiniteLossError) as e:
        fail(str(e))
    last = summary.get("last") or {}
    typer.echo(f"{summary['iterations']} iterations ({summary['rollout_backend']} rollouts); "
               f"reward {last.get('reward/raw', float('nan')):.4f}, KL {last.get('kl', float('nan')):.3f}; "
               f"policy -> {summary['policy']}")
    if "eval/reward_gain" in last:
        typer.echo(f"held-out reward {last['eval/reward']:.4f}, gain over iteration 0 "
                   f"{last['eval/reward_gain']:+.4f} [95% {last['eval/reward_gain_ci95_lo']:+.4f}, "
                   f"{last['eval/reward_gain_ci95_hi']:+.4f}]")
