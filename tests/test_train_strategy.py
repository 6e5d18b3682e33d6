"""`strategy:` -> accelerate plugins (a pure mapping, checked on the CPU), the refusal of the
GPU-only strategies on the CPU, the shipped `pipelines/accelerate/*.yaml` read by accelerate's
own loader, and `--strategy` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.config import ConfigError
from cai.train.sft import SFTConfig
from cai.train.strategy import STRATEGIES, check_strategy, make_plugin, strategy_plugin

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "accelerate"


def test_each_strategy_maps_to_its_plugin():
    assert strategy_plugin("ddp") == (None, {})
    key, fsdp = strategy_plugin("fsdp2")
    assert key == "fsdp_plugin"
    assert fsdp["fsdp_version"] == 2 and fsdp["auto_wrap_policy"] == "transformer_based_wrap"
    assert fsdp["state_dict_type"] == "SHARDED_STATE_DICT"
    key, z2 = strategy_plugin("deepspeed_zero2", grad_accum=4, max_grad_norm=0.5)
    assert key == "deepspeed_plugin"
    assert (z2["zero_stage"], z2["gradient_accumulation_steps"], z2["gradient_clipping"]) == (2, 4, 0.5)
    assert not z2["zero3_init_flag"] and not z2["zero3_save_16bit_model"]
    _, z3 = strategy_plugin("deepspeed_zero3", max_grad_norm=None)
    assert z3["zero_stage"] == 3 and z3["zero3_init_flag"] and z3["zero3_save_16bit_model"]
    assert z3["gradient_clipping"] == 0.0  # clipping off
    with pytest.raises(ConfigError, match="unknown strategy 'zero9'"):
        strategy_plugin("zero9")


def test_fsdp2_and_the_plugin_build_on_accelerates_own_dataclass():
    # the mapping's keywords are the ones accelerate's plugin takes (it would raise otherwise)
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(**strategy_plugin("fsdp2")[1])
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


@pytest.mark.parametrize("strategy", ["fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_strategies_are_refused_on_the_cpu(strategy):
    with pytest.raises(ConfigError, match=f"strategy {strategy} .* does not run on the CPU; "
                                          "use strategy: ddp"):
        make_plugin(strategy, grad_accum=1, max_grad_norm=1.0, on_cpu=True)
    check_strategy("ddp", on_cpu=True)  # ddp runs anywhere
    assert make_plugin("ddp", grad_accum=1, max_grad_norm=1.0, on_cpu=True) == {}


def test_a_cpu_run_with_fsdp2_stops_before_loading_anything(tiny_model_dir, tmp_path):
    from cai.train.sft import run_sft

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, '
                    '{"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(ConfigError, match="strategy fsdp2 .* use strategy: ddp"):
        run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(data)], out=str(tmp_path / "o"),
                          strategy="fsdp2", progress=False))
    assert not (tmp_path / "o" / "train_config.json").exists()


@pytest.mark.parametrize("name,strategy", [("ddp", "ddp"), ("fsdp2", "fsdp2"),
                                           ("zero2", "deepspeed_zero2"),
                                           ("zero3", "deepspeed_zero3")])
def test_shipped_accelerate_configs_load_and_agree_with_the_mapping(name, strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert cfg.num_machines == 1 and cfg.mixed_precision == "bf16" and not cfg.use_cpu
    key, kwargs = strategy_plugin(strategy)
    if key is None:
        assert cfg.distributed_type == "MULTI_GPU"
    elif key == "fsdp_plugin":
        assert cfg.distributed_type == "FSDP"
        assert cfg.fsdp_config["fsdp_version"] == kwargs["fsdp_version"]
        assert cfg.fsdp_config["fsdp_state_dict_type"] == kwargs["state_dict_type"]
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"].lower() == kwargs["auto_wrap_policy"]
    else:
        assert cfg.distributed_type == "DEEPSPEED"
        for k in ("zero_stage", "zero3_init_flag"):
            assert cfg.deepspeed_config[k] == kwargs[k], k
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["ddp", "fsdp2", "zero2", "zero3"]


def test_strategy_is_a_config_key_and_a_flag(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    assert SFTConfig(out="o", data=["d"]).strategy == "ddp"
    assert SFTConfig(out="o", data=["d"], strategy="deepspeed_zero3").strategy == "deepspeed_zero3"
    with pytest.raises(ValueError, match="strategy"):
        SFTConfig(out="o", data=["d"], strategy="zero9")
    result = CliRunner().invoke(app, ["train", "rm", "--help"])
    assert "--strategy" in result.output
    assert set(STRATEGIES) == {"ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"}


def test_ppo_refuses_what_it_cannot_yet_do_on_many_ranks():
    from cai.train.ppo_config import PPOConfig
    from cai.train.ppo_setup import check_ranks

    base = dict(out="ppo", model="m", prompts="p.jsonl", reward="r.py:f", progress=False,
                rollout_batch_size=8, minibatch_size=8, micro_batch_size=4)
    with pytest.raises(ConfigError, match="strategy fsdp2: cai train ppo replicates"):
        check_ranks(PPOConfig(**base, strategy="fsdp2"), 1)
    check_ranks(PPOConfig(**base), 2)  # 8 rows a minibatch: 4 a rank, one micro-batch each
    # 3 ranks cannot take equal shares of a minibatch of 8
    with pytest.raises(ConfigError, match=r"on 3 ranks minibatch_size \(8\) must be a multiple "
                                          r"of 3 x micro_batch_size \(4\)"):
        check_ranks(PPOConfig(**base), 3)
    with pytest.raises(ConfigError, match="backend: vllm on 2 ranks is not supported yet"):
        check_ranks(PPOConfig(**base, backend="vllm"), 2)
