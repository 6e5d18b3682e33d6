"""A pipeline file: `run:` settings, optional `prompts:` sets, and one section per stage.

```yaml
run: {name: demo, model: smollm2-135m-instruct, backend: vllm, seed: 0, rounds: 1}
prompts:                 # named prompt sets: rows taken from several files, in order
  train:
    - {file: pipelines/prompts/red_team_train.jsonl, limit: 64}
    - {file: pipelines/prompts/helpful_train.jsonl, limit: 48}
generate: {prompts: train, constitution: harmless, ...}
sft: {...}
```

A section left out is a stage left out. Each section is validated by that stage's own
config class (see `cai.pipeline.stages`); the fields the runner fills in (output
directories, upstream paths) must not be written. Every problem is reported with its
file, line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.config import RayConfig
from cai.constitution.errors import LocatedError, did_you_mean
from cai.constitution.yamlnodes import Node, Pos, parse, plain

MAX_ROUNDS = 10


class PipelineError(ValueError):
    """A pipeline that cannot run; `.errors` holds every located problem found."""

    def __init__(self, errors: list[LocatedError]):
        self.errors = sorted(set(errors))
        super().__init__("\n".join(str(e) for e in self.errors))


class RunSettings(BaseModel):
    """The `run:` section: what every stage shares."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="the run's name; outputs go to outputs/<name> by default")
    out: str | None = Field(None, description="run directory (default outputs/<name>)")
    model: str | None = Field(None, description="base model: registry name, directory or hub id "
                                                "(default: the embedded model)")
    backend: str | None = Field(None, description="vllm | transformers | openai, for every "
                                                  "stage that runs an inference engine")
    backend_options: dict[str, Any] = Field(default_factory=dict,
                                            description="passed to load_backend for every engine")
    ray: RayConfig | None = Field(None, description="run every engine stage on Ray (address, "
                                                    "replicas, gpus_per_replica, "
                                                    "cpus_per_replica); a stage may override")
    seed: int = 0
    swap_weights: bool = Field(True, description="vLLM models of one architecture and "
                               "tokenizer share one engine, their weights loaded in place "
                               "(false: one engine per model)")
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS, description="sample -> label -> rm -> ppo rounds")

    def out_dir(self) -> Path:
        return Path(self.out or f"outputs/{self.name}")


class PromptSource(BaseModel):
    """Rows of one prompt file: `skip` the first rows, then take `limit` (all when unset)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    skip: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)


@dataclass
class Pipeline:
    path: Path
    run: RunSettings
    prompt_sets: dict[str, list[PromptSource]]
    sections: dict[str, dict[str, Any]]  # stage name -> its plain section, in file order
    nodes: dict[str, Node] = field(default_factory=dict)  # stage name -> its section's node

    def locate(self, stage: str, loc: tuple[Any, ...] = ()) -> Pos:
        """Where `stage`'s section (or a field inside it) is written."""
        node = self.nodes.get(stage)
        if node is None:
            return Pos(str(self.path), 1, 1)
        return _walk(node, loc)


def _walk(node: Node, loc: tuple[Any, ...]) -> Pos:
    pos = node.pos
    for part in loc:
        if node.is_map and isinstance(part, str) and part in node.value:
            node = node.value[part]
            pos = node.key_pos or node.pos
        elif node.is_seq and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            pos = node.pos
        else:
            break
    return pos


def validation_errors(e: ValidationError, where: Node, prefix: str) -> list[LocatedError]:
    """Pydantic errors placed at the key they concern (or the section, for a missing one)."""
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        pos = _walk(where, loc)
        name = ".".join(map(str, (prefix, *loc)))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(pos.error(f"{name}: {msg}"))
    return out


def load_pipeline(path: str | Path, stage_names: list[str]) -> Pipeline:
    """Read and check the file's layout and its `run:`/`prompts:` sections. Stage sections
    are checked against their config classes later, when the runner builds them."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PipelineError([LocatedError(str(path), 1, 1, f"cannot read pipeline: {e.strerror}")])
    root, errors = parse(text, str(path))
    if root is None or errors:
        raise PipelineError(errors or [LocatedError(str(path), 1, 1, "the file is empty")])
    if not root.is_map:
        raise PipelineError([root.pos.error("a pipeline is a mapping: run:, prompts: and one "
                                            "section per stage")])
    known = ["run", "prompts", *stage_names]
    sections: dict[str, dict[str, Any]] = {}
    nodes: dict[str, Node] = {}
    for key, node in root.value.items():
        if key.startswith("x-"):  # free space for YAML anchors
            continue
        if key not in known:
            errors.append(node.key_pos.error(
                f"unknown section {key!r}{did_you_mean(key, known)}; sections: {', '.join(known)}"))
            continue
        if key in stage_names:
            if not node.is_map:
                errors.append(node.pos.error(f"{key}: must be a mapping of that stage's settings "
                                             "(write `{}` for all defaults)"))
                continue
            sections[key] = plain(node)
            nodes[key] = node
    run_node = root.value.get("run")
    run = None
    if run_node is None:
        errors.append(root.pos.error("missing `run:` section (at least `run: {name: ...}`)"))
    else:
        try:
            run = RunSettings.model_validate(plain(run_node) if run_node.is_map else None)
        except ValidationError as e:
            errors += validation_errors(e, run_node, "run")
    prompt_sets: dict[str, list[PromptSource]] = {}
    sets_node = root.value.get("prompts")
    if sets_node is not None:
        if not sets_node.is_map:
            errors.append(sets_node.pos.error("prompts: must map set names to lists of "
                                              "{file, skip, limit}"))
        else:
            for name, node in sets_node.value.items():
                if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
                    errors.append(node.key_pos.error(f"prompts.{name}: a set name is letters, "
                                                     "digits, '.', '_' or '-'"))
                    continue
                items = node.value if node.is_seq else [node]
                sources = []
                for i, item in enumerate(items):
                    try:
                        sources.append(PromptSource.model_validate(plain(item)))
                    except ValidationError as e:
                        errors += validation_errors(e, item, f"prompts.{name}[{i}]")
                        continue
                    if not Path(sources[-1].file).exists():
                        errors.append(item.pos.error(f"prompts.{name}[{i}].file: "
                                                     f"{sources[-1].file} does not exist"))
                prompt_sets[name] = sources
    if not sections and not errors:
        errors.append(root.pos.error(f"no stage sections; write at least one of "
                                     f"{', '.join(stage_names)}"))
    if errors:
        raise PipelineError(errors)
    assert run is not None
    return Pipeline(path=path, run=run, prompt_sets=prompt_sets, sections=sections, nodes=nodes)
