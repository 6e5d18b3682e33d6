"""How a training stage spreads over its processes: `strategy: ddp | fsdp2 | deepspeed_zero2 |
deepspeed_zero3`, mapped to accelerate's plugins.

ddp replicates the model on every process and averages gradients (CPU/gloo and GPU/NCCL).
fsdp2 (torch's fully_shard) and DeepSpeed ZeRO-2/3 shard the optimizer state, gradients and,
for fsdp2 and ZeRO-3, the weights: for models whose weights + AdamW state do not fit one
card. They are GPU-only here; on the CPU they are refused before anything loads.
`strategy_plugin` is a pure function (no torch, no GPU) so the mapping is tested anywhere.
"""

from __future__ import annotations

from typing import Any, Literal

from cai.config import ConfigError

Strategy = Literal["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3")


def strategy_plugin(strategy: str, *, grad_accum: int = 1,
                    max_grad_norm: float | None = None) -> tuple[str | None, dict[str, Any]]:
    """(the Accelerator keyword that takes the plugin, the plugin's keyword arguments);
    (None, {}) for ddp, which accelerate does by itself when there are several processes."""
    if strategy == "ddp":
        return None, {}
    if strategy == "fsdp2":
        return "fsdp_plugin", {
            "fsdp_version": 2,
            # one shard unit per decoder layer (the model's _no_split_modules)
            "auto_wrap_policy": "transformer_based_wrap",
            "reshard_after_forward": True,  # ZeRO-3-like: weights gathered per layer
            # save_state writes each rank's shard; the final HF model is gathered once
            "state_dict_type": "SHARDED_STATE_DICT",
            "cpu_ram_efficient_loading": True,
        }
    if strategy in ("deepspeed_zero2", "deepspeed_zero3"):
        stage = 2 if strategy == "deepspeed_zero2" else 3
        return "deepspeed_plugin", {
            "zero_stage": stage,
            "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": max_grad_norm if max_grad_norm else 0.0,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,  # the final HF dir from gathered shards
        }
    raise ConfigError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


def check_strategy(strategy: str, *, on_cpu: bool) -> None:
    """Refuse what cannot run here, with what to do instead."""
    if strategy == "ddp":
        return
    if on_cpu:
        raise ConfigError(f"strategy {strategy} shards the model over CUDA GPUs and does not run "
                          "on the CPU; use strategy: ddp here (or run on GPUs)")
    if strategy.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"strategy {strategy} needs DeepSpeed: pip install 'cai[deepspeed]'")


def make_plugin(strategy: str, *, grad_accum: int, max_grad_norm: float | None,
                on_cpu: bool) -> dict[str, Any]:
    """Accelerator keyword arguments for `strategy` (checked first)."""
    check_strategy(strategy, on_cpu=on_cpu)
    key, kwargs = strategy_plugin(strategy, grad_accum=grad_accum, max_grad_norm=max_grad_norm)
    if key is None:
        return {}
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    cls = FullyShardedDataParallelPlugin if key == "fsdp_plugin" else DeepSpeedPlugin
    return {key: cls(**kwargs)}


__all__ = ["STRATEGIES", "Strategy", "check_strategy", "make_plugin", "strategy_plugin"]
