"""`run_pipeline`: run a pipeline's stages in order, skipping those already up to date.

    plan: one step per stage (per round for sample, label, rm, ppo), its config built from
          its section + run: settings + upstream outputs; every config error at once
    run:  for each step, compare its stage.json with the config hash and the input hashes
          (upstream steps' output hashes, the contents of the files it reads); run it when
          they differ, else skip it

Rerun rules: a step runs when it never finished, its config changed, an input changed
(an upstream step produced different outputs, or a prompt file changed), or one of its
files went missing. So a changed ppo section reruns ppo and, because ppo's outputs
change, eval. `from_` forces a step and everything after it to run; `only` forces just
the steps of that stage; the steps before (or around) them are used as they are and must
have finished.

Engines: stages that run on an inference engine get it as `backend=` (eval also as
`reference_backend=`). One engine per (backend, model, options) serves the whole run: it is
kept while a later step needs it and the memory the next step claims allows
(`cai.pipeline.engines.EnginePool`), and closed when no later step needs it; vLLM models of
one architecture and tokenizer share one engine, their weights swapped in place.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from cai.config import old_spellings, progress_bar, renamed_key_message, say
from cai.constitution.errors import LocatedError
from cai.io import atomic_open, iter_rows
from cai.pipeline.engines import EnginePool
from cai.pipeline.manifest import (hash_path, output_files, read_manifest,
                                   stale_reasons, write_manifest)
from cai.pipeline.spec import Pipeline, PipelineError, validation_errors
from cai.pipeline.stages import Stage, Wiring
from cai.schema import content_hash

Echo = Callable[[str], None]


@dataclass
class Step:
    key: str  # "generate", or "round2/sample" when there are several rounds
    stage: Stage
    round: int | None
    dir: Path
    config: BaseModel
    config_hash: str
    used: list[str]  # keys of the steps whose outputs feed this one

    def label(self) -> str:
        return self.key


@dataclass
class StepResult:
    key: str
    action: str  # "ran" | "skipped" | "not selected" | "failed"
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


class StageFailed(RuntimeError):
    def __init__(self, step: Step, error: BaseException):
        self.step, self.error = step, error
        super().__init__(f"stage {step.key} failed: {type(error).__name__}: {error}")


class SelectionError(ValueError):
    """--from/--only name no stage, or a step they need has not run."""


# --------------------------------------------------------------------------- plan


def _config_hash(stage: Stage, config: BaseModel) -> str:
    data = config.model_dump(mode="json")
    for name in stage.volatile:
        data.pop(name, None)
    return content_hash({"stage": stage.name, "config": data})


def materialise_prompt_sets(pipeline: Pipeline, echo: Echo) -> dict[str, Path]:
    """Write each `prompts:` set to <run>/prompts/<name>.jsonl (rows as they are in their
    files); unreadable rows are left out with a warning naming their location."""
    out = {}
    root = pipeline.run.out_dir() / "prompts"
    for name, sources in pipeline.prompt_sets.items():
        rows = []
        for src in sources:
            taken = 0
            for i, row in enumerate(iter_rows(src.file)):
                if i < src.skip:
                    continue
                if src.limit is not None and taken >= src.limit:
                    break
                taken += 1
                if row.ok:
                    rows.append(row.data)
                else:
                    echo(f"warning: prompts.{name}: left out {row.location}: {row.error}")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        path = root / f"{name}.jsonl"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            root.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as f:
                f.write(text)
        out[name] = path
    return out


def _build_config(pipeline: Pipeline, stage: Stage, wired: dict[str, Any],
                  prompt_sets: dict[str, Path]) -> tuple[BaseModel | None, list[LocatedError]]:
    section = dict(pipeline.sections[stage.name])
    cls = stage.config_class()
    errors = [pipeline.locate(stage.name, (k,)).error(
        f"{stage.name}.{k}: filled in by the runner from upstream stages; leave it out")
        for k in stage.owned if k in section]
    errors += [pipeline.locate(stage.name, (k,)).error(f"{stage.name}.{k}: {renamed_key_message(k)}")
               for k in old_spellings(cls, section)]
    if errors:
        return None, errors
    run = pipeline.run
    for name in stage.shared:
        value = getattr(run, name, None)
        if name not in cls.model_fields or value in (None, {}):
            continue
        if name == "backend_options":
            section[name] = {**value, **(section.get(name) or {})}
        elif name == "ray" and "workers" in cls.model_fields:
            # a training stage takes only the cluster's address, and only for its `workers:`
            if section.get("workers") and "ray" not in section and value.address:
                section["ray"] = value.address
        elif name == "ray":  # a stage's own `ray:` overrides key by key; `ray: null` opts out
            own = section.get(name, {})
            section[name] = None if own is None else \
                {**value.model_dump(exclude_unset=True), **own}
        else:
            section.setdefault(name, value)
    def as_path(value: Any) -> Any:
        return str(prompt_sets[value]) if isinstance(value, str) and value in prompt_sets else value

    for name in stage.prompt_fields:
        value = section.get(name)
        section[name] = [as_path(v) for v in value] if isinstance(value, list) else as_path(value)
        if value is None:
            del section[name]
    section.update(wired)
    try:
        return cls.model_validate(section), []
    except ValidationError as e:
        return None, validation_errors(e, pipeline.nodes[stage.name], stage.name)


def plan(pipeline: Pipeline, stages: list[Stage], echo: Echo = print) -> list[Step]:
    """Every step of the run, in order, with its config; PipelineError lists every problem."""
    present = [s for s in stages if s.name in pipeline.sections]
    names = frozenset(s.name for s in present)
    first = next((i for i, s in enumerate(present) if s.per_round), len(present))
    last = max((i for i, s in enumerate(present) if s.per_round), default=first - 1) + 1
    rounds = pipeline.run.rounds
    multi = rounds > 1 and first < last
    order: list[tuple[Stage, int | None]] = [(s, None) for s in present[:first]]
    for k in range(1, rounds + 1 if first < last else 1):
        order += [(s, k) for s in present[first:last]]
    order += [(s, None) for s in present[last:]]

    root = pipeline.run.out_dir()
    prompt_sets = materialise_prompt_sets(pipeline, echo)
    latest: dict[str, tuple[str, Path]] = {}
    previous: dict[str, tuple[str, Path]] = {}
    steps, errors = [], []
    for stage, k in order:
        key = f"round{k}/{stage.name}" if multi and k is not None else stage.name
        if stage.per_round and k is not None and k > 1 and stage is present[first]:
            previous = {s.name: latest[s.name] for s in present[first:last]}
        wiring = Wiring(run=pipeline.run, round=k, dir=root / key, present=names,
                        _dirs=dict(latest), _previous=dict(previous),
                        section=dict(pipeline.sections[stage.name]))
        try:
            wired = stage.wire(wiring)
        except ValueError as e:  # a stage that cannot be wired with what the pipeline has
            errors.append(pipeline.locate(stage.name).error(f"{stage.name}: {e}"))
            continue
        config, errs = _build_config(pipeline, stage, wired, prompt_sets)
        errors += errs
        latest[stage.name] = (key, root / key)
        if config is not None:
            steps.append(Step(key=key, stage=stage, round=k, dir=root / key, config=config,
                              config_hash=_config_hash(stage, config),
                              used=list(dict.fromkeys(wiring.used))))
    if errors:
        raise PipelineError(errors)
    return steps


def select(steps: list[Step], from_: str | None, only: str | None) -> set[str]:
    """Keys of the steps forced to run by --from / --only (a stage name, or roundK/stage)."""
    if from_ and only:
        raise SelectionError("give --from or --only, not both")
    name = from_ or only
    if not name:
        return set()
    hits = [i for i, s in enumerate(steps) if name in (s.key, s.stage.name)]
    if not hits:
        raise SelectionError(f"no stage {name!r} in this pipeline; its steps: "
                             + ", ".join(s.key for s in steps))
    if from_:
        return {s.key for s in steps[hits[0]:]}
    return {steps[i].key for i in hits}


# --------------------------------------------------------------------------- engines


def step_engines(step: Step) -> dict[str, tuple[str | None, str | None, dict[str, Any]]]:
    """The engines a step runs on, by the keyword its run function takes them as
    (`backend`, and eval's `reference_backend` and `judge_backend`)."""
    wanted = {"backend": step.stage.engine(step.config)} if step.stage.engine else {}
    if step.stage.more_engines is not None:
        wanted.update(step.stage.more_engines(step.config))
    return {k: v for k, v in wanted.items() if v is not None}


# --------------------------------------------------------------------------- run


def _strip_weight(entry: str) -> str:
    """`path:weight` (a data mix entry) -> path."""
    path, _, weight = entry.rpartition(":")
    return path if path and weight.replace(".", "", 1).isdigit() else entry


def _inputs(step: Step, manifests: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    inputs: dict[str, str | None] = {}
    for key in step.used:
        m = manifests.get(key)
        inputs[key] = m.get("output_hash") if m and m.get("status") == "done" else None
    for name in step.stage.file_fields:
        value = getattr(step.config, name, None)
        if isinstance(value, str) and value:
            inputs[f"file:{name}"] = hash_path(value)
        elif isinstance(value, list) and value:
            inputs[f"file:{name}"] = content_hash([hash_path(_strip_weight(v)) for v in value])
    constitution = getattr(step.config, "constitution", None)
    if isinstance(constitution, str):
        from cai.constitution import load_constitution

        inputs["constitution"] = load_constitution(constitution).content_hash()
    return inputs


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    return json.loads(json.dumps(obj, default=str))


def _only_grew(step: Step, old_config: Any) -> bool:
    """True when the saved config differs from this one only in the stage's `grows` fields,
    each now at least as large (None: no cap)."""
    if not step.stage.grows or not isinstance(old_config, dict):
        return False
    new = step.config.model_dump(mode="json")
    for name in step.stage.volatile:
        new.pop(name, None)
        old_config = {k: v for k, v in old_config.items() if k != name}
    for name in step.stage.grows:
        was, now = old_config.get(name), new.get(name)
        if now is not None and (was is None or now < was):
            return False
    rest = lambda c: {k: v for k, v in c.items() if k not in step.stage.grows}  # noqa: E731
    return rest(old_config) == rest(new)


def _clear_if_changed(step: Step, manifest: dict[str, Any], inputs: dict[str, str | None]) -> None:
    """Old outputs made with another config or other inputs are removed before the stage
    runs again (stages refuse to mix runs in one directory), as is a directory without a
    manifest (not made by the runner). An interrupted run with the same config and inputs
    keeps its directory, so a stage that resumes (generate) does; so does a run whose
    config only grew a `grows` field (generate's `limit`: it adds the missing records), or
    whose inputs changed only in `rebuilds` (generate's constitution: it remakes the records
    an edit touched; label's constitution and upstream pairs: it relabels the pairs that
    changed). A `rebuilds` entry is an input key or a stage name, which covers that
    stage's steps in every round ("round2/sample")."""
    if not step.dir.exists():
        return
    rebuilt = lambda k: k in step.stage.rebuilds or k.rpartition("/")[2] in step.stage.rebuilds  # noqa: E731
    same = lambda i: {k: v for k, v in (i or {}).items() if not rebuilt(k)}  # noqa: E731
    if manifest and same(manifest.get("inputs")) == same(inputs) and (
            manifest.get("config_hash") == step.config_hash
            or _only_grew(step, manifest.get("config"))):
        return
    shutil.rmtree(step.dir)


def run_step(step: Step, inputs: dict[str, str | None], engines: EnginePool,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one step, keeping its manifest current (running -> done | failed)."""
    started = time.time()
    manifest = {"stage": step.stage.name, "round": step.round, "status": "running",
                "config_hash": step.config_hash, "inputs": inputs,
                "config": step.config.model_dump(mode="json"),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}
    write_manifest(step.dir, manifest)
    if log:
        log(f"\n===== {step.key} =====\n")
    t0 = time.perf_counter()
    try:
        run = step.stage.run_function()
        engine_t0, starts = time.perf_counter(), engines.starts
        swaps, swap_s = engines.swaps, engines.swap_s
        shown = bool(getattr(step.config, "progress", True))
        given = {kw: engines.get(*want, show_progress=shown)
                 for kw, want in step_engines(step).items()}
        if given:
            manifest["engine_start_s"] = round(time.perf_counter() - engine_t0, 2)
            manifest["engine_starts"] = engines.starts - starts
        summary = run(step.config, **{"backend": None, **given}, log=say, progress=progress_bar)
        if given:  # weights swapped into a shared engine during the step (EnginePool)
            manifest["engine_swaps"] = engines.swaps - swaps
            manifest["engine_swap_s"] = round(engines.swap_s - swap_s, 2)
    except BaseException as e:
        manifest.update(status="failed", error=f"{type(e).__name__}: {e}",
                        seconds=round(time.perf_counter() - t0, 2))
        write_manifest(step.dir, manifest)
        if log:
            log(traceback.format_exc())
        raise StageFailed(step, e) from e
    files = output_files(step.dir)
    manifest.update(status="done", seconds=round(time.perf_counter() - t0, 2),
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    summary=_jsonable(summary), files=files,
                    output_hash=hash_path(step.dir) if files else content_hash(summary))
    write_manifest(step.dir, manifest)
    return manifest


def run_pipeline(pipeline: Pipeline, stages: list[Stage], *, from_: str | None = None,
                 only: str | None = None, echo: Echo = print,
                 log: Callable[[str], None] | None = None,
                 load_backend: Callable[..., Any] | None = None,
                 engines: EnginePool | None = None) -> list[StepResult]:
    """Run what is not up to date (and what --from/--only force); returns what happened to
    each step. Raises PipelineError, SelectionError or StageFailed. `engines` (else a new
    pool loading with `load_backend`) starts and keeps the steps' inference engines."""
    steps = plan(pipeline, stages, echo)
    forced = select(steps, from_, only)
    needed = {key for s in steps if s.key in forced for key in s.used}
    manifests = {s.key: read_manifest(s.dir) or {} for s in steps}
    engines = engines or EnginePool(echo, load_backend, swap_weights=pipeline.run.swap_weights)
    # the engines each step would run on (a step --from/--only leave out runs on none)
    needs = [[engines.key(*want) for want in step_engines(s).values()]
             if not forced or s.key in forced else [] for s in steps]
    results = []
    width = max(len(s.key) for s in steps)
    try:
        for n, step in enumerate(steps, 1):
            tag = f"[{n}/{len(steps)}] {step.key:<{width}}"
            inputs = _inputs(step, manifests)
            reasons = stale_reasons(manifests[step.key] or None, step.config_hash, inputs,
                                    step.dir)
            if forced and step.key not in forced:
                done = manifests[step.key].get("status") == "done"
                if not done and step.key in needed:
                    users = ", ".join(s.key for s in steps if s.key in forced and step.key in s.used)
                    raise SelectionError(f"{step.key} has not finished and {users} needs it; run "
                                         f"it first (cai run without --from/--only)")
                note = (" (not run yet)" if not done else
                        f" (stale: {'; '.join(reasons)}; used as it is)" if reasons else "")
                echo(f"{tag}  not selected{note}")
                results.append(StepResult(step.key, "not selected", reasons=reasons))
                continue
            if not reasons and step.key not in forced:
                m = manifests[step.key]
                echo(f"{tag}  up to date ({m.get('seconds', 0):.0f} s when it ran)")
                results.append(StepResult(step.key, "skipped"))
                continue
            why = "forced by --from/--only" if step.key in forced and not reasons else "; ".join(reasons)
            echo(f"{tag}  running: {why}")
            _clear_if_changed(step, manifests[step.key], inputs)
            engines.prepare(needs[n - 1], needs[n:], trains=not needs[n - 1])
            manifest = run_step(step, inputs, engines, log)
            manifests[step.key] = manifest
            brief = step.stage.brief(manifest["summary"] if isinstance(manifest["summary"], dict) else {})
            echo(f"{tag}  done in {manifest['seconds']:.0f} s" + (f": {brief}" if brief else ""))
            results.append(StepResult(step.key, "ran", manifest["seconds"], reasons))
    finally:
        engines.close()
    return results
