"""`cai label` (AI feedback with soft labels and a quality report) and `cai sample`
(candidate responses to label). Heavy imports stay inside the commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from cai.cli.common import RETRY_FOR_HELP, backend_options, fail, interruptible


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from cai.io import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


app = typer.Typer()


@app.command("label")
def label_cmd(
    pairs_path: Path = typer.Option(..., "--pairs", help="pairs to label: a preference store / "
                                    ".parquet / JSONL of records (e.g. ai-revision pairs), human "
                                    "rows (prompt/chosen/rejected, HH, TRL), or `cai sample` "
                                    "candidates (prompt + responses)"),
    out: Path = typer.Option(..., "--out", "-o", help="output: a store directory, or a .jsonl file"),
    constitution: str = typer.Option("harmless", "--constitution", "-c", help="shipped name or file"),
    model: str = typer.Option(None, "--model", "-m", help="feedback model: registry name, dir, hub id"),
    backend: str = typer.Option(None, "--backend", "-b", help="vllm | transformers | openai"),
    base_url: str = typer.Option(None, help="for --backend openai"),
    retry_for: float = typer.Option(300.0, min=0.0, help=RETRY_FOR_HELP),
    principles: int = typer.Option(1, "--principles", "-k", min=1,
                                   help="K principles sampled per pair and ensembled"),
    seed: int = typer.Option(0, help="principle draws (and CoT sampling)"),
    cot: bool = typer.Option(False, "--cot", help="reason first, then answer; p clamped to [0.4, 0.6]"),
    few_shot: bool = typer.Option(True, "--few-shot/--no-few-shot",
                                  help="show the constitution's feedback examples first"),
    cot_max_tokens: int = typer.Option(256, min=1),
    eval_against: Path = typer.Option(None, "--eval-against",
                                      help="human-labeled pairs (same formats as --pairs): "
                                           "report accuracy on the pairs found in both"),
    report_path: Path = typer.Option(None, "--report", help="also write the report as JSON"),
    rejects: Path = typer.Option(None, "--rejects", help="rejects JSONL (default beside OUT)"),
    limit: int = typer.Option(None, min=1, help="label only the first N pairs"),
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of (GPU or CPU) memory"),
) -> None:
    """Label response pairs with the feedback model (RL-CAI / RLAIF).

    Each pair is judged under K sampled principles, each in both orders (A/B swapped);
    p_chosen is the mean over principles of the order-averaged probability. Records are
    oriented so chosen is the response the labeler prefers (p_chosen >= 0.5);
    metadata.ai_feedback holds the per-principle, per-order probabilities and the input
    orientation, metadata.input the input's provenance and label."""
    from cai.backends import load_backend
    from cai.constitution import ConstitutionError, load_constitution
    from cai.data.importers import Reject
    from cai.data.store import write_preferences
    from cai.io import DataError
    from cai.label import (LabelConfig, build_report, fitting_pairs, format_report,
                           human_preferences, label_pairs, read_pairs, run_info, to_record)

    try:
        c = load_constitution(constitution)
    except ConstitutionError as e:
        fail(str(e))
    config = LabelConfig(principles=principles, seed=seed, few_shot=few_shot, cot=cot,
                         cot_max_tokens=cot_max_tokens)
    usable = [p for p in c.principles if p.weight > 0]
    if principles > len(usable):
        fail(f"--principles {principles}: {c.name} has only {len(usable)} principles to draw")
    try:
        pairs, rejected = read_pairs(pairs_path)
        human = None
        if eval_against is not None:
            human_pairs, _ = read_pairs(eval_against)
            human = human_preferences(human_pairs)
            if not human:
                fail(f"{eval_against}: no labeled pairs to evaluate against")
    except DataError as e:
        fail(str(e))
    if limit:
        pairs = pairs[:limit]
    rejects_file = rejects or (out / "rejects.jsonl" if out.suffix != ".jsonl"
                               else out.with_name(out.stem + ".rejects.jsonl"))
    typer.echo(f"{len(pairs)} pairs to label from {pairs_path}"
               + (f"; {len(rejected)} rejected -> {rejects_file}" if rejected else ""))
    if not pairs:
        _write_jsonl(rejects_file, [r.model_dump(exclude_none=True) for r in rejected])
        fail("nothing to label")

    start = time.perf_counter()
    unsaved = (f"no records saved (cai label writes {out} once all {len(pairs)} pairs are "
               "labeled, so a rerun starts over)")
    with interruptible("label", unsaved), \
            load_backend(backend, model, **backend_options(base_url, gpu_memory_utilization,
                                                           backend, retry_for)) as engine:
        t_loaded = time.perf_counter()
        pairs, too_long = fitting_pairs(engine, c, pairs, config)
        rejected += [Reject(location=str(p.input.get("location", p.key)), code="too-long",
                            reason=why) for p, why in too_long]
        if too_long:
            typer.echo(f"{len(too_long)} pairs too long for the feedback model -> {rejects_file}")
        labels = label_pairs(engine, c, pairs, config, log=lambda m: typer.echo(m))
        labeler = engine.model
    elapsed = time.perf_counter() - t_loaded
    run = run_info(c, config)
    records = [to_record(lab, labeler, run) for lab in labels]
    report = build_report(records, human)
    summary = {"run": run, "labeler": labeler, "pairs_path": str(pairs_path),
               "rejected": len(rejected), "label_seconds": round(elapsed, 2),
               "load_seconds": round(t_loaded - start, 2), "report": report.model_dump()}
    _write_jsonl(rejects_file, [r.model_dump(exclude_none=True) for r in rejected])
    if out.suffix == ".jsonl":
        _write_jsonl(out, [r.to_row() for r in records])
    else:
        write_preferences(records, out, extra={"label": summary})
    if report_path:
        from cai.io import atomic_write_json

        atomic_write_json(report_path, summary)
    typer.echo(f"{len(records)} records -> {out}  ({elapsed:.1f} s labeling)")
    typer.echo(format_report(report))

