"""`cai train sft|rm|ppo`: flags (generated from SFTConfig / RMConfig / PPOConfig,
`cli.stage`) over `--config` (a pipeline YAML's `sft:` / `rm:` / `ppo:` section, or a bare
section) -> run_sft / run_rm / run_ppo -> summary."""

from __future__ import annotations

import json

import typer

from cai.cli.common import fail
from cai.cli.stage import StageArgs, stage_command

app = typer.Typer(no_args_is_help=True)
SHORT = {"model": "-m", "out": "-o", "data": "-d"}


def _config_class(ref: str):
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _run(args: StageArgs, cls, run) -> dict:
    from cai.config import ConfigError
    from cai.io import DataError
    from cai.models import ModelError
    from cai.train.metrics import NonFiniteLossError

    config = args.config(cls)
    try:
        return run(config, log=typer.echo)
    except (ConfigError, DataError, ModelError, FileExistsError, NonFiniteLossError) as e:
        fail(str(e))


def _report(summary: dict) -> None:
    if summary.get("skipped"):
        return
    ev = summary.get("eval") or {}
    typer.echo(f"{summary['steps']} steps in {summary['train_seconds']:.1f} s "
               f"({summary['tokens_per_second']:,.0f} tokens/s); model -> {summary['out']}")
    if ev:
        typer.echo("eval: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                          for k, v in ev.items()}))


from cai.train.rm import RMConfig  # noqa: E402  (light: pydantic only)
from cai.train.sft import SFTConfig  # noqa: E402


@stage_command(app, "sft", [SFTConfig], section="sft", marker_key="data", short=SHORT)
def sft_cmd(args: StageArgs) -> None:
    """Supervised fine-tuning on conversations (SL-CAI): loss on assistant tokens only, with
    the model's own chat template. -o becomes a HF model directory (cai chat, vLLM)."""
    from cai.train.sft import run_sft

    _report(_run(args, SFTConfig, run_sft))


@stage_command(app, "rm", [RMConfig], section="rm", marker_key="data", short=SHORT)
def rm_cmd(args: StageArgs) -> None:
    """Train a reward model (scalar head) with the soft-label Bradley-Terry loss."""
    from cai.train.rm import run_rm

    _report(_run(args, RMConfig, run_rm))


from cai.train.ppo_config import PPOConfig  # noqa: E402


@stage_command(app, "ppo", [PPOConfig], section="ppo", marker_key="prompts",
               short={"model": "-m", "out": "-o"})
def ppo_cmd(args: StageArgs) -> None:
    """KL-regularised PPO of a policy against a reward model (RL-CAI's last stage)."""
    from cai.train.ppo import run_ppo

    summary = _run(args, PPOConfig, run_ppo)
    last = summary.get("last") or {}
    typer.echo(f"{summary['iterations']} iterations ({summary.get('backend', summary.get('rollout_backend'))} "
               f"rollouts); reward {last.get('reward/raw', float('nan')):.4f}, "
               f"KL {last.get('kl', float('nan')):.3f}; policy -> {summary['policy']}")
    if "eval/reward_gain" in last:
        typer.echo(f"held-out reward {last['eval/reward']:.4f}, gain over iteration 0 "
                   f"{last['eval/reward_gain']:+.4f} [95% {last['eval/reward_gain_ci95_lo']:+.4f}, "
                   f"{last['eval/reward_gain_ci95_hi']:+.4f}]")
