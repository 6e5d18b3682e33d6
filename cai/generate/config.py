"""What a generation run is: `GenerateConfig`, from CLI flags or a pipeline YAML's
`generate:` section (flags override the file).

Two hashes matter:
  - `fingerprint(config, constitution)`: everything that changes what the model writes
    (model, backend, rounds, samples, sampling, seed, few-shot) except the constitution's
    text. Record ids include it, and a run directory refuses a different one. The text is
    checked per record instead: each stores the hashes of the principles it used, and an
    edit remakes only the records it touched (`cai.generate.incremental`).
  - inputs (prompts path, fields, `max_prompt_tokens`) are checked too, so one run
    directory never mixes prompt sets. `limit` and `chunk_size` may change between
    invocations: a run directory accumulates records, and `--limit N` means "make sure
    the first N prompts are done".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends import SamplingConfig, default_backend
from cai.config import ConfigError, EngineConfig, load_section
from cai.constitution import Constitution
from cai.models import DEFAULT_MODEL
from cai.schema import stable_id

MAX_ROUNDS = 4
# Bump when the pipeline's prompting or record layout changes what a run produces.
# Options added later enter the fingerprint only when they change what a run does (see
# routing_and_check_fields), so runs with the earlier behaviour keep their record ids.
# 4: record ids leave out the constitution's text (per-record principle hashes instead),
# and principle draws are an exponential race (cai.constitution.sampling).
PIPELINE_VERSION = 4
STAGES = ("response", "critique", "revision")


class StageSampling(BaseModel):
    """Per-stage overrides of the shared sampling parameters (None: use the shared one)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)


class GenerateConfig(EngineConfig):
    """A generation run; `out`, `model`, `backend`, `backend_options`, `prompt_field`,
    `messages_field`, `max_tokens` (per generated turn) and `seed` (sampling and principle
    draws) are EngineConfig's."""

    # inputs
    prompts: str = Field(description="JSONL/CSV/Parquet/txt file or a datasets directory")
    id_field: str = Field("id", description="field holding a prompt's id")
    limit: int | None = Field(None, ge=1, description="first N accepted prompts")
    max_prompt_tokens: int | None = Field(None, ge=1, description="longer prompts are rejected")
    # what to run
    constitution: str = Field("harmless", description="shipped name or YAML path")
    rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS,
                               description="critique-revision rounds (default: the "
                                           "constitution's, at most 4)")
    samples: int = Field(1, ge=1, le=16, description="responses per prompt (records per prompt)")
    few_shot: bool = Field(True, description="show the constitution's worked examples")
    principle_tags_field: str | None = Field(
        None, description="draw each record's principles only among those sharing a tag with "
                          "this field of its prompt row (text or a list); all principles when "
                          "none does. Default: any principle, as in the CAI paper")
    route: Literal["auto", "tags", "random"] = Field(
        "auto", description="how each record's principles are chosen. auto: from the prompt's "
                            "`principle_tags_field` when it names a tag, else by scoring the "
                            "prompt against each principle's tags with the loaded model (benign "
                            "prompts get the constitution's `benign`-tagged principles); tags: "
                            "the field only (all principles when it names no tag); random: any "
                            "principle, as in the CAI paper")
    route_threshold: float = Field(
        2.0, description="auto routing: a prompt whose best principle scores below this "
                         "(log-prob gain of the tag words over an empty prompt, nats) is benign")
    revise_benign: bool = Field(
        False, description="route auto: critique and revise answers to prompts routed benign "
                           "too (under the constitution's benign-tagged principles). Off: they "
                           "are kept as answered (ok:unchanged: an SFT row, no pair), as the CAI "
                           "paper revises red-team answers only and trains on helpful answers "
                           "unrevised")
    unchanged_threshold: float | None = Field(
        0.5, ge=0.0, le=1.0,
        description="before each critique, the model judges whether the answer violates the "
                    "drawn principle (both answer orders); at P(no change needed) >= this the "
                    "answer is kept (status ok:unchanged: an SFT row, no preference pair). "
                    "off: always revise")
    min_relevance: float | None = Field(
        0.0, description="a revision must still answer its prompt: the mean per-token log-prob "
                         "gain of the revision given its own prompt over a shuffled one (PMI, "
                         "nats) must exceed this, and it must not talk about 'the response'; "
                         "else degenerate:unresponsive. off: no check")
    revision_candidates: int = Field(1, ge=1, le=16,
                                     description="revisions sampled per request; the first that "
                                                 "passes the quality checks is kept")
    # sampling, shared by all stages unless a stage overrides it
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature, 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    response: StageSampling = Field(default_factory=StageSampling)
    critique: StageSampling = Field(default_factory=StageSampling)
    revision: StageSampling = Field(default_factory=StageSampling)
    chunk_size: int = Field(256, ge=1, description="records per chunk: each stage is one "
                                                   "backend call per chunk; one shard per chunk")

    @field_validator("unchanged_threshold", "min_relevance", mode="before")
    @classmethod
    def _off(cls, v: object) -> object:
        # "off" from a flag or YAML turns the step off (None is "not given" for overrides)
        return None if isinstance(v, str) and v.strip().lower() in ("off", "none", "null") else v

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> "GenerateConfig":
        if self.samples > 1 and self.sampling("response").temperature == 0.0:
            raise ValueError("samples > 1 needs a response temperature > 0 (greedy decoding "
                             "gives the same answer every time)")
        if self.revision_candidates > 1 and self.sampling("revision").temperature == 0.0:
            raise ValueError("revision_candidates > 1 needs a revision temperature > 0 (greedy "
                             "decoding gives the same revision every time)")
        return self

    def rounds_for(self, constitution: Constitution) -> int:
        return self.rounds or min(constitution.defaults.revision_rounds, MAX_ROUNDS)

    def sampling(self, stage: str, *, round_index: int = 0) -> SamplingConfig:
        """The SamplingConfig of one stage call. Each (stage, round) gets its own seed so
        a critique does not replay the random stream of the response."""
        o: StageSampling = getattr(self, stage)
        return SamplingConfig(
            n={"response": self.samples, "revision": self.revision_candidates}.get(stage, 1),
            temperature=self.temperature if o.temperature is None else o.temperature,
            top_p=self.top_p if o.top_p is None else o.top_p,
            max_tokens=self.max_tokens if o.max_tokens is None else o.max_tokens,
            seed=self.seed + 1000 * STAGES.index(stage) + round_index,
        )

    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

    def backend_name(self) -> str:
        return self.backend or default_backend()


