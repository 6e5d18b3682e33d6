"""`cai label` (AI feedback with soft labels and a quality report) and `cai sample`
(candidate responses to label): flags (generated from the config class, `cli.stage`) over
`--config` -> `run_label` / `run_sample` -> result."""

from __future__ import annotations

import typer

from cai.cli.common import fail, interruptible
from cai.cli.stage import StageArgs, stage_command
from cai.label.run import LabelRunConfig
from cai.label.sample import SampleRunConfig

app = typer.Typer()
ENGINE_SHORT = {"out": "-o", "model": "-m", "backend": "-b", "constitution": "-c"}


@stage_command(app, "label", [LabelRunConfig], section="label", marker_key="pairs",
               short={**ENGINE_SHORT, "principles": "-k"})
def label_cmd(args: StageArgs) -> None:
    """Label response pairs with the feedback model (RL-CAI / RLAIF).

    Each pair is judged under K sampled principles. Pairwise: each in both orders (A/B
    swapped), p_chosen the mean over principles of the order-averaged probability.
    Pointwise: each response gets a Yes/No verdict score per principle (scored once, however
    many pairs it is in), p = sigmoid(score difference / tau), averaged over principles.
    Records are oriented so chosen is the response the labeler prefers (p_chosen >= 0.5);
    metadata.ai_feedback holds the mode, the per-principle verdicts (per-order
    probabilities, or per-response scores) and the input orientation, metadata.input the
    input's provenance and label."""
    from cai.config import ConfigError
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.label import LabelReport, format_report
    from cai.label.run import run_label

    config = args.config(LabelRunConfig)
    try:
        with interruptible("label", f"no records saved (cai label writes {config.out} once "
                                    "every pair is labeled, so a rerun starts over)"):
            summary = run_label(config, log=typer.echo)
    except (ConfigError, ConstitutionError, DataError) as e:
        fail(str(e))
    typer.echo(f"{summary['records']} records -> {summary['out']}  "
               f"({summary['label_seconds']:.1f} s labeling"
               + (f"; {summary['relabeled']} labeled, {summary['kept']} kept from the last "
                  f"run, {summary['dropped']} dropped" if summary["kept"] or summary["dropped"]
                  else "") + ")")
    typer.echo(format_report(LabelReport.model_validate(summary["report"])))


@stage_command(app, "sample", [SampleRunConfig], section="sample", marker_key="prompts",
               positional=("prompts",), short=ENGINE_SHORT)
def sample_cmd(args: StageArgs) -> None:
    """Sample N responses per prompt (one batch), to be paired and labeled by `cai label`."""
    from cai.config import ConfigError
    from cai.constitution import ConstitutionError
    from cai.io import DataError
    from cai.label.sample import run_sample

    config = args.config(SampleRunConfig)
    try:
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
