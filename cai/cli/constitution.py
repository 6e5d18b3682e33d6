"""`cai constitution ...`: validate, show, new, render, schema, diff. Imports stay light (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cai.cli.common import EXIT_BAD_INPUT, EXIT_USAGE, fail
from cai.constitution.errors import ConstitutionError
from cai.constitution.loader import load_constitution
from cai.constitution.schema import Constitution, json_schema

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

EXAMPLE_PROMPT = "My coworker keeps taking credit for my work. How can I get back at him?"
EXAMPLE_RESPONSE = "<the model's first response>"
EXAMPLE_CRITIQUE = "<the critique the model wrote>"
EXAMPLE_REVISION = "<the revised response>"


def _load_or_exit(ref: str) -> Constitution:
    try:
        return load_constitution(ref)
    except ConstitutionError as e:
        typer.echo(str(e), err=True)  # FILE:LINE:COL lines, as they are (editors jump to them)
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("validate")
def validate_cmd(
    files: list[str] = typer.Argument(..., help="constitution files or shipped names"),
) -> None:
    """Check files and print every error as FILE:LINE:COL: message; exit 1 if any."""
    from cai.constitution.cases import load_cases

    failed = 0
    for ref in files:
        try:
            c, cases, _ = load_cases(ref)  # the constitution and its test cases
        except ConstitutionError as e:
            failed += 1
            typer.echo(str(e), err=True)
            typer.echo(f"FAIL {ref}: {len(e.errors)} error{'s' * (len(e.errors) != 1)}", err=True)
            continue
        typer.echo(f"ok   {ref}: {c.name} {c.version}, {len(c.principles)} principles, "
                   f"{len(cases)} test cases, hash {c.content_hash()}")
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("show")
def show_cmd(file: str = typer.Argument(..., help="constitution file or shipped name")) -> None:
    """A readable summary: principles with their sampling share, examples, defaults."""
    c = _load_or_exit(file)
    total = sum(p.weight for p in c.principles) or 1.0
    out = [f"{c.name} {c.version}  (hash {c.content_hash()})",
           f"from: {' <- '.join(c.sources)}", "", c.description.strip(), ""]
    if c.system_prompt:
        out += ["system prompt:", f"  {c.system_prompt.strip()}", ""]
    out.append(f"principles ({len(c.principles)}):")
    width = max(len(p.id) for p in c.principles)
    for p in c.principles:
        tags = f"  [{', '.join(p.tags)}]" if p.tags else ""
        out.append(f"  {p.id:<{width}}  w={p.weight:g} ({100 * p.weight / total:4.1f}%){tags}")
        out.append(f"  {'':<{width}}  {p.comparison.strip()}")
    out += ["", f"few-shot examples: {len(c.few_shot)} critique/revision "
            f"({', '.join(e.principle for e in c.few_shot) or 'none'}), "
            f"{len(c.feedback_few_shot)} feedback "
            f"({', '.join(e.principle for e in c.feedback_few_shot) or 'none'})",
            f"defaults: " + ", ".join(f"{k}={v}" for k, v in c.defaults.model_dump().items())]
    typer.echo("\n".join(out))


_TEMPLATE = '''\
# {name}: a constitution for cai. Check it with `cai constitution validate {file}`
# and see exactly what the model will be asked with `cai constitution render {file}`.
schema: 1                 # format version; always 1
name: {name}              # lowercase letters, digits, '-', '_' or '.'
version: "0.1"            # quote it, or YAML reads 1.10 as the number 1.1
description: >
  One or two sentences on what this constitution steers the model toward.

# Optional: a system prompt shown before every response, critique and revision.
# system_prompt: You are a helpful assistant for ...

defaults:
  revision_rounds: 1      # critique-revision rounds per record

# Each principle is one rule. The texts are sent to the model exactly as written and take
# no {{placeholders}}: the conversation and the response already appear as chat turns.
principles:
  - id: be-kind
    critique_request: >
      Point out anything in your last response that is unkind or dismissive.
    revision_request: >
      Rewrite your response so it is kind, keeping everything useful in it.
    comparison: Which response is kinder?   # multiple choice for AI feedback, (A) or (B)
    judgement: Is the assistant's last reply kind?   # optional: yes/no for pointwise feedback
    weight: 1.0           # optional; relative chance of being drawn, 0 disables
    tags: [tone]          # optional

# Worked examples, shown to the model as earlier chat turns. Keep them short: they are
# part of every critique and revision prompt.
few_shot:
  - principle: be-kind    # whose critique and revision requests this example answers
    conversation:
      - role: user
        content: I failed my driving test again.
    response: Lots of people pass first time, so maybe practise more.
    critique: The response compares the user to others and ignores how they feel.
    revision: I'm sorry, that's disappointing, especially after all the practice. Many people need a few tries. Do you know what tripped you up this time?

# Worked comparisons for AI feedback: answer is A or B.
feedback_few_shot:
  - principle: be-kind
    conversation:
      - role: user
        content: My cat died this morning.
    response_a: Cats live about 15 years, so that's normal.
    response_b: I'm so sorry. Losing a companion is hard. Would you like to tell me about her?
    answer: B
'''

_CHILD_TEMPLATE = '''\
# {name}: builds on the `{parent}` constitution. Check it with
# `cai constitution validate {file}`; `cai constitution show {file}` shows the result.
schema: 1
extends: {parent}         # a path relative to this file, or a shipped name
name: {name}
version: "0.1"
description: >
  {parent}, adapted for ...

# Principles merge by id: an id the parent has overrides only the keys written here;
# a new id adds a principle. Weight 0 switches an inherited principle off.
principles:
  # - id: some-parent-principle
  #   weight: 2
  - id: be-kind
    critique_request: Point out anything in your last response that is unkind or dismissive.
    revision_request: Rewrite your response so it is kind, keeping everything useful in it.
    comparison: Which response is kinder?

# few_shot / feedback_few_shot / system_prompt, when written here, replace the parent's;
# `defaults` merge key by key.
'''


@app.command("new")
def new_cmd(
    name: str = typer.Argument(..., help="constitution name (lowercase, e.g. my-assistant)"),
    output: Path = typer.Option(None, "--output", "-o", help="file to write (default NAME.yaml)"),
    extends: str = typer.Option(None, "--extends", help="build on this file or shipped name"),
    force: bool = typer.Option(False, help="overwrite an existing file"),
) -> None:
    """Write a commented template that validates as it is."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        fail(f"name {name!r} must be lowercase letters, digits, '-', '_' or '.'", EXIT_USAGE)
    path = output or Path(f"{name}.yaml")
    if path.exists() and not force:
        fail(f"{path} exists (use --force to overwrite)")
    template = _CHILD_TEMPLATE if extends else _TEMPLATE
    path.write_text(template.format(name=name, file=path, parent=extends), encoding="utf-8")
    typer.echo(f"wrote {path}")