def fingerprint_fields(config: GenerateConfig, constitution: Constitution, *,
                       model: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """Everything that changes what the model writes; readable, stored in the manifest.
    `model`/`backend` name an engine the caller built itself (else the config's)."""
    rounds = config.rounds_for(constitution)
    return {
        "pipeline_version": PIPELINE_VERSION,
        "model": model or config.model_name(),
        "backend": backend or config.backend_name(),
        "dtype": config.backend_options.get("dtype"),
        "constitution": constitution.name,
        "rounds": rounds,
        "samples": config.samples,
        "few_shot": config.few_shot,
        "seed": config.seed,
        "sampling": {s: config.sampling(s).model_dump(exclude={"seed"}) for s in STAGES},
        # only when set, so runs without it keep their record ids
        **({"principle_tags_field": config.principle_tags_field}
           if config.principle_tags_field else {}),
        **routing_and_check_fields(config),
    }


def routing_and_check_fields(config: GenerateConfig) -> dict[str, Any]:
    """The routing, no-change and relevance options, each only when it changes what a run
    does relative to the pipeline before them (route "tags" when principle_tags_field is
    set, else "random"; every answer revised; no relevance check). The defaults change it,
    so a default run's ids differ from before, while a run with the earlier settings
    (--route random, no verdict, no check) keeps its ids and can resume an old directory."""
    out: dict[str, Any] = {}
    route = effective_route(config)
    if route != ("tags" if config.principle_tags_field else "random"):
        out["route"] = route
    if route == "auto":
        out["route_threshold"] = config.route_threshold
        if not config.revise_benign:  # before it existed, benign answers were revised
            out["revise_benign"] = False
    if config.unchanged_threshold is not None:
        out["unchanged_threshold"] = config.unchanged_threshold
    if config.min_relevance is not None:
        out["min_relevance"] = config.min_relevance
    return out


def effective_route(config: GenerateConfig) -> str:
    """The route a run uses: "tags" needs principle_tags_field (without it, nothing to read)."""
    if config.route == "tags" and not config.principle_tags_field:
        return "random"
    return config.route


def apply_recommended(config: GenerateConfig, recommended: dict[str, Any]
                      ) -> tuple[GenerateConfig, dict[str, Any]]:
    """`config` with the model's recommended settings filled in for every field the user
    left unset (flags, YAML keys and constructor arguments count as set); returns it and
    the settings that were applied."""
    applied = {k: v for k, v in recommended.items()
               if k in GenerateConfig.model_fields and k not in config.model_fields_set}
    if not applied:
        return config, {}
    return GenerateConfig.model_validate({**config.model_dump(exclude_unset=True), **applied}), applied


def input_fields(config: GenerateConfig) -> dict[str, Any]:
    return {
        "prompts": str(Path(config.prompts).resolve()),
        # the key keeps its old name so existing run directories still match
        "field": config.prompt_field,
        "messages_field": config.messages_field,
        "id_field": config.id_field,
        "max_prompt_tokens": config.max_prompt_tokens,
    }


def fingerprint(fields: dict[str, Any]) -> str:
    return stable_id(fields)


def load_config(path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> GenerateConfig:
    """The `generate:` section of a pipeline YAML (or a file that is just that section),
    with `overrides` (CLI flags; None values ignored) on top."""
    return load_section(path, "generate", GenerateConfig, overrides, marker_key="prompts")
