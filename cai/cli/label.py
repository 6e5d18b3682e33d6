"""`cai label` (AI feedback with soft labels and a quality report) and `cai sample`
(candidate responses to label): flags -> config -> `run_label` / `run_sample` -> result."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.common import (EXIT_USAGE, RETRY_FOR_HELP, backend_options, fail, interruptible,
                            option)
from cai.label.run import LabelRunConfig
from cai.label.sample import SampleRunConfig

app = typer.Typer()
L, S = LabelRunConfig, SampleRunConfig


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


@app.command("label")
def label_cmd(
    pairs_path: Path = option(L, "pairs", "--pairs"),
    out: Path = option(L, "out", "--out", "-o"),
    constitution: str = option(L, "constitution", "--constitution", "-c"),
    model: str = option(L, "model", "--model", "-m"),
    backend: str = option(L, "backend", "--backend", "-b"),
    base_url: str = typer.Option(None, help="for --backend openai"),
    retry_for: float = typer.Option(300.0, min=0.0, help=RETRY_FOR_HELP),
    mode: str = typer.Option(None, "--mode", help="pairwise: (A)/(B) comparison in both orders "
                             "(the paper's); pointwise: a Yes/No verdict per response. Default: "
                             "the feedback model's (pointwise for the embedded model, else pairwise)"),
    tau: str = typer.Option(None, "--tau", help="pointwise: P = sigmoid((s_chosen - s_rejected) / "
                            "TAU); a number, or 'fit' (maximum likelihood on --eval-against)"),
    principles: int = option(L, "principles", "--principles", "-k"),
    seed: int = option(L, "seed", help="principle draws (and CoT sampling)"),
    cot: bool = option(L, "cot", "--cot", help="reason first, then answer; p clamped to [0.4, 0.6]"),
    few_shot: bool = option(L, "few_shot", "--few-shot/--no-few-shot",
                            help="show the constitution's feedback examples first"),
    cot_max_tokens: int = option(L, "cot_max_tokens"),
    eval_against: Path = option(L, "eval_against", "--eval-against"),
    report_path: Path = option(L, "report", "--report"),
    rejects: Path = option(L, "rejects", "--rejects"),
    limit: int = option(L, "limit"),
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of (GPU or CPU) memory"),
) -> None:
    """Label response pairs with the feedback model (RL-CAI / RLAIF).

    Each pair is judged under K sampled principles. Pairwise: each in both orders (A/B
    swapped), p_chosen the mean over principles of the order-averaged probability.
    Pointwise: each response gets a Yes/No verdict score per principle (scored once, however
    many pairs it is in), p = sigmoid(score difference / tau), averaged over principles.
    Records are oriented so chosen is the response the labeler prefers (p_chosen >= 0.5);
    metadata.ai_feedback holds the mode, the per-principle verdicts (per-order
    probabilities, or per-response scores) and the input orientation, metadata.input the
    input's provenance and label."""
    from cai.config import ConfigError, load_section
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.label import LabelReport, format_report
    from cai.label.run import run_label

    if mode is not None and mode not in ("pairwise", "pointwise"):
        fail(f"--mode {mode!r}: choose pairwise or pointwise", code=EXIT_USAGE)
    if tau is not None and tau != "fit":
        try:
            tau = float(tau)
        except ValueError:
            fail(f"--tau {tau!r}: a positive number or 'fit'", code=EXIT_USAGE)
    overrides = dict(
        mode=mode, tau=tau, pairs=_path(pairs_path), out=_path(out), constitution=constitution, model=model,
        backend=backend, backend_options=backend_options(base_url, gpu_memory_utilization, backend,
                                                        retry_for),
        principles=principles, seed=seed, cot=cot, few_shot=few_shot, cot_max_tokens=cot_max_tokens,
        eval_against=_path(eval_against), report=_path(report_path), rejects=_path(rejects),
        limit=limit)
    try:
        config = load_section(None, "label", LabelRunConfig, overrides)
        with interruptible("label", f"no records saved (cai label writes {config.out} once "
                                    "every pair is labeled, so a rerun starts over)"):
            summary = run_label(config, log=typer.echo)
    except (ConfigError, ConstitutionError, DataError) as e:
        fail(str(e))
    typer.echo(f"{summary['records']} records -> {summary['out']}  "
               f"({summary['label_seconds']:.1f} s labeling)")
    typer.echo(format_report(LabelReport.model_validate(summary["report"])))


@app.command("sample")
def sample_cmd(
    prompts_path: Path = typer.Argument(..., help=S.model_fields["prompts"].description),
    out: Path = option(S, "out", "--out", "-o"),
    model: str = option(S, "model", "--model", "-m"),
    backend: str = option(S, "backend", "--backend", "-b"),
    base_url: str = typer.Option(None, help="for --backend openai"),
    retry_for: float = typer.Option(300.0, min=0.0, help=RETRY_FOR_HELP),
    n: int = option(S, "n", "--n", "--samples"),
    temperature: float = option(S, "temperature"),
    top_p: float = option(S, "top_p"),
    max_tokens: int = option(S, "max_tokens"),
    seed: int = option(S, "seed"),
    constitution: str = option(S, "constitution", "--constitution", "-c"),
    field: str = option(S, "field"),
    messages_field: str = option(S, "messages_field"),
    max_prompt_tokens: int = option(S, "max_prompt_tokens"),
    limit: int = option(S, "limit"),
    rejects: Path = option(S, "rejects", "--rejects"),
    gpu_memory_utilization: float = typer.Option(None, help="vllm: KV cache share of memory"),
) -> None:
    """Sample N responses per prompt (one batch), to be paired and labeled by `cai label`."""
    from cai.config import ConfigError, load_section
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.label.sample import run_sample

    overrides = dict(
        prompts=_path(prompts_path), out=_path(out), model=model, backend=backend,
        backend_options=backend_options(base_url, gpu_memory_utilization, backend, retry_for),
        n=n,
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
        constitution=constitution, field=field, messages_field=messages_field,
        max_prompt_tokens=max_prompt_tokens, limit=limit, rejects=_path(rejects))
    try:
        config = load_section(None, "sample", SampleRunConfig, overrides)
        with interruptible("sample", f"no candidates saved (cai sample writes {config.out} at "
                                     "the end, so a rerun starts over)"):
            summary = run_sample(config, log=typer.echo)
    except (ConfigError, ConstitutionError, DataError) as e:
        fail(str(e))
    typer.echo(f"{summary['rows']} candidate rows -> {summary['out']}  "
               f"({summary['sample_seconds']:.1f} s; {summary['truncated_samples']} samples hit "
               f"--max-tokens)")
    if not summary["rows"]:
        fail("no usable prompt")