def _print_messages(title: str, messages: list[dict], tail: str) -> None:
    typer.echo(f"===== {title} ({len(messages)} messages) =====")
    for m in messages:
        typer.echo(f"--- {m['role']} ---\n{m['content'].rstrip()}")
    typer.echo(f"--- assistant ---\n{tail}\n")


@app.command("render")
def render_cmd(
    file: str = typer.Argument(..., help="constitution file or shipped name"),
    principle: str = typer.Option(None, "--principle", "-p", help="principle id (default: the first)"),
    prompt: str = typer.Option(EXAMPLE_PROMPT, help="the example user message"),
    response: str = typer.Option(EXAMPLE_RESPONSE, help="the example first response"),
    few_shot: bool = typer.Option(True, "--few-shot/--no-few-shot", help="include few-shot examples"),
    as_json: bool = typer.Option(False, "--json", help="print the message lists as JSON"),
    chat_template: str = typer.Option(None, "--chat-template", metavar="MODEL",
                                      help="also print raw text through MODEL's chat template, "
                                           "with token counts and whether they fit its context"),
) -> None:
    """Print the exact critique, revision, comparison (pairwise feedback) and judgement
    (pointwise feedback) prompts the model will see."""
    from cai import prompting

    c = _load_or_exit(file)
    try:
        p = c.principle(principle) if principle else c.principles[0]
    except KeyError as e:
        fail(e.args[0])
    conv = [{"role": "user", "content": prompt}]
    stages = {
        "critique": prompting.critique_messages(c, p, conv, response, few_shot=few_shot),
        "revision": prompting.revision_messages(c, p, conv, response, EXAMPLE_CRITIQUE,
                                                few_shot=few_shot),
        "comparison": prompting.comparison_messages(c, p, conv, response, EXAMPLE_REVISION,
                                                    few_shot=few_shot),
        "judgement": prompting.judgement_messages(c, p, conv, response, few_shot=few_shot),
    }
    if as_json:
        typer.echo(json.dumps({"constitution": c.name, "principle": p.id, **stages}, indent=2,
                              ensure_ascii=False))
        return
    tails = {
        "critique": "<- the model writes its critique here",
        "revision": "<- the model writes its revised response here",
        "comparison": f"{prompting.ANSWER_PREFIX}<- scored continuations: "
                      + " vs ".join(repr(o) for o in prompting.COMPARISON_OPTIONS),
        "judgement": "<- scored first token: "
                     + " vs ".join(" + ".join(repr(a) for a in v)
                                   for v in prompting.JUDGEMENT_ANSWERS.values()),
    }
    for stage, messages in stages.items():
        title = f"{stage} prompt, principle {p.id}"
        if stage == "judgement":
            title += (" (pointwise; question " + ("from `judgement`" if p.judgement
                                                  else "derived from `comparison`") + ")")
        _print_messages(title, messages, tails[stage])
    if chat_template:
        from cai.generate.config import GenerateConfig

        # room for an answer of generation's default length
        _print_chat_template(chat_template, stages, GenerateConfig.model_fields["max_tokens"].default)


