"""KL-regularised PPO of a causal LM against a reward model (RLHF / RL-CAI's last stage).

One iteration, top to bottom, in the order of CleanRL's ppo.py and "The N+ implementation
details of RLHF with PPO":

  1. rollout     sample one response per prompt from the current policy (temperature T)
  2. score       rescore the tokens under the policy and the frozen reference (same T),
                 values from the value model, the reward-model score of each response
  3. advantages  per-token rewards = -β·KL (+ score on the last token), GAE(γ, λ), whitening
  4. update      several PPO epochs over shuffled minibatches: clipped surrogate for the
                 policy, clipped value loss for the value model (separate optimisers)
  5. log         metrics.jsonl, TensorBoard, progress bar; the KL controller moves β;
                 checkpoint; held-out evaluation every `eval_every` iterations

The reference is a frozen copy of the starting policy or, with LoRA, the same weights with
the adapter disabled. The value model is separate from the policy (README explains why).
All pure arithmetic lives in `cai.train.losses`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.stats import paired_difference
from cai.io import atomic_write_json
from cai.train import losses as L
from cai.train.accel import allow_precision, pick_mixed_precision
from cai.train.config import changed_fields
from cai.train.loop import adamw
from cai.train.metrics import check_finite
from cai.train.modeling import pick_attn_implementation
from cai.train.ppo_reward import RewardFn, load_reward, per_token_values, zero_dropout

STATE_FILE = "ppo_state.json"  # written last in a checkpoint: a directory without it is incomplete


class PPOConfig(BaseModel):
    """Everything a PPO run depends on; saved beside the run and compared on --resume."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(description="causal LM to start from (SFT model dir, registry name, hub id)")
    reward: str = Field(description="reward model dir (`cai train rm` or any seq-classification "
                                    "model) or FILE.py:FUNCTION / MODULE:FUNCTION")
    value_model: str | None = Field(None, description="init of the value model; default: the "
                                    "reward model, or the policy when the reward is a function")
    prompts: str = Field(description="prompt file (JSONL/CSV/... with `prompt` or `messages`)")
    output_dir: str
    eval_prompts: str | None = Field(None, description="held-out prompt file")
    eval_size: int = Field(0, ge=0, description="without eval_prompts: hold out the last N prompts")
    eval_every: int = Field(0, ge=0, description="evaluate every N iterations (0: never)")
    eval_temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    eval_samples: int = Field(1, ge=1, description="responses per held-out prompt, each with its "
                              "own fixed seed (needs eval_temperature > 0 when above 1); the "
                              "prompt's mean reward is its score")

    prompt_field: str = "prompt"
    messages_field: str = "messages"
    max_prompt_tokens: int = Field(256, ge=1)

    iterations: int = Field(20, ge=1)
    rollout_batch_size: int = Field(16, ge=2, description="prompts (= responses) per iteration")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, gt=0.0)
    rollout_backend: Literal["auto", "transformers", "vllm"] = "auto"
    vllm_lora_push: Literal["merge", "adapter"] = "merge"
    rollout_dtype: Literal["auto", "policy", "bf16", "fp16"] = Field(
        "auto", description="the dtype rollouts sample in: the policy's weights' own (policy) or "
                            "bf16/fp16 (transformers: a copy of the policy, LoRA merged, "
                            "refreshed each iteration; vllm: the engine's dtype); auto: the "
                            "mixed-precision dtype when there is one")
    vllm_gpu_memory_utilization: float = Field(0.1, gt=0.0, le=0.95, description="share of "
                                               "GPU memory vLLM may claim at its start (the "
                                               "KV cache itself is sized for the rollout batch)")

    ppo_epochs: int = Field(4, ge=1)
    minibatch_size: int = Field(8, ge=1)
    micro_batch_size: int = Field(4, ge=1, description="per forward pass; minibatch/micro = grad accumulation")
    forward_batch_size: int = Field(16, ge=1, description="rows per no-grad forward pass when "
                                    "scoring (policy, reference, value and reward model); "
                                    "TRL's local_rollout_forward_batch_size")
    learning_rate: float = Field(1e-5, gt=0.0)
    value_learning_rate: float | None = Field(None, description="default: learning_rate")
    lr_scheduler: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    clip_range: float = Field(0.2, gt=0.0)
    value_clip_range: float = Field(0.2, gt=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool = True

    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_coef: float = Field(0.05, ge=0.0, description="β (initial value when adaptive)")
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0.0)
    kl_horizon: int = Field(10000, ge=1)
    missing_eos_penalty: float | None = Field(1.0, description="subtracted from the normalised "
                                              "score of a response without EOS (None: off)")
    whiten_rewards: bool = False

    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_target_modules: list[str] | str = "all-linear"
    value_lora: bool | None = Field(None, description="LoRA on the value model too (default: as `lora`)")
    merge_lora: bool = Field(True, description="save policy/ and value_model/ with the adapter "
                             "merged (full HF models every stage loads), else the adapters")

    seed: int = 0
    save_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    cpu: bool = Field(False, description="train on CPU even when CUDA is there")
    attn_implementation: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="attention kernel of the policy, reference and value model. auto: "
                            "eager on a CPU when its saved attention weights (micro-batch × heads "
                            "× (prompt + response)² × layers) stay under 2 GiB, where its backward "
                            "is faster than SDPA's; else the model's default")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast for scoring and the update (rollouts: see rollout_dtype); "
                            "fp32 master weights. auto: bf16 on a CUDA GPU that has it "
                            "and on a CPU with AMX, else fp32")

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> "PPOConfig":
        if self.eval_samples > 1 and self.eval_temperature == 0:
            raise ValueError(f"eval_samples {self.eval_samples} needs eval_temperature > 0: "
                             "greedy answers are all the same")
        return self

    def fingerprint_fields(self) -> dict[str, Any]:
        return self.model_dump()


