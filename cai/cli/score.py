"""`cai score`: add a reward column to prompt/response rows, from a reward model or
(`--judge`) from the feedback model's pointwise verdict."""

from __future__ import annotations

from pathlib import Path

import typer

from cai.cli.common import EXIT_USAGE, backend_options, fail

app = typer.Typer()


@app.command("score")
def score_cmd(
    model: str = typer.Option(None, "--model", "-m", help="reward model directory; with --judge, "
                              "the feedback model (default: the embedded model)"),
    data: Path = typer.Option(..., "--data", "-d", help="rows with a prompt and a response"),
    out: Path = typer.Option(..., "--out", "-o", help="output .jsonl or .parquet"),
    prompt_field: str = typer.Option("prompt", help="text or message-list column"),
    response_field: str = typer.Option("response"),
    max_length: int = typer.Option(1024), batch_size: int = typer.Option(16),
    judge: bool = typer.Option(False, "--judge", help="score with the feedback model + constitution "
                               "instead: `judge_score` = log-odds of Yes to each principle's "
                               "judgement question (> 0: the judge says Yes)"),
    constitution: str = typer.Option("harmless", "--constitution", "-c",
                                     help="--judge: shipped name or file"),
    principle: list[str] = typer.Option(None, "--principle", "-p",
                                        help="--judge: principle id (repeatable; mean score)"),
    k: int = typer.Option(1, "--principles", "-k", min=1,
                          help="--judge: principles drawn per response when none is named"),
    seed: int = typer.Option(0, help="--judge: principle draws"),
    few_shot: bool = typer.Option(True, "--few-shot/--no-few-shot",
                                  help="--judge: show the constitution's feedback examples first"),
    backend: str = typer.Option(None, "--backend", "-b", help="--judge: vllm | transformers | openai"),
    base_url: str = typer.Option(None, help="--judge: for --backend openai"),
    gpu_memory_utilization: float = typer.Option(None, help="--judge, vllm: KV cache share of memory"),
) -> None:
    """Score each row; writes the rows with a `reward` column (reward model, --model), or
    with `judge_score` and `judge_principles` (--judge: the feedback model's verdict)."""
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.models import ModelError

    if judge:
        from cai.eval.score import JudgeScoreConfig, run_judge_score

        try:
            summary = run_judge_score(JudgeScoreConfig(
                data=str(data), out=str(out), model=model, backend=backend,
                backend_options=backend_options(base_url, gpu_memory_utilization, backend),
                constitution=constitution, principles=principle or [], k=k, seed=seed,
                few_shot=few_shot, prompt_field=prompt_field, response_field=response_field),
                echo=typer.echo)
        except (DataError, ModelError, ConstitutionError) as e:
            fail(str(e))
        typer.echo(f"{summary['rows']} rows judged -> {summary['out']} (mean judge_score "
                   f"{summary['mean_score']:.3f}, Yes for {100 * summary['yes_rate']:.0f}%, "
                   f"{summary['seconds']:.1f} s)")
        return
    if model is None:
        fail("--model: a reward model directory (or --judge to score with the feedback model)",
             code=EXIT_USAGE)
    from cai.eval.score import ScoreConfig, run_score

    try:
        summary = run_score(ScoreConfig(model=model, data=str(data), out=str(out),
                                        prompt_field=prompt_field, response_field=response_field,
                                        max_length=max_length, batch_size=batch_size),
                            echo=typer.echo)
    except (DataError, ModelError) as e:
        fail(str(e))
    typer.echo(f"{summary['rows']} rows scored -> {summary['out']} (mean reward "
               f"{summary['mean_reward']:.3f}, {summary['seconds']:.1f} s)")