def _print_chat_template(model: str, stages: dict[str, list[dict]], answer_tokens: int) -> None:
    from transformers import AutoConfig, AutoTokenizer  # heavy; only on request

    from cai.backends.context import ChatTokenizer, context_fit
    from cai.backends.text import render_chat
    from cai.models import resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    counter = ChatTokenizer(tok, context)
    for stage, messages in stages.items():
        fit = context_fit(counter, messages, reserve=answer_tokens)
        verdict = "" if fit.limit is None else (
            f"; with {answer_tokens} to answer it {'fits' if fit.ok else 'does NOT fit'} "
            f"the context ({fit.limit})")
        typer.echo(f"===== {stage} through {model}'s chat template: "
                   f"{counter.count_tokens(messages)} tokens{verdict} =====\n"
                   f"{render_chat(tok, messages)}\n")


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of constitution files (for editor completion)."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command("diff")
def diff_cmd(
    old: str = typer.Argument(..., help="the constitution before (file or shipped name)"),
    new: str = typer.Argument(..., help="the constitution after"),
    run: Path = typer.Option(None, "--run", help="a `cai generate` run directory: count the "
                                                 "records each change makes again"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """The principles that changed between two constitutions (edited text or examples,
    added, removed, other weight or tags) and, with --run, how many records of that run a
    rerun would make again for each."""
    from cai.constitution import diff_constitutions

    a, b = _load_or_exit(old), _load_or_exit(new)
    counts = None
    if run is not None:
        from cai.generate.touched import touched  # pyarrow: only with --run

        try:
            counts = touched(run, b)
        except FileNotFoundError as e:
            fail(str(e))
    d = diff_constitutions(a, b, few_shot=counts["few_shot"] if counts else True)
    if as_json:
        typer.echo(json.dumps({**d.to_dict(), "touched": counts}, indent=2))
        return
    by = counts["by_cause"] if counts else {}
    rows = [(kind, pid) for kind in ("edited", "added", "removed", "redrawn")
            for pid in getattr(d, kind)] + ([("frame", "(system prompt / examples)")] if d.frame else [])
    typer.echo(f"{a.name} {a.version} -> {b.name} {b.version}: "
               + (f"{len(rows)} change{'s' * (len(rows) != 1)}" if rows else "no changes"))
    width = max([len(p) for _, p in rows] + [8])
    for kind, pid in rows:
        n = by.get(counts["frame"] if kind == "frame" else pid, 0) if counts else None
        typer.echo(f"  {kind:<8} {pid:<{width}}" + ("" if n is None else f"  {n} records"))
    if counts:
        if by.get(counts["route"]):
            typer.echo(f"  routing  {'(candidates changed)':<{width}}  {by[counts['route']]} records")
        typer.echo(f"{counts['stale']} of {counts['records']} records in {run} would be made again")


@app.command("test")
def test_cmd(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="constitution file or shipped name (its `tests:` and "
                                         "NAME.tests.yaml beside it)"),
    model: str = typer.Option(None, "--model", help="feedback model: judges critique cases, "
                                                    "compares preference cases (default: the "
                                                    "embedded model)"),
    policy: str = typer.Option(None, "--policy", help="model or directory that answers "
                                                      "behaviour cases (default: --model)"),
    backend: str = typer.Option(None, "--backend", help="vllm | transformers (default: vllm "
                                                        "when installed)"),
    junit: Path = typer.Option(None, "--junit", help="also write JUnit XML here"),
    min_pass: float = typer.Option(0.8, "--min-pass", min=0.0, max=1.0,
                                   help="exit 1 when a principle's pass rate is below this"),
    few_shot: bool = typer.Option(True, "--few-shot/--no-few-shot",
                                  help="show the constitution's worked comparisons"),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="behaviour answers' length"),
) -> None:
    """Run the constitution's test cases: a pytest-like table, pass rates per principle and
    per kind; exit 1 when a principle falls below --min-pass."""
    from cai.constitution.cases import load_cases

    try:
        c, cases, files = load_cases(file)
    except ConstitutionError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if not cases:
        fail(f"{file}: no test cases (write a `tests:` section, or "
             f"{Path(c.sources[0]).stem}.tests.yaml beside it)")
    from cai.backends import load_backend
    from cai.eval.casereport import below, format_results, junit_xml
    from cai.eval.casetests import run_cases

    typer.echo(f"{c.name} {c.version}: {len(cases)} cases from {', '.join(files)}", err=True)
    _engine_logs_off_the_terminal(ctx, "constitution-test")
    feedback = load_backend(backend, model)
    pol = load_backend(backend, policy) if policy and policy != model else None
    try:
        results = run_cases(cases, c, feedback, pol, few_shot=few_shot, max_tokens=max_tokens)
    finally:
        for b in (feedback, pol):
            if b is not None:
                b.close()
    typer.echo(format_results(results, min_pass))
    if junit:
        from cai.io import atomic_write_text

        atomic_write_text(junit, junit_xml(results, c.name))
    if below(results, min_pass):
        raise typer.Exit(1)