# --------------------------------------------------------------------------------------
# Loading: prompts, models, optimisers
# --------------------------------------------------------------------------------------


def _load_prompt_ids(path: str, config: PPOConfig, tokenizer) -> tuple[list, list[list[int]]]:
    from cai.backends.context import ChatTokenizer
    from cai.prompts import load_prompts

    items, rejects = load_prompts(path, field=config.prompt_field, messages_field=config.messages_field,
                                  max_prompt_tokens=config.max_prompt_tokens,
                                  count_tokens=ChatTokenizer(tokenizer).count_tokens)
    if not items:
        detail = f" ({rejects[0].location}: {rejects[0].code}: {rejects[0].reason})" if rejects else ""
        raise ValueError(f"no usable prompts in {path}{detail}")
    ids = [tokenizer.apply_chat_template(i.messages, tokenize=False, add_generation_prompt=True)
           for i in items]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ids]
    return [i.messages for i in items], ids


def _load_causal_lm(path: str, attn_implementation: str | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    zero_dropout(config)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32,
                                                attn_implementation=attn_implementation)


def _load_value_model(path: str, pad_token_id: int, attn_implementation: str | None = None):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path)
    zero_dropout(config)
    fresh_head = getattr(config, "num_labels", None) != 1 or not any(
        a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32,
                                                               attn_implementation=attn_implementation)
    if fresh_head:  # a causal LM as init: start the value head at 0 rather than at random
        from cai.train.reward import scalar_head

        torch.nn.init.zeros_(scalar_head(model).weight)
    return model


def _lora(model, config: PPOConfig, task_type: str):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, task_type=task_type,
        target_modules=config.lora_target_modules))


# --------------------------------------------------------------------------------------
# Forward passes over (left-padded prompt | right-padded response) batches
# --------------------------------------------------------------------------------------


