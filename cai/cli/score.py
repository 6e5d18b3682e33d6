"""`cai score`: add a reward column to prompt/response rows, from a reward model or
(`--judge`) from the feedback model's pointwise verdict. Flags are generated from
ScoreConfig and JudgeScoreConfig (`cli.stage`); `--judge` picks the second."""

from __future__ import annotations

import typer

from cai.cli.common import EXIT_USAGE, fail
from cai.cli.stage import StageArgs, stage_command
from cai.eval.score import JudgeScoreConfig, ScoreConfig

app = typer.Typer()


@stage_command(app, "score", [ScoreConfig, JudgeScoreConfig], section="score", marker_key="data",
               short={"model": "-m", "data": "-d", "out": "-o", "constitution": "-c",
                      "principles": "-p", "k": "-k", "backend": "-b"},
               extras={"judge": (bool, typer.Option(
                   False, "--judge", help="score with the feedback model + constitution instead: "
                   "`judge_score` = log-odds of Yes to each principle's judgement question (> 0: "
                   "the judge says Yes)"))})
def score_cmd(args: StageArgs) -> None:
    """Score each row; writes the rows with a `reward` column (reward model, --model), or
    with `judge_score` and `judge_principles` (--judge: the feedback model's verdict)."""
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.models import ModelError

    if args.extras["judge"]:
        from cai.eval.score import run_judge_score

        config = args.config(JudgeScoreConfig)
        try:
            summary = run_judge_score(config, log=typer.echo)
        except (DataError, ModelError, ConstitutionError) as e:
            fail(str(e))
        typer.echo(f"{summary['rows']} rows judged -> {summary['out']} (mean judge_score "
                   f"{summary['mean_score']:.3f}, Yes for {100 * summary['yes_rate']:.0f}%, "
                   f"{summary['seconds']:.1f} s)")
        return
    from cai.eval.score import run_score

    if args.overrides.get("model") is None and args.path is None:
        fail("score with a reward model (--model DIR) or with the feedback model (--judge)",
             EXIT_USAGE)
    config = args.config(ScoreConfig)
    try:
        summary = run_score(config, log=typer.echo)
    except (DataError, ModelError) as e:
        fail(str(e))
    typer.echo(f"{summary['rows']} rows scored -> {summary['out']} (mean reward "
               f"{summary['mean_reward']:.3f}, {summary['seconds']:.1f} s)")
