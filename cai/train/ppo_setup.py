"""Everything a PPO run builds once before its first iteration: the accelerator, the prompts,
the four models (policy, reference, value model, reward), the two optimisers and the rollout
engine. The loaders are the training core's (cai.train.modeling)."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cai.train import losses as L
from cai.train.ppo_config import PPOConfig
from cai.train.ppo_reward import RewardFn, load_reward


@dataclass
class Prompts:
    messages: list  # training conversations
    ids: list[list[int]]  # their chat-templated token ids
    eval_messages: list
    eval_ids: list[list[int]]


@dataclass
class PPOModels:
    """The models and optimisers of a run. `policy`/`value_model` are accelerate-prepared;
    `policy_model` is the policy unwrapped (what engines read weights from). The reference is
    a frozen copy of the starting policy or, with LoRA, the policy with its adapter disabled
    (`reference_context`)."""

    accelerator: Any
    policy_path: str
    tokenizer: Any
    eos_ids: list[int]
    policy: Any
    policy_model: Any
    reference: Any
    reference_context: Callable[[], Any]
    value_model: Any
    reward: RewardFn
    rm_mean: float
    rm_std: float
    opt_p: Any
    opt_v: Any
    sch_p: Any
    sch_v: Any
    kl_ctl: Any
    engine: Any = None
    backend: str = ""


def world_size() -> int:
    """The number of ranks the launcher started (torchrun, accelerate launch, Ray Train)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_ranks(config: PPOConfig, ranks: int) -> None:
    """Each rank takes rollout_batch_size / N prompts and minibatch_size / N rows of every
    minibatch, in whole micro-batches; refuse a split that does not come out even."""
    from cai.config import ConfigError

    if config.strategy != "ddp":
        raise ConfigError(f"strategy {config.strategy}: cai train ppo replicates its models on "
                          "every rank (strategy: ddp); the sharded strategies are for sft and rm")
    if ranks == 1:
        return
    if config.minibatch_size % (ranks * config.micro_batch_size):
        raise ConfigError(f"on {ranks} ranks minibatch_size ({config.minibatch_size}) must be a "
                          f"multiple of {ranks} x micro_batch_size ({config.micro_batch_size}): "
                          "each rank takes an equal share of every minibatch")
    if config.backend == "vllm":
        raise ConfigError(f"backend: vllm on {ranks} ranks is not supported yet (each rank's "
                          "in-process engine would join the trainer's process group); use "
                          "backend: transformers")


