"""Transformers backend: batched, left-padded `generate`. For tests and machines without vLLM."""

from __future__ import annotations

from typing import Any

import torch

from cai.backends import finished
from cai.backends.base import Backend, Conversation, Generation, SamplingConfig
from cai.backends.text import cut_at_stop, encode, render_chat, scoring_ids


def hf_precision(requested: str, device: str, actual: str) -> str:
    """The model's dtype and why (the rule in `TransformersBackend.__init__`), for summaries.
    `requested` is "model" for a model object passed in as it is."""
    name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(actual, actual)
    if requested == "model":
        return f"{name}: the model object's own dtype"
    if requested != "auto":
        return f"{name}: dtype: {requested} in the backend options"
    return f"{name}: auto (bf16 on a CUDA GPU, fp32 elsewhere), on {device}"


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        model_obj: Any = None,
        tokenizer: Any = None,
        batch_size: int = 16,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model_obj is not None:  # an in-memory model (tests build tiny random ones)
            self.model = str(getattr(model_obj.config, "_name_or_path", "in-memory"))
            self.lm, self.tokenizer = model_obj, tokenizer
        else:
            from cai.models import resolve_model

            self.model = resolve_model(model)
            torch_dtype = (torch.bfloat16 if self.device == "cuda" else torch.float32) \
                if dtype == "auto" else getattr(torch, dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model, trust_remote_code=trust_remote_code)
            self.lm = AutoModelForCausalLM.from_pretrained(
                self.model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        self.lm.to(self.device).eval()
        self.precision = hf_precision(dtype if model_obj is None else "model",
                                      self.device, str(self.lm.dtype).removeprefix("torch."))
        self.tokenizer.padding_side = "left"  # decoder-only batches must be left-padded
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size

    def context_length(self) -> int | None:
        n = getattr(self.lm.config, "max_position_embeddings", None)
        return int(n) if n else None

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, conversation, add_generation_prompt)

    def _eos_ids(self) -> set[int]:
        eos = self.lm.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Generation]]:
        prompts = [self.render_chat(c) for c in conversations]
        eos_ids = self._eos_ids()
        results: list[list[Generation]] = []
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature == 0.0
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=sampling.max_tokens,
                do_sample=not greedy,
                num_return_sequences=sampling.n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(eos_ids),
            )
            if sampling.ignore_eos:
                kwargs["min_new_tokens"] = sampling.max_tokens
            if not greedy:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.stop:
                kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
            out = self.lm.generate(**batch, **kwargs)
            new = out[:, batch["input_ids"].shape[1]:].tolist()
            for i in range(len(chunk)):
                gens = []
                for seq in new[i * sampling.n:(i + 1) * sampling.n]:
                    gens.append(self._to_generation(seq, eos_ids, sampling))
                results.append(gens)
            finished.finished(len(chunk))  # a stage's bar moves per batch, not per call
        return results

    def _to_generation(self, seq: list[int], eos_ids: set[int], sampling: SamplingConfig) -> Generation:
        ids, hit_eos = [], False
        for t in seq:
            if t in eos_ids:
                hit_eos = True
                break
            ids.append(t)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, hit_stop = cut_at_stop(text, sampling.stop)
        if hit_stop:
            ids = encode(self.tokenizer, text)
        # Ending early without EOS means a stop string matched; transformers matches stop
        # strings across the prompt boundary, so the generated text alone may not show it.
        stopped = hit_eos or hit_stop or len(seq) < sampling.max_tokens
        return Generation(text=text, token_ids=ids, finish_reason="stop" if stopped else "length")

    @torch.no_grad()
    def continuation_logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        """One forward pass per prompt + continuation, except that a prompt whose every
        continuation is a single token (pointwise feedback's Yes/No) is run once and all
        its continuations are read from the logits after it: the same numbers, fewer passes."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations must have the same length")
        pairs = [scoring_ids(self.tokenizer, p, c) for p, c in zip(prompts, continuations)]
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, (p, _) in enumerate(pairs):
            by_prompt.setdefault(tuple(p), []).append(i)
        # jobs: (token ids to run, [(result index, first scored position, scored ids)])
        jobs: list[tuple[list[int], list[tuple[int, int, list[int]]]]] = []
        for p, idx in by_prompt.items():
            if p and all(len(pairs[i][1]) == 1 for i in idx):
                jobs.append((list(p), [(i, len(p), pairs[i][1]) for i in idx]))
            else:
                jobs += [(list(p) + pairs[i][1], [(i, len(p), pairs[i][1])]) for i in idx]
        scores = [0.0] * len(pairs)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start:start + self.batch_size]
            width = max(len(seq) for seq, _ in batch)
            # Right-pad here: positions stay aligned with token indices, and the mask hides padding.
            input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in batch],
                                     device=self.device)
            mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in batch],
                                device=self.device)
            logits = self.lm(input_ids=input_ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, (_, reads) in enumerate(batch):
                for i, first, c in reads:
                    # token at position t is predicted by the logits at t-1
                    pos = torch.arange(first, first + len(c), device=self.device)
                    tok = torch.tensor(c, dtype=torch.long, device=self.device)  # [] is float
                    scores[i] = float(logp[row, pos - 1, tok].sum())
        return scores

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        """log P(ids[t] | ids[:t]) for every token (None for the first), for the
        OpenAI-compatible `/v1/completions` echo+logprobs request (`cai serve`)."""
        logits = self.lm(input_ids=torch.tensor([ids], device=self.device)).logits.float()
        logp = torch.log_softmax(logits[0], dim=-1)
        return [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