class Batch:
    """Prompts left-padded to a common end, responses right-padded after it, so response
    token t of every row sits at column P + t and its log-prob is read at P + t - 1."""

    def __init__(self, prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int,
                 eos_ids: list[int], device) -> None:
        P = max(map(len, prompt_ids))
        R = max(1, max(map(len, response_ids)))
        self.P, self.R = P, R
        q = torch.full((len(prompt_ids), P), pad, dtype=torch.long)
        qm = torch.zeros_like(q)
        r = torch.full((len(prompt_ids), R), pad, dtype=torch.long)
        for i, (p, s) in enumerate(zip(prompt_ids, response_ids)):
            q[i, P - len(p):] = torch.tensor(p)
            qm[i, P - len(p):] = 1
            if s:
                r[i, :len(s)] = torch.tensor(s)
        present = torch.tensor([[1] * len(s) + [0] * (R - len(s)) for s in response_ids])
        # generated tokens up to and including the first EOS; nothing after it counts
        eos = torch.tensor(eos_ids)
        is_eos = torch.isin(r, eos) & present.bool()
        after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
        self.mask = (present.bool() & ~after_eos).long().to(device)
        self.prompt_lens = torch.tensor([len(p) for p in prompt_ids])
        self.response_lens = self.mask.sum(1).cpu()  # the mask runs from column 0 unbroken
        self.has_eos = is_eos.any(1).to(device)
        self.input_ids = torch.cat([q, r], 1).to(device)
        self.attention_mask = torch.cat([qm, self.mask.cpu()], 1).to(device)
        # positions as generate() counts them: from each row's first real token
        self.position_ids = (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def rows(self, idx) -> tuple[dict[str, torch.Tensor], int, int]:
        """(model inputs of rows `idx`, their prompt width P', their response width R').
        Columns that are padding in every one of these rows are left out (prompt padding on
        the left, response padding and post-EOS tokens on the right): masked anyway, they
        would cost compute and change nothing. Response token t stays at column P' + t."""
        idx = torch.as_tensor(idx)
        cpu = idx.cpu()
        p = int(self.prompt_lens[cpu].max())
        r = max(1, int(self.response_lens[cpu].max()))
        cols = slice(self.P - p, self.P + r)
        idx = idx.to(self.input_ids.device)
        return ({"input_ids": self.input_ids[idx, cols],
                 "attention_mask": self.attention_mask[idx, cols],
                 "position_ids": self.position_ids[idx, cols]}, p, r)

    def by_length(self, idx=None) -> torch.Tensor:
        """Rows `idx` (default all) ordered by length, so that rows of similar length share
        a micro-batch and little padding is left in it."""
        idx = torch.arange(len(self.prompt_lens)) if idx is None else torch.as_tensor(idx).cpu()
        total = self.prompt_lens[idx] + self.response_lens[idx]
        return idx[torch.argsort(total, stable=True)]


def response_logprobs(model, rows: dict, P: int, temperature: float, with_entropy: bool = False):
    """Log-probs of the response tokens (and per-token entropy) at temperature T."""
    labels = rows["input_ids"][:, P:]
    # only the response positions need the (vocabulary-wide) logits
    logits = model(**rows, use_cache=False, logits_to_keep=labels.shape[1] + 1).logits[:, :-1].float() / temperature
    logp = L.logprobs_from_logits(logits, labels)
    return (logp, L.entropy_from_logits(logits)) if with_entropy else (logp, None)


def response_values(value_model, rows: dict, P: int) -> torch.Tensor:
    """V(state before response token t) = the head at column P + t - 1."""
    return per_token_values(value_model, **rows)[:, P - 1:-1]


# --------------------------------------------------------------------------------------
# Run directory: config check, checkpoints, metrics
# --------------------------------------------------------------------------------------


# Where the run lives, how often it checkpoints and how much memory the engine may claim do
# not change its curve: a run directory may be moved, or resumed with other such settings.
PPO_RUN_ONLY_FIELDS = frozenset({"output_dir", "save_every", "keep_checkpoints",
                                 "vllm_gpu_memory_utilization"})


def _config_diff(saved: dict, current: dict) -> list[str]:
    """Fields whose value changed. A field the saved config lacks (added to PPOConfig after
    the run started) ran at its default."""
    return [key for key, _, _ in changed_fields(saved, current, PPOConfig.model_fields, PPO_RUN_ONLY_FIELDS)]


def _checkpoints(out: Path) -> list[Path]:
    ckpts = [p for p in (out / "checkpoints").glob("iter-*") if (p / STATE_FILE).is_file()]
    return sorted(ckpts, key=lambda p: int(p.name.split("-")[1]))


class MetricsLog:
    """metrics.jsonl (one JSON object per line) plus TensorBoard scalars."""

    def __init__(self, out: Path, keep_until: int | None) -> None:
        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop lines of iterations after the checkpoint we resume from
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if keep_until is not None
                    and json.loads(ln).get("iteration", 0) <= keep_until]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency of the venv
            self.tb = None

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self.tb.add_scalar(k, v, record["iteration"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb:
            self.tb.close()


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


def run_ppo(config: PPOConfig, *, resume: bool = False, reward_fn: RewardFn | None = None,
            progress: bool = True) -> dict:
    """Train; returns a summary (last metrics, paths). `reward_fn` overrides `config.reward`
    with an in-process callable (tests)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_scheduler

    from cai.models import resolve_model

    out = Path(config.output_dir)
    saved_config = out / "ppo_config.json"
    ckpts = _checkpoints(out) if out.exists() else []
    if saved_config.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a PPO run; pass --resume to continue it "
                                  "or choose another output directory")
        diff = _config_diff(json.loads(saved_config.read_text()), config.fingerprint_fields())
        if diff:
            raise ValueError(f"{out} was started with a different config; changed: {', '.join(diff)}")
    state = json.loads((ckpts[-1] / STATE_FILE).read_text()) if ckpts else None
    if state and state["iteration"] >= config.iterations and (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())  # finished: nothing to do
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved_config, config.fingerprint_fields())

    mb_per_step = max(1, config.minibatch_size // config.micro_batch_size)
    if config.minibatch_size % config.micro_batch_size or config.rollout_batch_size % config.minibatch_size:
        raise ValueError("rollout_batch_size must be a multiple of minibatch_size, "
                         "and minibatch_size a multiple of micro_batch_size")
    precision = pick_mixed_precision(config.mixed_precision, cpu=config.cpu)
    allow_precision(precision, cpu=config.cpu)
    accelerator = Accelerator(gradient_accumulation_steps=mb_per_step, cpu=config.cpu, mixed_precision=precision)
    device = accelerator.device
    set_seed(config.seed)

    # -- models ------------------------------------------------------------------------
    policy_path = resolve_model(config.policy)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids = sorted({tokenizer.eos_token_id} | set(_as_list(_generation_eos(policy_path))))
    attn = pick_attn_implementation(config.attn_implementation, policy_path, on_cpu=device.type == "cpu",
                                    rows=config.micro_batch_size,
                                    max_len=config.max_prompt_tokens + config.max_new_tokens)
    policy = _load_causal_lm(policy_path, attn)
    reference = None
    if config.lora:
        policy = _lora(policy, config, "CAUSAL_LM")
    else:
        reference = _load_causal_lm(policy_path, attn).to(device).eval().requires_grad_(False)
    reward, rm_mean, rm_std, rm_path = load_reward(reward_fn or config.reward, device,
                                                   config.forward_batch_size)
    value_path = config.value_model or rm_path or policy_path
    value_model = _load_value_model(resolve_model(value_path), tokenizer.pad_token_id, attn)
    if config.lora if config.value_lora is None else config.value_lora:
        value_model = _lora(value_model, config, "SEQ_CLS")

    # -- prompts -----------------------------------------------------------------------
    messages, prompt_ids = _load_prompt_ids(config.prompts, config, tokenizer)
    if config.eval_prompts:
        eval_messages, eval_ids = _load_prompt_ids(config.eval_prompts, config, tokenizer)
    elif config.eval_size:
        if config.eval_size >= len(prompt_ids):
            raise ValueError(f"eval_size {config.eval_size} leaves no training prompts "
                             f"({len(prompt_ids)} in {config.prompts})")
        eval_messages, eval_ids = messages[-config.eval_size:], prompt_ids[-config.eval_size:]
        messages, prompt_ids = messages[:-config.eval_size], prompt_ids[:-config.eval_size]
    else:
        eval_messages, eval_ids = [], []

    # -- optimisers (one per model: the value loss never reaches the policy) --------------
    updates_per_iter = config.ppo_epochs * (config.rollout_batch_size // config.minibatch_size)
    opt_p = adamw([p for p in policy.parameters() if p.requires_grad],
                  lr=config.learning_rate, eps=1e-5)
    opt_v = adamw([p for p in value_model.parameters() if p.requires_grad],
                  lr=config.value_learning_rate or config.learning_rate, eps=1e-5)
    total = updates_per_iter * config.iterations
    sch_p = get_scheduler(config.lr_scheduler, opt_p, config.warmup_steps, total)
    sch_v = get_scheduler(config.lr_scheduler, opt_v, config.warmup_steps, total)
    policy, value_model, opt_p, opt_v, sch_p, sch_v = accelerator.prepare(
        policy, value_model, opt_p, opt_v, sch_p, sch_v)
    kl_ctl = (L.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
              if config.adaptive_kl else L.FixedKLController(config.kl_coef))

    start_iter = 0
    if state:
        accelerator.load_state(str(ckpts[-1]))
        kl_ctl.load_state_dict(state["kl_controller"])
        start_iter = state["iteration"]
    metrics_log = MetricsLog(out, keep_until=start_iter)

    # -- rollout engine ----------------------------------------------------------------
    backend = config.rollout_backend if config.rollout_backend != "auto" else _default_backend(device)
    if backend == "vllm":
        from cai.train.ppo_rollout import VLLMRollout

        rollout_dtype = _rollout_dtype(config.rollout_dtype, precision) or next(policy.parameters()).dtype
        engine = VLLMRollout(policy_path, max_model_len=config.max_prompt_tokens + config.max_new_tokens + 8,
                             max_seqs=max(config.rollout_batch_size, len(eval_ids) * config.eval_samples),
                             gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                             seed=config.seed, lora_push=config.vllm_lora_push, dtype=rollout_dtype)
    else:
        from cai.train.ppo_rollout import TransformersRollout

        engine = TransformersRollout(tokenizer, eos_ids, dtype=_rollout_dtype(config.rollout_dtype, precision))

    # Mixed precision is applied per phase (accelerator.autocast() around scoring and the
    # update's forward passes), not by accelerate's autocast-wrapped forward, which would also
    # cover generate(): there every decoded token would re-cast every frozen weight to bf16,
    # costing more than the bf16 matmuls save (bench/ppo.py, CPU: 18.8 vs 10.8 s per rollout).
    # Rollouts sample from a copy already in that dtype (`rollout_dtype`) or in the weights' own.
    policy_model = accelerator.unwrap_model(policy, keep_fp32_wrapper=False)
    ref_context = (policy_model.disable_adapter if config.lora else nullcontext)
    ref_model = policy_model if config.lora else reference
    micro = config.micro_batch_size

    def score_batch(batch: Batch, with_values: bool):
        """Phase 2's forward passes, `forward_batch_size` rows at a time (grouped by length), no
        gradients. Returns [n, R] tensors, zero beyond each group's R'."""
        n = batch.input_ids.shape[0]
        out = [torch.zeros(n, batch.R, device=device) for _ in range(4 if with_values else 3)]
        order = batch.by_length()
        step = config.forward_batch_size
        # autocast here too: the reference (a separate model without LoRA) is not prepared by
        # accelerate, and policy and reference must compute in the same precision or β·KL
        # measures rounding
        with torch.no_grad(), accelerator.autocast():
            for i in range(0, n, step):
                idx = order[i:i + step].to(device)
                rows, P, r = batch.rows(idx)
                lp, ent = response_logprobs(policy, rows, P, config.temperature, with_entropy=True)
                with ref_context():
                    rlp, _ = response_logprobs(ref_model, rows, P, config.temperature)
                parts = [lp, rlp, ent] + ([response_values(value_model, rows, P)] if with_values else [])
                for t, part in zip(out, parts):
                    t[idx, :r] = part
        return tuple(out) if with_values else (*out, None)

    eval_baseline_file = out / "eval_baseline.json"  # iteration 0's held-out rewards

    def evaluate(iteration: int) -> dict:
        """Held-out prompts: mean reward and KL of greedy responses, or of `eval_samples`
        sampled ones per prompt. Row i always gets the same seed, so evaluations are paired."""
        policy.eval()
        engine.push_weights(policy_model)
        k = config.eval_samples
        ids = [p for p in eval_ids for _ in range(k)]
        msgs = [m for m in eval_messages for _ in range(k)]
        responses = engine.generate(policy_model, ids, max_new_tokens=config.max_new_tokens,
                                    temperature=config.eval_temperature, seed=config.seed + 1,
                                    iteration=0, batch_size=micro * 4)
        batch = Batch(ids, responses, tokenizer.pad_token_id, eos_ids, device)
        lp, rlp, _, _ = score_batch(batch, with_values=False)
        kl = (L.kl_estimate(lp, rlp, config.kl_estimator) * batch.mask).sum(1)
        texts = _decode(tokenizer, batch)
        with accelerator.autocast():
            raw = torch.tensor(reward(msgs, texts), dtype=torch.float32)
        with open(out / "eval_samples.jsonl", "a") as f:
            for i, (m, t, s) in enumerate(zip(msgs, texts, raw.tolist())):
                f.write(json.dumps({"iteration": iteration, "prompt": m[-1]["content"],
                                    "sample": i % k, "response": t, "reward": s}) + "\n")
        per_prompt = raw.view(-1, k).mean(1)  # the unit of the paired gain: samples share a prompt
        result = {"eval/reward": raw.mean().item(),
                  "eval/reward_normalized": L.normalize_scores(raw, rm_mean, rm_std).mean().item(),
                  "eval/kl": kl.mean().item(), "eval/response_length": batch.mask.sum(1).float().mean().item(),
                  "eval/eos_rate": batch.has_eos.float().mean().item()}
        # The gain over iteration 0 on the same prompts (and, when sampling, the same seeds),
        # paired: the spread between prompts is far larger than a gain PPO makes.
        if iteration == 0:
            atomic_write_json(eval_baseline_file, {"prompt_rewards": per_prompt.tolist()})
        elif eval_baseline_file.is_file():
            base = json.loads(eval_baseline_file.read_text())["prompt_rewards"]
            gain = paired_difference(per_prompt.tolist(), base) if len(base) == len(per_prompt) else {}
            if gain.get("ci95"):
                result.update({"eval/reward_gain": gain["mean"],
                               "eval/reward_gain_ci95_lo": gain["ci95"][0],
                               "eval/reward_gain_ci95_hi": gain["ci95"][1]})
        if progress:
            line = (f"iteration {iteration}: held-out reward {result['eval/reward']:.3f} "
                    f"(n={len(per_prompt)} prompts" + (f" × {k}" if k > 1 else "") +
                    f"), KL {result['eval/kl']:.2f}")
            if "eval/reward_gain" in result:
                line += (f", gain over iteration 0 {result['eval/reward_gain']:+.3f} [95% "
                         f"{result['eval/reward_gain_ci95_lo']:+.3f}, {result['eval/reward_gain_ci95_hi']:+.3f}]")
            tqdm.write(line)
        return result

    bar = tqdm(total=config.iterations, initial=start_iter, desc="ppo", unit="it",
               disable=not progress, dynamic_ncols=True)
    record: dict[str, Any] = {}
    if start_iter == 0 and eval_ids and config.eval_every:
        metrics_log.write({"iteration": 0, **evaluate(0)})

    for iteration in range(start_iter + 1, config.iterations + 1):
        # == 1. rollout ===============================================================
        t0 = t_iteration = time.perf_counter()
        idx = _prompt_indices(len(prompt_ids), config.rollout_batch_size, iteration, config.seed)
        batch_prompts = [prompt_ids[i] for i in idx]
        batch_messages = [messages[i] for i in idx]
        policy.eval()
        push_s = engine.push_weights(policy_model)
        responses = engine.generate(policy_model, batch_prompts, max_new_tokens=config.max_new_tokens,
                                    temperature=config.temperature, seed=config.seed,
                                    iteration=iteration, batch_size=config.rollout_batch_size)
        batch = Batch(batch_prompts, responses, tokenizer.pad_token_id, eos_ids, device)
        t_rollout = time.perf_counter() - t0

        # == 2. score ================================================================
        t0 = time.perf_counter()
        n = len(batch_prompts)
        logp, ref_logp, entropy, values = score_batch(batch, with_values=True)
        mask = batch.mask.float()
        texts = _decode(tokenizer, batch)
        with accelerator.autocast():
            raw = torch.tensor(reward(batch_messages, texts), dtype=torch.float32, device=device)
        scores = L.normalize_scores(raw, rm_mean, rm_std)
        if config.missing_eos_penalty is not None:
            scores = L.penalize_missing_eos(scores, batch.has_eos, config.missing_eos_penalty)
        if config.whiten_rewards:
            scores = L.whiten_scores(scores)
        engine_gap = None
        if engine.last_logprobs is not None:
            # the sampler (vLLM, or the transformers copy) drew these tokens with the weights
            # pushed at this iteration's start: its log-probs must match our rescoring, up to
            # rounding (precision and kernels)
            eng = torch.zeros_like(logp)
            for i, row in enumerate(engine.last_logprobs):
                k = min(len(row), eng.shape[1])
                eng[i, :k] = torch.tensor(row[:k], dtype=eng.dtype)
            engine_gap = L.masked_mean((eng - logp).abs(), batch.mask).item()
        t_score = time.perf_counter() - t0

        # == 3. advantages ===========================================================
        t0 = time.perf_counter()
        kl = L.kl_estimate(logp, ref_logp, config.kl_estimator) * mask
        rewards = L.shape_rewards(scores, kl, mask, kl_ctl.value)
        advantages, returns = L.gae(rewards, values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = L.masked_whiten(advantages, mask) * mask

        # == 4. update ===============================================================
        policy.train(), value_model.train()  # dropout is 0 in every config, so same function
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "clipfrac", "approx_kl", "vf_loss", "vf_clipfrac")}
        shuffle = torch.Generator().manual_seed(_sampling_seed(config.seed, iteration))
        for _ in range(config.ppo_epochs):
            order = torch.randperm(n, generator=shuffle)
            for mb in range(0, n, config.minibatch_size):
                # within a minibatch, micro-batches only split the work of one step: group
                # rows of similar length so that less padding is computed
                mb_order = batch.by_length(order[mb:mb + config.minibatch_size])
                for mi in range(0, len(mb_order), micro):
                    rows_idx = mb_order[mi:mi + micro].to(device)
                    rows, P, r = batch.rows(rows_idx)
                    m = mask[rows_idx, :r]
                    with accelerator.accumulate(policy, value_model):
                        with accelerator.autocast():
                            new_logp, _ = response_logprobs(policy, rows, P, config.temperature)
                            new_values = response_values(value_model, rows, P)
                        pg_loss, clipfrac, approx_kl = L.policy_loss(
                            new_logp, logp[rows_idx, :r], advantages[rows_idx, :r], m, config.clip_range)
                        vf_loss, vf_clipfrac = L.value_loss(
                            new_values, values[rows_idx, :r], returns[rows_idx, :r], m,
                            config.value_clip_range)
                        accelerator.backward(pg_loss + vf_loss)  # disjoint parameters: two separate losses
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                            accelerator.clip_grad_norm_(value_model.parameters(), config.max_grad_norm)
                        opt_p.step(), opt_v.step(), sch_p.step(), sch_v.step()
                        opt_p.zero_grad(), opt_v.zero_grad()
                    for k, v in (("pg_loss", pg_loss), ("clipfrac", clipfrac), ("approx_kl", approx_kl),
                                 ("vf_loss", vf_loss), ("vf_clipfrac", vf_clipfrac)):
                        stats[k].append(v.item())
                    for k in ("pg_loss", "vf_loss"):  # the training core's NaN guard
                        check_finite(k, stats[k][-1], step=iteration,
                                     last_checkpoint=ckpts[-1] if ckpts else None)
        t_update = time.perf_counter() - t0

        # == 5. log, β, checkpoint, held-out eval ====================================
        mean_kl = kl.sum(1).mean().item()
        beta = kl_ctl.value
        kl_ctl.update(mean_kl, n)
        record = {
            "iteration": iteration,
            "reward/raw": raw.mean().item(),
            "reward/normalized": scores.mean().item(),
            "reward/total": (rewards.sum(1)).mean().item(),
            "kl": mean_kl, "kl_coef": beta,
            "entropy": L.masked_mean(entropy, mask).item(),
            "policy/loss": _mean(stats["pg_loss"]), "policy/clipfrac": _mean(stats["clipfrac"]),
            "policy/approx_kl": _mean(stats["approx_kl"]),
            "value/loss": _mean(stats["vf_loss"]), "value/clipfrac": _mean(stats["vf_clipfrac"]),
            "value/explained_variance": L.explained_variance(values, returns, mask).item(),
            "response/length": mask.sum(1).mean().item(),
            "response/eos_rate": batch.has_eos.float().mean().item(),
            "time/rollout": t_rollout, "time/push_weights": push_s, "time/score": t_score,
            "time/update": t_update, "lr": sch_p.get_last_lr()[0],
        }
        if engine_gap is not None:
            record["rollout/engine_logprob_gap"] = engine_gap
        record["time/iteration"] = time.perf_counter() - t_iteration
        if eval_ids and config.eval_every and iteration % config.eval_every == 0:
            record.update(evaluate(iteration))
        metrics_log.write(record)
        bar.set_postfix({"reward": f"{record['reward/raw']:.3f}", "kl": f"{mean_kl:.3f}",
                         "β": f"{beta:.3g}"}, refresh=False)
        bar.update(1)
        if iteration % config.save_every == 0 or iteration == config.iterations:
            ckpts = _save_checkpoint(accelerator, out, iteration, kl_ctl, config)

    bar.close()
    metrics_log.close()
    engine.close()
    final = _save_final(accelerator, policy, value_model, tokenizer, out, config.merge_lora)
    summary = {"output_dir": str(out), "iterations": config.iterations, "last": record,
               "rollout_backend": backend, "rollout_dtype": str(engine.dtype or policy_model.dtype),
               "device": str(accelerator.device),
               "attn_implementation": policy_model.config._attn_implementation,
               "mixed_precision": accelerator.mixed_precision, **final}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _default_backend(device) -> str:
    from cai.train.ppo_rollout import default_rollout_backend

    return default_rollout_backend(device.type)


def _rollout_dtype(requested: str, precision: str) -> torch.dtype | None:
    """The dtype rollouts sample in (the transformers copy's, the vLLM engine's); None: the
    policy's own."""
    if requested == "auto":
        requested = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "policy")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "policy": None}[requested]


