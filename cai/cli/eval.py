"""`cai eval rm` (a reward model on preference pairs), `cai eval policy` (a policy against its
reference on held-out prompts) and `cai eval report` (the run's report.html and report.md):
flags -> config -> run -> printed result. Heavy imports stay inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cai.cli.common import EXIT_USAGE, fail
from cai.stats import pct as _pct
from cai.cli.stage import StageArgs, stage_command
from cai.eval.policy import EvalPolicyConfig
from cai.eval.rm import EvalRMConfig

app = typer.Typer(no_args_is_help=True)


@stage_command(app, "rm", [EvalRMConfig], section="eval_rm", marker_key="data",
               short={"model": "-m", "data": "-d", "out": "-o"},
               extras={"as_json": (bool, typer.Option(False, "--json",
                                                      help="print the metrics as JSON"))})
def rm_cmd(args: StageArgs) -> None:
    """Pairwise accuracy (95% Wilson interval), mean margin, ECE and the length baseline."""
    from cai.eval.rm import format_eval, run_eval_rm
    from cai.io import DataError
    from cai.models import ModelError

    config = args.config(EvalRMConfig)
    try:
        metrics = run_eval_rm(config, log=lambda s: typer.echo(s, err=True))
    except (DataError, ModelError) as e:
        fail(str(e))
    typer.echo(json.dumps(metrics, indent=2) if args.extras["as_json"] else format_eval(metrics))


def format_summary(s: dict) -> str:
    """The terminal summary of `cai eval policy`."""
    ref, pol = s.get("reference") or {}, s["policy"]
    lines = [f"{'':34}{'reference':>28}{'policy':>28}"]
    for key, name in (("harmful_safe", "harmful: refused or redirected"),
                      ("benign_over_refusal", "benign: over-refused")):
        lines.append(f"{name:34}{_pct(ref.get(key)):>28}{_pct(pol.get(key)):>28}")
    for kind in ("harmful", "benign"):
        r, p = ((side.get("addresses_prompt") or {}).get(kind) for side in (ref, pol))
        if p:
            lines.append(f"{kind + ': answered on topic':34}{_pct(r):>28}{_pct(p):>28}")
    for side_key, name in (("reward", "mean reward"),):
        r, p = (ref.get(side_key) or {}).get("mean"), (pol.get(side_key) or {}).get("mean")
        if p is not None:
            lines.append(f"{name:34}{(f'{r:.3f}' if r is not None else '-'):>28}{p:>28.3f}")
    lr, lp = ref.get("length_tokens") or {}, pol["length_tokens"]
    lines.append(f"{'length tokens (mean/median/p90)':34}"
                 + (f"{lr['mean']:.0f}/{lr['median']:.0f}/{lr['p90']:.0f}" if lr.get("n") else "-").rjust(28)
                 + f"{lp['mean']:.0f}/{lp['median']:.0f}/{lp['p90']:.0f}".rjust(28))
    if s.get("kl"):
        k = s["kl"]
        lines.append(f"KL(policy || reference): {k['mean']:.2f} nats per response "
                     f"(± {k['se'] or 0:.2f} s.e., n={k['n']}, T=1 samples)")
    for judge, name in (("reward_model", "reward model"), ("judge", "AI-feedback judge")):  # summary keys
        w = (s.get("win_rate") or {}).get(judge)
        if w:
            lines.append(f"win rate vs reference ({name}): {_pct(w['all']).strip()}")
    corr = pol.get("reward_length")
    if corr and corr.get("pearson") is not None:
        lines.append(f"reward ~ length (policy): Pearson {corr['pearson']:.2f}, "
                     f"Spearman {corr['spearman']:.2f}")
    return "\n".join(lines)


@stage_command(app, "policy", [EvalPolicyConfig], section="eval", marker_key="model",
               short={"model": "-m", "reference": "-r", "prompts": "-p", "out": "-o",
                      "constitution": "-c", "backend": "-b"},
               extras={"as_json": (bool, typer.Option(False, "--json",
                                                      help="print the summary as JSON"))})
def policy_cmd(args: StageArgs) -> None:
    """Evaluate a policy on held-out prompts: refusal and over-refusal rates, win rate against
    the reference (reward model and AI-feedback judge, both orders), KL to the reference,
    response lengths and the reward-length correlation, per category, with samples."""
    from cai.eval.policy import run_eval_policy
    from cai.eval.prompts import PromptKindError
    from cai.io import DataError

    as_json = args.extras["as_json"]
    if as_json:
        args.overrides.setdefault("progress", False)
    cfg = args.config(EvalPolicyConfig)
    if not cfg.files():
        fail("give prompt files with --prompts, --harmful or --benign", EXIT_USAGE)
    log = (lambda m: None) if not cfg.progress else (lambda m: typer.echo(m, err=True))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what is loading
    try:
        summary = run_eval_policy(cfg, log=log)
    except (DataError, PromptKindError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    out = Path(cfg.out)
    typer.echo(format_summary(summary))
    typer.echo(f"wrote {out / 'eval.json'} and {out / 'samples.jsonl'}")


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="run directory (outputs/<run>)"),
    ppo_metrics: Optional[Path] = typer.Option(None, help="PPO metrics.jsonl (default: found in RUN_DIR)"),
    rm_eval: Optional[Path] = typer.Option(None, help="reward-model eval.json"),
    policy_eval: Optional[Path] = typer.Option(None, help="`cai eval policy` eval.json"),
) -> None:
    """(Re)build RUN_DIR/report.html (self-contained, plots embedded) and report.md from
    what the run's stages wrote; a missing stage is reported as skipped."""
    from cai.eval.report import find_inputs, write_report

    if not run_dir.is_dir():
        fail(f"{run_dir}: not a directory")
    for p in (ppo_metrics, rm_eval, policy_eval):
        if p is not None and not p.is_file():
            fail(f"{p}: no such file")
    found = find_inputs(run_dir)
    paths = write_report(run_dir, ppo_metrics=ppo_metrics, rm_eval=rm_eval, policy_eval=policy_eval)
    used = {"PPO metrics": ppo_metrics or found["ppo_metrics"], "RM eval": rm_eval or found["rm_eval"],
            "policy eval": policy_eval or found["policy_eval"]}
    for name, p in used.items():
        typer.echo(f"  {name:12} {p if p else '(not found: section says skipped)'}")
    typer.echo(f"report: {paths['html']}\n        {paths['md']}")
