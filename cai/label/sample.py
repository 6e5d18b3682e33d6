"""Candidate responses to label: n samples per prompt from the policy, in one batch.

Each output row is a `Candidates` (id, prompt messages, responses) that `cai label`
turns into every unordered pair of responses. The row also keeps the prompt's source id
and location, the model, the sampling settings and each response's finish reason, so
a truncated or empty sample can be traced (the labeler rejects empty or identical pairs).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.backends import Backend, SamplingConfig
from cai.constitution import Constitution
from cai.label.inputs import Candidates
from cai.prompting import response_messages
from cai.records import stable_id


class SampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(2, ge=2, description="responses per prompt")
    temperature: float = Field(1.0, ge=0.0, description="> 0, or the samples are identical")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)


def sample_candidates(backend: Backend, prompts: list[Any], config: SampleConfig,
                      constitution: Constitution | None = None) -> list[Candidates]:
    """`prompts`: `cai.generate.inputs.PromptItem`s. With a constitution, its system prompt
    (if any) is shown to the policy, as in generation; the stored prompt is the bare one."""
    if not prompts:
        return []
    convs = [response_messages(constitution, p.messages) if constitution else p.messages
             for p in prompts]
    outs = backend.generate(convs, config.sampling())
    settings = config.model_dump()
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