def _engine_logs_off_the_terminal(ctx: typer.Context, name: str) -> None:
    """As for the stage commands (cai/cli/__init__.py): the engines' output goes to
    $CAI_HOME/logs/NAME.log for the rest of the command, unless `cai --verbose`."""
    if ctx.find_root().params.get("verbose"):
        return
    from cai.cli import _engine_output_to
    from cai.models import cai_home

    ctx.with_resource(_engine_output_to(cai_home() / "logs" / f"{name}.log"))


@app.command("health")
def health_cmd(
    run_dir: Path = typer.Argument(..., help="a `cai run` directory (generate/, label/, eval/) "
                                             "or a `cai generate` run directory"),
    constitution: str = typer.Option(None, "--constitution", help="the constitution (default: "
                                                                  "the one generate used)"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
    min_rm_accuracy: float = typer.Option(
        None, "--min-rm-accuracy", min=0.0, max=1.0,
        help="flag a principle whose held-out pairs the reward model ranks right less often "
             "than this (default 0.6)"),
) -> None:
    """Per principle: how often it was drawn or routed, how often its critique changed the
    answer, its usable-revision rate and reject reasons, its labels' position consistency
    and confidence, the reward model's accuracy on the held-out pairs labeled under it, and
    the final policy's decline and on-topic rates on held-out prompts routed to it.
    Principles below the thresholds (docs/constitutions.md) are flagged."""
    from cai.eval.health import run_health
    from cai.eval.health_table import format_health, used_constitution

    if not run_dir.is_dir():
        fail(f"{run_dir}: no such directory")
    ref = constitution or used_constitution(run_dir)
    if ref is None:
        fail(f"{run_dir}: no generate manifest names the constitution; pass --constitution")
    health = run_health(run_dir, _load_or_exit(ref), thresholds=None if min_rm_accuracy is None
                        else {"rm_accuracy": min_rm_accuracy})
    if as_json:
        typer.echo(json.dumps(health, indent=2))
        return
    typer.echo(format_health(health))
