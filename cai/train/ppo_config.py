"""PPO's config: the shared training and engine vocabulary (`TrainConfig`, `EngineConfig`)
plus PPO's own fields, with PPO's defaults where they differ from the shared ones."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cai.config import EngineConfig, TrainConfig
from cai.train.config import changed_fields

# The engine's share of GPU memory when backend_options does not say (vLLM claims it at its
# start; the KV cache itself is sized for the rollout batch, cai.train.ppo_rollout)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.1

# Where the run lives, how often it checkpoints, how it is watched and how much memory the
# engine may claim do not change its curve: a resume may change them; any other change is
# refused by field name.
RUN_ONLY_FIELDS = frozenset({"out", "resume", "progress", "save_every", "keep_checkpoints",
                             "backend_options", "ray"})

# keys PPO alone used to have, refused with the key that replaced them
PPO_RENAMED = {"lora": "`lora` is now `lora_r` (a LoRA rank, e.g. `lora_r: 16`; leave it out "
                       "to train all weights)"}


class PPOConfig(TrainConfig, EngineConfig):
    """Everything a PPO run depends on; saved beside the run and compared on resume."""

    # -- overrides of the shared fields: PPO's defaults and narrower choices --------------
    model: str = Field(description="causal LM to start from (SFT model dir, registry name, "
                                   "hub id)")
    backend: Literal["transformers", "vllm"] | None = Field(
        None, description="rollout engine: transformers | vllm (default: vllm where installed)")
    max_tokens: int = Field(64, ge=1, description="tokens per sampled response")
    lr: float = Field(1e-5, gt=0.0, description="policy learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "constant"
    save_every: int | None = Field(1, ge=1, description="iterations between checkpoints "
                                                        "(None: only the last)")
    keep_checkpoints: int = Field(2, ge=1)
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator")

    # -- what PPO trains against, and on -------------------------------------------------
    reward: str = Field(description="reward model dir (`cai train rm` or any seq-classification "
                                    "model) or FILE.py:FUNCTION / MODULE:FUNCTION")
    value_model: str | None = Field(None, description="init of the value model; default: the "
                                    "reward model, or the policy when the reward is a function")
    prompts: str = Field(description="prompt file (JSONL/CSV/... with `prompt` or `messages`)")
    max_prompt_tokens: int = Field(256, ge=1)
    eval_prompts: str | None = Field(None, description="held-out prompt file")
    eval_size: int = Field(0, ge=0, description="without eval_prompts: hold out the last N prompts")
    eval_every: int = Field(0, ge=0, description="evaluate every N iterations (0: never)")
    eval_temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    eval_samples: int = Field(1, ge=1, description="responses per held-out prompt, each with its "
                              "own fixed seed (needs eval_temperature > 0 when above 1); the "
                              "prompt's mean reward is its score")

    # -- rollouts --------------------------------------------------------------------------
    iterations: int = Field(20, ge=1)
    rollout_batch_size: int = Field(16, ge=2, description="prompts (= responses) per iteration")
    temperature: float = Field(0.7, gt=0.0)
    vllm_lora_push: Literal["merge", "adapter"] = "merge"
    rollout_dtype: Literal["auto", "policy", "bf16", "fp16"] = Field(
        "auto", description="the dtype rollouts sample in: the policy's weights' own (policy) or "
                            "bf16/fp16 (transformers: a copy of the policy, LoRA merged, "
                            "refreshed each iteration; vllm: the engine's dtype); auto: the "
                            "mixed-precision dtype when there is one")

    # -- the update ------------------------------------------------------------------------
    ppo_epochs: int = Field(4, ge=1)
    minibatch_size: int = Field(8, ge=1)
    micro_batch_size: int = Field(4, ge=1, description="per forward pass; minibatch/micro = "
                                                       "grad accumulation")
    forward_batch_size: int = Field(16, ge=1, description="rows per no-grad forward pass when "
                                    "scoring (policy, reference, value and reward model); "
                                    "TRL's local_rollout_forward_batch_size")
    value_lr: float | None = Field(None, gt=0.0, description="value model learning rate "
                                                             "(default: lr)")
    clip_range: float = Field(0.2, gt=0.0)
    value_clip_range: float = Field(0.2, gt=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    whiten_advantages: bool = True

    # -- rewards and the KL penalty ------------------------------------------------------
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_coef: float = Field(0.05, ge=0.0, description="β (initial value when adaptive)")
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0.0)
    kl_horizon: int = Field(10000, ge=1)
    missing_eos_penalty: float | None = Field(1.0, description="subtracted from the normalised "
                                              "score of a response without EOS (None: off)")
    whiten_rewards: bool = False

    value_lora: bool | None = Field(None, description="LoRA on the value model too (default: "
                                                      "as the policy, i.e. when lora_r is set)")
    cpu: bool = Field(False, description="train on CPU even when CUDA is there")


    @model_validator(mode="before")
    @classmethod
    def _refuse_ppo_old_spellings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in data if k in PPO_RENAMED]
            if old:
                raise ValueError("; ".join(PPO_RENAMED[k] for k in old))
        return data

    @model_validator(mode="after")
    def _check(self) -> "PPOConfig":
        if self.eval_samples > 1 and self.eval_temperature == 0:
            raise ValueError(f"eval_samples {self.eval_samples} needs eval_temperature > 0: "
                             "greedy answers are all the same")
        # PPO's ratios compare two forward passes over the same tokens: dropout would make
        # them disagree, so every dropout (the models' and LoRA's) is 0
        if self.lora_dropout:
            raise ValueError("lora_dropout must be 0 for PPO (the policy ratio compares two "
                             "forward passes of the same tokens)")
        unknown = set(self.backend_options) - {"gpu_memory_utilization"}
        if unknown:
            raise ValueError(f"backend_options: PPO's rollout engine takes only "
                             f"gpu_memory_utilization, not {', '.join(sorted(unknown))}")
        share = self.gpu_memory_utilization
        if not (isinstance(share, (int, float)) and 0 < share <= 0.95):
            raise ValueError(f"backend_options.gpu_memory_utilization must be in (0, 0.95], "
                             f"not {share!r}")
        if self.minibatch_size % self.micro_batch_size or \
                self.rollout_batch_size % self.minibatch_size:
            raise ValueError("rollout_batch_size must be a multiple of minibatch_size, "
                             "and minibatch_size a multiple of micro_batch_size")
        return self

    @property
    def gpu_memory_utilization(self) -> float:
        return self.backend_options.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION)

    @property
    def lora(self) -> bool:
        return self.lora_r is not None

    @property
    def value_lora_on(self) -> bool:
        return self.lora if self.value_lora is None else self.value_lora


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields whose value changed, beyond RUN_ONLY_FIELDS. A field the saved config lacks
    (added to PPOConfig after the run started) ran at its default."""
    return [key for key, _, _ in changed_fields(saved, current, PPOConfig.model_fields,
                                                 RUN_ONLY_FIELDS)]
