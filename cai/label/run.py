"""`run_label(config)`: pairs + constitution -> AI-feedback records, a rejects file and a
label-quality report.

    read pairs (and the human labels to evaluate against) -> keep the labels of an earlier
    run the inputs and the constitution still match (incremental.py) -> set aside pairs
    too long for the feedback model -> label the others (one scoring call) -> records
    oriented by the labeler's preference -> a store directory or JSONL, the rejects, the
    report. The output is written atomically after every CHECKPOINT_PAIRS pairs labeled
    and at the end: a killed run keeps the labels made so far, and its rerun labels the
    rest.

Mode and tau left unset (None) take the feedback model's defaults
(`cai.models.feedback_defaults`: a registry entry's own, chosen by measurement; pairwise,
the paper's mode, for any other model). `tau: fit` scores
the `eval_against` pairs first (they share the response cache) and fits tau on them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from cai.backends import Backend, load_backend
from cai.config import ConfigError, EngineConfig, load_section, progress_bar, say
from cai.constitution import feedback_hashes, load_constitution
from cai.io import DataError, atomic_write_json, atomic_write_jsonl
from cai.label.inputs import human_preferences, read_pairs
from cai.label.incremental import input_hash, label_settings, plan_relabel, read_old_labels
from cai.label.labeler import (LabelConfig, fitting_pairs, label_pairs, principles_for, run_info,
                              to_record)
from cai.label.pointwise import DEFAULT_TAU, ResponseScorer, fit_tau, reference_diffs
from cai.label.report import build_report
from cai.schema import Reject, write_rejects

Log = Callable[[str], None]


class LabelRunConfig(LabelConfig, EngineConfig):
    """A labeling run: what to label, where to write it, and with which feedback model. The
    labeling settings themselves (principles, seed, few-shot, CoT) are `LabelConfig`'s; `out`
    (a store directory, or a .jsonl file) and the feedback model (`model`, `backend`,
    `backend_options`) are EngineConfig's."""

    pairs: str = Field(description="pairs to label: a preference store / .parquet / JSONL of "
                                   "records (e.g. ai-revision pairs), human rows "
                                   "(prompt/chosen/rejected, HH, TRL), or `cai sample` "
                                   "candidates (prompt + responses)")
    constitution: str = Field("harmless", description="shipped name or file")
    eval_against: str | None = Field(None, description="human-labeled pairs (same formats as "
                                                       "pairs): report accuracy on the pairs "
                                                       "found in both")
    limit: int | None = Field(None, ge=1, description="label only the first N pairs")
    rejects: str | None = Field(None, description="rejects JSONL (default beside out)")
    report: str | None = Field(None, description="also write the summary and report as JSON")

    def rejects_path(self) -> Path:
        if self.rejects:
            return Path(self.rejects)
        out = Path(self.out)
        return out.with_name(out.stem + ".rejects.jsonl") if out.suffix == ".jsonl" \
            else out / "rejects.jsonl"


