"""Candidate responses to label: n samples per prompt from the policy, in one batch.

Each output row is a `Candidates` (id, prompt messages, responses) that `cai label`
turns into every unordered pair of responses. The row also keeps the prompt's source id
and location, the model, the sampling settings and each response's finish reason, so
a truncated or empty sample can be traced (the labeler rejects empty or identical pairs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from cai.backends import Backend, SamplingConfig
from cai.backends.context import prompt_budget
from cai.config import ConfigError, EngineConfig, load_section, progress_bar, say
from cai.constitution import Constitution, load_constitution
from cai.io import atomic_write_jsonl
from cai.label.inputs import Candidates
from cai.prompting import response_messages
from cai.schema import stable_id, write_rejects


class SampleConfig(BaseModel):
    """How candidates are sampled. These fields (and only these) go into each row's
    `sampling` and its id."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(2, ge=2, description="responses per prompt")
    # Greedy decoding would make the n samples identical, and identical pairs are not labeled.
    temperature: float = Field(1.0, gt=0.0, description="> 0, or the samples are identical")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    max_tokens: int = Field(256, ge=1, description="tokens per sampled response")
    seed: int = Field(0, description="sampling seed")

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SampleConfig.model_fields}

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)


class SampleRunConfig(SampleConfig, EngineConfig):
    """A sampling run: prompts in, a candidates JSONL (`out`, the input to `cai label
    --pairs`) out, with which policy (`model`)."""

    prompts: str = Field(description="prompts: .jsonl/.json/.csv/.parquet/.txt or a `datasets` "
                                     "directory")
    constitution: str | None = Field(None, description="show this constitution's system prompt "
                                                       "to the policy")
    max_prompt_tokens: int | None = Field(None, ge=1, description="reject longer prompts "
                                          "(default: the model's context minus max_tokens)")
    limit: int | None = Field(None, ge=1, description="first N usable prompts")
    rejects: str | None = Field(None, description="rejects JSONL (default OUT stem + "
                                                  ".rejects.jsonl)")

    def rejects_path(self) -> Path:
        out = Path(self.out)
        return Path(self.rejects) if self.rejects else out.with_name(out.stem + ".rejects.jsonl")


def load_sample_config(path: str | Path | None = None,
                       overrides: dict[str, Any] | None = None) -> SampleRunConfig:
    """The `sample:` section of a pipeline YAML, with `overrides` (flags) on top."""
    return load_section(path, "sample", SampleRunConfig, overrides, marker_key="prompts")


def sample_candidates(backend: Backend, prompts: list[Any], config: SampleConfig,
                      constitution: Constitution | None = None,
                      progress: bool = True) -> list[Candidates]:
    """`prompts`: `cai.prompts.PromptItem`s. With a constitution, its system prompt
    (if any) is shown to the policy, as in generation; the stored prompt is the bare one.
    Sent in about 20 engine calls of at least 32 prompts, with a progress bar on stderr."""
    if not prompts:
        return []
    convs = [response_messages(constitution, p.messages) if constitution else p.messages
             for p in prompts]
    from cai.label.labeler import _bar, _chunks

    outs = []
    with _bar(len(convs), "sample", "prompt", progress) as bar:
        for chunk in _chunks(convs, least=32):
            outs += backend.generate(chunk, config.sampling())
            bar.update(len(chunk))
    settings = config.settings()
    rows = []
    for p, gens in zip(prompts, outs):
        rows.append(Candidates(
            id=stable_id(p.key, settings, backend.model,
                         constitution.content_hash() if constitution else None),
            prompt=p.messages,
            responses=[g.text.strip() for g in gens],
            finish_reasons=[g.finish_reason for g in gens],
            source_id=p.source_id,
            location=p.location,
            model=backend.model,
            sampling=settings,
            system_prompt_from=constitution.name if constitution else None,
            metadata=p.metadata,
        ))
    return rows


def run_sample(config: SampleRunConfig, *, backend: Backend | None = None,
               log: Callable[[str], None] = say,
               progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """Sample `config.n` responses per usable prompt (one batch) into `config.out`; rejected
    prompts go to the rejects file. Returns the summary. Raises `ConstitutionError`,
    `ConfigError` (max_prompt_tokens without a tokenizer) or `DataError` (unreadable prompts)."""
    from cai.prompts import load_prompts

    c = load_constitution(config.constitution) if config.constitution else None
    rejects_file = config.rejects_path()
    owned = None
    if backend is None:
        from cai.cluster.backend import load_engine  # on Ray when config.ray is set

        backend = owned = load_engine(config)
    try:
        # a prompt that leaves no room for max_tokens would fail the whole batch
        max_prompt_tokens = config.max_prompt_tokens or prompt_budget(backend, config.max_tokens)
        if max_prompt_tokens is not None and backend.tokenizer is None:
            raise ConfigError(f"max_prompt_tokens: the {backend.name} backend has no tokenizer "
                              "to count prompt tokens with")
        items, rejected = load_prompts(
            config.prompts, field=config.prompt_field, messages_field=config.messages_field,
            limit=config.limit, max_prompt_tokens=max_prompt_tokens,
            count_tokens=backend.count_tokens)
        log(f"{len(items)} prompts x {config.n} samples"
            + (f"; {len(rejected)} rejected -> {rejects_file}" if rejected else ""))
        start = time.perf_counter()
        rows = sample_candidates(backend, items, config, c, progress=config.progress)
        elapsed = time.perf_counter() - start
    finally:
        if owned is not None:
            owned.close()
    atomic_write_jsonl(config.out, rows)
    write_rejects(rejected, rejects_file)
    cut = sum(fr == "length" for r in rows for fr in (r.model_extra or {}).get("finish_reasons", []))
    return {"out": config.out, "rows": len(rows), "rejected": len(rejected),
            "rejects_path": str(rejects_file), "truncated_samples": cut,
            "sample_seconds": round(elapsed, 2), "model": backend.model,
            "engine_precision": getattr(backend, "precision", None)}