def make_accelerator(config: PPOConfig):
    """One optimizer step per minibatch (micro-batches accumulate); TensorBoard under
    out/tensorboard; gloo when several ranks run on the CPU. Returns (accelerator, the mixed
    precision it runs)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from cai.train.accel import allow_precision, launched_on_cpu, pick_mixed_precision

    ranks = world_size()
    check_ranks(config, ranks)
    cpu = config.cpu or launched_on_cpu()
    precision = pick_mixed_precision(config.mixed_precision, cpu=cpu)
    allow_precision(precision, cpu=cpu)
    project = ProjectConfiguration(project_dir=config.out,
                                   logging_dir=str(Path(config.out) / "tensorboard"))
    accelerator = Accelerator(
        gradient_accumulation_steps=max(1, config.minibatch_size // ranks
                                        // config.micro_batch_size),
        cpu=cpu, mixed_precision=precision, project_config=project,
        log_with="tensorboard")
    set_seed(config.seed)
    return accelerator, precision


def load_prompt_ids(path: str, config: PPOConfig, tokenizer) -> tuple[list, list[list[int]]]:
    from cai.backends.context import ChatTokenizer
    from cai.prompts import load_prompts

    items, rejects = load_prompts(path, field=config.prompt_field,
                                  messages_field=config.messages_field,
                                  max_prompt_tokens=config.max_prompt_tokens,
                                  count_tokens=ChatTokenizer(tokenizer).count_tokens)
    if not items:
        detail = (f" ({rejects[0].location}: {rejects[0].code}: {rejects[0].reason})"
                  if rejects else "")
        raise ValueError(f"no usable prompts in {path}{detail}")
    texts = [tokenizer.apply_chat_template(i.messages, tokenize=False, add_generation_prompt=True)
             for i in items]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [i.messages for i in items], ids


def load_prompts(config: PPOConfig, tokenizer) -> Prompts:
    """The training prompts and the held-out ones (a file, or the last `eval_size`)."""
    messages, ids = load_prompt_ids(config.prompts, config, tokenizer)
    if config.eval_prompts:
        return Prompts(messages, ids, *load_prompt_ids(config.eval_prompts, config, tokenizer))
    if config.eval_size:
        if config.eval_size >= len(ids):
            raise ValueError(f"eval_size {config.eval_size} leaves no training prompts "
                             f"({len(ids)} in {config.prompts})")
        k = config.eval_size
        return Prompts(messages[:-k], ids[:-k], messages[-k:], ids[-k:])
    return Prompts(messages, ids, [], [])


def _value_model(path: str, tokenizer, attn: str | None):
    """A sequence-classification model whose head gives one value per token. From a causal LM
    the head is new: it starts at 0 rather than at random."""
    from cai.train.modeling import load_config, load_reward_model
    from cai.train.reward import scalar_head

    config = load_config(path, no_dropout=True)
    fresh_head = getattr(config, "num_labels", None) != 1 or not any(
        a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    # pad_token_id before the model is built, as its embedding's padding_idx
    config.pad_token_id = tokenizer.pad_token_id
    model = load_reward_model(path, tokenizer, attn, config=config)
    if fresh_head:
        torch.nn.init.zeros_(scalar_head(model).weight)
    return model


def load_models(config: PPOConfig, accelerator, reward_fn: RewardFn | None, *,
                updates_per_iteration: int) -> PPOModels:
    """Tokenizer, policy (+ LoRA) or a frozen reference, reward, value model (+ LoRA),
    optimisers (one per model: the value loss never reaches the policy), schedulers, β.
    The order is fixed: LoRA and fresh heads draw from the seeded RNG."""
    from transformers import get_scheduler

    from cai.models import resolve_model
    from cai.train.loop import adamw
    from cai.train.modeling import (apply_lora, load_causal_lm, load_config, load_tokenizer,
                                    pick_attn_implementation, resolve_training_model)

    device = accelerator.device
    policy_path = resolve_training_model(config.model)
    tokenizer = load_tokenizer(policy_path)
    eos_ids = sorted({tokenizer.eos_token_id} | set(_generation_eos(policy_path)))
    attn = pick_attn_implementation(config.attn_implementation, policy_path,
                                    on_cpu=device.type == "cpu", rows=config.micro_batch_size,
                                    max_len=config.max_prompt_tokens + config.max_tokens)

    def causal_lm():
        return load_causal_lm(policy_path, tokenizer, attn,
                              config=load_config(policy_path, no_dropout=True))

    policy, reference = causal_lm(), None
    if config.lora:
        policy = apply_lora(policy, config, task_type="CAUSAL_LM")
    else:
        reference = causal_lm().to(device).eval().requires_grad_(False)
    reward, rm_mean, rm_std, rm_path = load_reward(reward_fn or config.reward, device,
                                                   config.forward_batch_size)
    value_path = resolve_model(config.value_model or rm_path or policy_path)
    value_model = _value_model(value_path, tokenizer, attn)
    if config.value_lora_on:
        value_model = apply_lora(value_model, config, task_type="SEQ_CLS")

    opt_p = adamw([p for p in policy.parameters() if p.requires_grad], lr=config.lr, eps=1e-5)
    opt_v = adamw([p for p in value_model.parameters() if p.requires_grad],
                  lr=config.value_lr or config.lr, eps=1e-5)
    # accelerate steps a prepared scheduler once per process per optimizer step
    ranks = accelerator.num_processes
    total = updates_per_iteration * config.iterations * ranks
    sch_p = get_scheduler(config.lr_scheduler, opt_p, config.warmup_steps * ranks, total)
    sch_v = get_scheduler(config.lr_scheduler, opt_v, config.warmup_steps * ranks, total)
    policy, value_model, opt_p, opt_v, sch_p, sch_v = accelerator.prepare(
        policy, value_model, opt_p, opt_v, sch_p, sch_v)
    kl_ctl = (L.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
              if config.adaptive_kl else L.FixedKLController(config.kl_coef))
    policy_model = accelerator.unwrap_model(policy, keep_fp32_wrapper=False)
    return PPOModels(
        accelerator=accelerator, policy_path=policy_path, tokenizer=tokenizer, eos_ids=eos_ids,
        policy=policy, policy_model=policy_model, reference=policy_model if config.lora else reference,
        reference_context=policy_model.disable_adapter if config.lora else nullcontext,
        value_model=value_model, reward=reward, rm_mean=rm_mean, rm_std=rm_std, opt_p=opt_p,
        opt_v=opt_v, sch_p=sch_p, sch_v=sch_v, kl_ctl=kl_ctl)


def start_engine(config: PPOConfig, models: PPOModels, precision: str, n_eval: int) -> None:
    """The rollout engine (`models.engine`): vLLM with the weights pushed in before each
    rollout, or transformers' generate().

    Mixed precision is applied per phase (accelerator.autocast() around scoring and the
    update's forward passes), not by accelerate's autocast-wrapped forward, which would also
    cover generate(): there every decoded token would re-cast every frozen weight to bf16,
    costing more than the bf16 matmuls save (bench/ppo.py, CPU: 18.8 vs 10.8 s per rollout).
    Rollouts sample from a copy already in that dtype (`rollout_dtype`) or in the weights'
    own."""
    from cai.train.ppo_rollout import TransformersRollout, VLLMRollout, default_rollout_backend

    device = models.accelerator.device
    # several ranks roll out with transformers (check_ranks refuses an explicit vllm)
    models.backend = config.backend or (default_rollout_backend(device.type)
                                        if models.accelerator.num_processes == 1
                                        else "transformers")
    dtype = rollout_dtype(config.rollout_dtype, precision)
    if models.backend == "vllm":
        models.engine = VLLMRollout(
            models.policy_path,
            max_model_len=config.max_prompt_tokens + config.max_tokens + 8,
            max_seqs=max(config.rollout_batch_size, n_eval * config.eval_samples),
            gpu_memory_utilization=config.gpu_memory_utilization, seed=config.seed,
            lora_push=config.vllm_lora_push,
            dtype=dtype or next(models.policy.parameters()).dtype)
    else:
        models.engine = TransformersRollout(models.tokenizer, models.eos_ids, dtype=dtype)


def rollout_dtype(requested: str, precision: str) -> torch.dtype | None:
    """The dtype rollouts sample in (the transformers copy's, the vLLM engine's); None: the
    policy's own."""
    if requested == "auto":
        requested = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "policy")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "policy": None}[requested]


def _generation_eos(path: str) -> list[int]:
    """The extra EOS ids of generation_config.json (chat models stop on end-of-turn too)."""
    f = Path(path) / "generation_config.json"
    x = json.loads(f.read_text()).get("eos_token_id") if f.is_file() else None
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