def load_label_config(path: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> LabelRunConfig:
    """The `label:` section of a pipeline YAML (or a file that is only that section), with
    `overrides` (flags; None values ignored) on top."""
    return load_section(path, "label", LabelRunConfig, overrides, marker_key="pairs")


def _resolve_mode(config: LabelRunConfig, model: str | None
                  ) -> tuple[LabelRunConfig, float | None]:
    """(config with `mode` set, tau as a number or None for pairwise / 'fit'), filling what
    the config leaves unset from the feedback model's defaults."""
    from cai.models import feedback_defaults

    mode, default_tau = feedback_defaults(config.model or model)
    config = config.model_copy(update={"mode": config.mode or mode})
    if config.mode != "pointwise":
        return config, None
    if config.tau is None:
        config = config.model_copy(update={"tau": default_tau or DEFAULT_TAU})
    return config, None if config.tau == "fit" else float(config.tau)


RAY_CHUNKS_PER_REPLICA = 4  # enough to keep every replica busy while one chunk is slow
# pairs labeled between two saves of the output: a killed run keeps what it labeled (each
# part is still thousands of comparisons, enough to keep the engine's batches full)
CHECKPOINT_PAIRS = 2048


def label_chunk(backend: Backend, pairs: list, *, constitution: Any, config: LabelRunConfig,
                tau: float | None) -> tuple[list, list, str]:
    """One chunk of pairs on a Ray actor's engine: (labels, [(pair, why too long)], the
    labeler's model name), as the local path computes them for all pairs at once."""
    pairs, too_long = fitting_pairs(backend, constitution, pairs, config)
    scorer = ResponseScorer(backend, constitution, few_shot=config.few_shot) \
        if config.mode == "pointwise" else None
    labels = label_pairs(backend, constitution, pairs, config, progress=False, tau=tau,
                         scorer=scorer)
    return labels, too_long, backend.model


def _label_on_ray(config: LabelRunConfig, c: Any, pairs: list, tau: float | None
                  ) -> tuple[list, list, str | None]:
    """`label_chunk` over `config.ray`'s engine actors; labels come back in input order."""
    from functools import partial

    from cai.cluster.chunks import run_chunks

    size = max(1, -(-len(pairs) // (config.ray.replicas * RAY_CHUNKS_PER_REPLICA)))
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    fn = partial(label_chunk, constitution=c, config=config, tau=tau)
    done: dict[int, tuple] = {}
    for i, result in run_chunks(fn, chunks, engine=(config.backend, config.model,
                                                    config.backend_options),
                                ray_config=config.ray):
        done[i] = result
    ordered = [done[i] for i in range(len(chunks))]
    labels = [lab for r in ordered for lab in r[0]]
    too_long = [t for r in ordered for t in r[1]]
    return labels, too_long, ordered[0][2] if ordered else None


def _label_here(config: LabelRunConfig, c: Any, pairs: list, tau: float | None,
                human: dict[str, str] | None, human_pairs: list, backend: Backend | None,
                log: Log, save: Callable[[list, str, float | None], None] | None = None
                ) -> tuple[float | None, list, list, str | None, float, str | None]:
    """Label `pairs` on one engine here (`backend`, else one loaded now and closed after):
    (tau, labels, [(pair, why too long)], the labeler's model name, seconds loading, the
    engine's precision).
    More than CHECKPOINT_PAIRS pairs are labeled that many at a time, and `save(labels so
    far, labeler, tau)` is called after each part but the last, so a killed run keeps them."""
    if not pairs and config.tau != "fit":
        return tau, [], [], None, 0.0, None
    start = time.perf_counter()
    owned = None
    if backend is None:
        backend = owned = load_backend(config.backend, config.model, **config.backend_options)
    try:
        loaded = time.perf_counter() - start
        scorer = ResponseScorer(backend, c, few_shot=config.few_shot) \
            if config.mode == "pointwise" else None
        if config.tau == "fit":
            known = [p for p in human_pairs if p.key in (human or {})]
            fit_on, _ = fitting_pairs(backend, c, known, config)
            diffs = reference_diffs(label_pairs(backend, c, fit_on, config, log=log,
                                                progress=config.progress, tau=1.0,
                                                scorer=scorer), human or {})
            if not diffs:
                raise DataError(f"{config.eval_against}: no labeled pair fits the feedback "
                                "model's context, so tau cannot be fitted")
            tau = fit_tau(diffs)
            log(f"tau fitted on {len(diffs)} human-labeled pairs: {tau:.3f}")
        labels: list = []
        too_long: list = []
        for i in range(0, len(pairs), CHECKPOINT_PAIRS):
            part, long = fitting_pairs(backend, c, pairs[i:i + CHECKPOINT_PAIRS], config)
            too_long += long
            labels += label_pairs(backend, c, part, config, log=log, progress=config.progress,
                                  tau=tau, scorer=scorer)
            if save is not None and i + CHECKPOINT_PAIRS < len(pairs):
                save(labels, backend.model, tau)
        return tau, labels, too_long, backend.model, loaded, getattr(backend, "precision", None)
    finally:
        if owned is not None:
            owned.close()


def _write_labels(out: Path, records: list, summary: dict[str, Any]) -> None:
    """The labels as JSONL or a store (its manifest keeping `summary` under `label`),
    atomically either way."""
    from cai.data.store import write_preferences  # pyarrow: only when a run writes

    if out.suffix == ".jsonl":
        atomic_write_jsonl(out, [r.to_row() for r in records])
    else:
        write_preferences(records, out, extra={"label": summary})


def _read_inputs(config: LabelRunConfig) -> tuple[list, list, dict[str, str] | None, list]:
    """(pairs, rejects, human labels by pair key or None, the human pairs)."""
    pairs, rejected = read_pairs(config.pairs)
    human, human_pairs = None, []
    if config.eval_against is not None:
        human_pairs = read_pairs(config.eval_against)[0]
        human = human_preferences(human_pairs)
        if not human:
            raise DataError(f"{config.eval_against}: no labeled pairs to evaluate against")
    if config.tau == "fit" and human is None:
        raise ConfigError("tau: fit needs eval_against (human-labeled pairs to fit tau on)")
    if config.limit:
        pairs = pairs[:config.limit]
    return pairs, rejected, human, human_pairs


def run_label(config: LabelRunConfig, *, backend: Backend | None = None, log: Log = say,
              progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """Label the pairs described by `config`; returns the summary (also stored in the
    output store's manifest under `label`, and in `config.report` when set).

    A rerun into the same `out` labels only the pairs that are new, changed, or touched by
    a constitution edit, and keeps the other labels as they were (`cai.label.incremental`);
    with nothing to label, no engine is loaded.

    `backend`: an engine the caller already built (a pipeline sharing one engine); otherwise
    one is loaded. Raises `ConfigError` (more principles asked than the constitution can
    draw), `ConstitutionError`, or `DataError` (unreadable input, nothing to label)."""
    c = load_constitution(config.constitution)
    usable = [p for p in c.principles if p.weight > 0]
    if config.principles > len(usable):
        raise ConfigError(f"principles {config.principles}: {c.name} has only {len(usable)} "
                          "principles to draw")
    pairs, rejected, human, human_pairs = _read_inputs(config)
    rejects_file = config.rejects_path()
    log(f"{len(pairs)} pairs to label from {config.pairs}"
        + (f"; {len(rejected)} rejected -> {rejects_file}" if rejected else ""))
    if not pairs:
        write_rejects(rejected, rejects_file)
        raise DataError(f"{config.pairs}: nothing to label")
    if config.ray is not None and config.tau == "fit":
        raise ConfigError("tau: fit is not available on Ray yet; give tau as a number")
    model_ref = config.model or (backend.model if backend else None)
    config, tau = _resolve_mode(config, model_ref)
    log(f"mode {config.mode}" + (f", tau {config.tau}" if config.mode == "pointwise" else ""))
    hashes = feedback_hashes(c, config.few_shot)
    settings = label_settings(run_info(c, config, tau=tau), model_ref, config.backend)
    plan = plan_relabel(read_old_labels(config.out), pairs, settings, hashes,
                        lambda p: [x.id for x in principles_for(c, p, config)],
                        incremental=config.tau != "fit")
    if plan.kept or plan.dropped:
        log(f"cai label: {config.out}: keeping {len(plan.kept)} labels, labeling "
            f"{len(plan.todo)} (" + "; ".join(f"{n}: {r}" for r, n in sorted(
                plan.reasons.items(), key=lambda x: -x[1])) + f"), dropping {plan.dropped} "
            "whose pairs are gone")

    def records_of(labels: list, labeler: str | None, tau: float | None) -> list:
        run = run_info(c, config, tau=tau)
        made = {lab.pair.key: to_record(lab, labeler, run, hashes, input_hash(lab.pair, settings))
                for lab in labels}
        return [r for r in (made.get(p.key) or plan.kept.get(p.key) for p in pairs) if r]

    def save(labels: list, labeler: str, tau: float | None) -> None:
        _write_labels(Path(config.out), records_of(labels, labeler, tau),
                      {"partial": f"{len(labels)} of {len(plan.todo)} pairs labeled so far"})

    start = time.perf_counter()
    if config.ray is not None and plan.todo:
        labels, too_long, labeler = _label_on_ray(config, c, plan.todo, tau)
        load_s, precision = 0.0, None
    else:
        tau, labels, too_long, labeler, load_s, precision = _label_here(
            config, c, plan.todo, tau, human, human_pairs, backend, log, save)
    rejected += [Reject(location=str(p.input.get("location", p.key)), code="too-long",
                        reason=why) for p, why in too_long]
    if too_long:
        log(f"{len(too_long)} pairs too long for the feedback model -> {rejects_file}")
    elapsed = time.perf_counter() - start - load_s
    labeler = labeler or next((r.labeler for r in plan.kept.values()), None) or model_ref
    records = records_of(labels, labeler, tau)
    report = build_report(records, human)
    summary = {"run": run_info(c, config, tau=tau), "labeler": labeler,
               "pairs_path": config.pairs, "rejected": len(rejected),
               "label_seconds": round(elapsed, 2), "load_seconds": round(load_s, 2),
               "relabeled": len(labels), "kept": len(plan.kept), "dropped": plan.dropped,
               "report": report.model_dump(), "engine_precision": precision}
    write_rejects(rejected, rejects_file)
    out = Path(config.out)
    _write_labels(out, records, summary)
    if config.report:
        atomic_write_json(config.report, summary)
    return {**summary, "out": str(out), "records": len(records), "too_long": len(too_long),
            "rejects_path": str(rejects_file)}