def _sampling_seed(seed: int, iteration: int) -> int:
    from cai.train.ppo_rollout import _sampling_seed as s

    return s(seed, iteration)


def _prompt_indices(n_prompts: int, batch: int, iteration: int, seed: int) -> list[int]:
    """The prompts of iteration k (1-based): positions (k-1)·B .. k·B-1 of an endless
    sequence of shuffled passes over the prompts (pass e shuffled with seed (seed, e))."""
    start = (iteration - 1) * batch
    out = []
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        out.append(order[offset])
    return out


def _decode(tokenizer, batch: Batch) -> list[str]:
    ids = batch.input_ids[:, batch.P:]
    return [tokenizer.decode(row[m.bool()], skip_special_tokens=True).strip()
            for row, m in zip(ids.cpu(), batch.mask.cpu())]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _generation_eos(path: str):
    f = Path(path) / "generation_config.json"
    return json.loads(f.read_text()).get("eos_token_id") if f.is_file() else None


def _save_checkpoint(accelerator, out: Path, iteration: int, kl_ctl, config: PPOConfig) -> list[Path]:
    """accelerate's save_state (models, optimisers, schedulers, RNG) + our small JSON, last."""
    path = out / "checkpoints" / f"iter-{iteration:06d}"
    if path.exists():
        shutil.rmtree(path)
    accelerator.save_state(str(path), safe_serialization=True)
    atomic_write_json(path / STATE_FILE, {
        "iteration": iteration, "kl_controller": kl_ctl.state_dict(),
        "prompt_position": iteration * config.rollout_batch_size,
        "config_sha256": hashlib.sha256(json.dumps(config.fingerprint_fields(), sort_keys=True)
                                        .encode()).hexdigest()})
    ckpts = _checkpoints(out)
    for old in ckpts[:-config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpts[-config.keep_checkpoints:]


def _save_final(accelerator, policy, value_model, tokenizer, out: Path, merge_lora: bool = True) -> dict:
    """The trained policy and value model as HF directories: full models (a LoRA adapter
    merged in, as SFT saves by default, so sample/eval/vLLM load them like any model), or
    the adapters alone with merge_lora=False."""
    from cai.train.modeling import save_hf_model

    paths = {}
    for name, model in (("policy", policy), ("value_model", value_model)):
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        save_hf_model(accelerator, model, tokenizer, target, merge_lora=merge_lora)
        paths[name] = str(target)
    return paths