@app.command("sample")
def sample_cmd(
    prompts_path: Path = typer.Argument(..., help="prompts: .jsonl/.json/.csv/.parquet/.txt or a "
                                                  "`datasets` directory"),
    out: Path = typer.Option(..., "--out", "-o", help="candidates JSONL (input to `cai label --pairs`)"),
    model: str = typer.Option(None, "--model", "-m", help="policy: registry name, directory or hub id"),
    backend: str = typer.Option(None, "--backend", "-b", help="vllm | transformers | openai"),
    base_url: str = typer.Option(None, help="for --backend openai"),
    retry_for: float = typer.Option(300.0, min=0.0, help=RETRY_FOR_HELP),
    n: int = typer.Option(2, "--n", "--samples", min=2, help="responses per prompt"),
    temperature: float = typer.Option(1.0, min=0.0),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    max_tokens: int = typer.Option(256, min=1),
    seed: int = typer.Option(0),
    constitution: str = typer.Option(None, "--constitution", "-c",
                                     help="show this constitution's system prompt to the policy"),
    field: str = typer.Option("prompt", help="text field of a prompt"),
    messages_field: str = typer.Option("messages", help="message-list field of a prompt"),
    max_prompt_tokens: int = typer.Option(
        None, min=1, help="reject longer prompts (default: the model's context minus --max-tokens)"),
    limit: int = typer.Option(None, min=1, help="first N usable prompts"),
    rejects: Path = typer.Option(None, "--rejects", help="rejects JSONL (default OUT stem + .rejects.jsonl)"),
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of memory"),
) -> None:
    """Sample N responses per prompt (one batch), to be paired and labeled by `cai label`."""
    from cai.backends import load_backend
    from cai.constitution import ConstitutionError, load_constitution
    from cai.generate.inputs import load_prompts, write_rejects
    from cai.io import DataError
    from cai.label.sample import SampleConfig, sample_candidates

    if temperature == 0.0:
        fail("--temperature 0 makes every sample the same; use > 0")
    try:
        c = load_constitution(constitution) if constitution else None
    except ConstitutionError as e:
        fail(str(e))
    config = SampleConfig(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    rejects_file = rejects or out.with_name(out.stem + ".rejects.jsonl")
    unsaved = f"no candidates saved (cai sample writes {out} at the end, so a rerun starts over)"
    with interruptible("sample", unsaved), \
            load_backend(backend, model, **backend_options(base_url, gpu_memory_utilization,
                                                           backend, retry_for)) as engine:
        ctx = engine.context_length()
        if max_prompt_tokens is None and ctx and getattr(engine, "tokenizer", None) is not None:
            # a prompt that leaves no room for max_tokens would fail the whole batch
            max_prompt_tokens = max(1, ctx - max_tokens)
        try:
            items, rejected = load_prompts(
                prompts_path, field=field, messages_field=messages_field, limit=limit,
                max_prompt_tokens=max_prompt_tokens,
                tokenizer=getattr(engine, "tokenizer", None) if max_prompt_tokens else None)
        except (DataError, ValueError) as e:
            fail(str(e))
        typer.echo(f"{len(items)} prompts x {n} samples"
                   + (f"; {len(rejected)} rejected -> {rejects_file}" if rejected else ""))
        start = time.perf_counter()
        rows = sample_candidates(engine, items, config, c)
        elapsed = time.perf_counter() - start
    _write_jsonl(out, [r.model_dump(mode="json") for r in rows])
    write_rejects(rejected, rejects_file)
    cut = sum(fr == "length" for r in rows for fr in (r.model_extra or {}).get("finish_reasons", []))
    typer.echo(f"{len(rows)} candidate rows -> {out}  ({elapsed:.1f} s; {cut} samples hit "
               f"--max-tokens)")
    if not rows:
        fail("no usable prompt")
