"""The pipeline runner's rerun rules, on stages defined here (they write small files and log
their calls), shaped like the RL-CAI recipe: gen -> sft -> [sample -> label -> rm -> ppo]
x rounds -> eval. Real stages are exercised in test_pipeline_generate.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from cai.pipeline import (PipelineError, SelectionError, Stage, StageFailed, load_pipeline, plan,
                          run_pipeline)
from cai.pipeline.manifest import read_manifest

CALLS: list[str] = []


class FakeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int = 0
    out: str
    inputs: list[str] = []
    model: str | None = None
    seed: int = 0
    fail: bool = False
    progress: bool = True


def fake_run(config: FakeConfig, *, backend=None, log=None, progress=None) -> dict:
    out = Path(config.out)
    CALLS.append(out.relative_to(out.parent.parent if out.parent.name.startswith("round")
                                 else out.parent).as_posix())
    if config.fail:
        raise RuntimeError("boom")
    upstream = [json.loads((Path(p) / "result.json").read_text()) for p in config.inputs]
    result = {"value": config.value, "model": config.model, "seed": config.seed,
              "upstream": upstream, "backend": getattr(backend, "tag", None)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result))
    return {"value": config.value}


def _stage(name, deps=(), prev=(), per_round=False, engine=None, policy=False):
    def wire(w):
        inputs = [str(w.output(d)) for d in deps if w.has(d)]
        inputs += [str(p) for d in prev if (p := w.previous(d)) is not None]
        if policy:  # the latest policy: last round's ppo, else sft, else the base model
            latest = w.previous("ppo") or (w.output("sft") if w.has("sft") else None)
            inputs += [str(latest)] if latest else []
        return {"out": str(w.dir), "inputs": inputs}
    return Stage(name=name, config=FakeConfig, run=fake_run, wire=wire, per_round=per_round,
                 owned=("out", "inputs"), engine=engine, brief=lambda s: f"value {s.get('value')}")


def stages(engine=None):
    return [
        _stage("gen", engine=engine),
        _stage("sft", ["gen"]),
        _stage("sample", per_round=True, engine=engine, policy=True),
        _stage("label", ["sample"], per_round=True, engine=engine),
        _stage("rm", ["label"], prev=["rm"], per_round=True),
        _stage("ppo", ["rm", "sft"], prev=["ppo"], per_round=True),
        _stage("eval", ["ppo", "sft"]),
    ]


BASE = """\
run: {{name: t, out: {out}, rounds: {rounds}}}
gen: {{value: 1}}
sft: {{value: 2}}
sample: {{value: 3}}
label: {{}}
rm: {{value: 5}}
ppo: {{value: {ppo}}}
eval: {{}}
"""


def write(tmp_path: Path, text: str = BASE, **kw) -> Path:
    args = {"out": tmp_path / "run", "rounds": 1, "ppo": 6, **kw}
    path = tmp_path / "p.yaml"
    path.write_text(text.format(**args))
    return path


def go(path: Path, sts=None, **kw):
    sts = sts or stages()
    CALLS.clear()
    pipeline = load_pipeline(path, [s.name for s in sts])
    results = run_pipeline(pipeline, sts, echo=lambda m: None, **kw)
    return list(CALLS), {r.key: r.action for r in results}


def test_rerun_is_a_noop_and_changed_ppo_reruns_only_ppo_and_eval(tmp_path):
    path = write(tmp_path)
    calls, _ = go(path)
    assert calls == ["gen", "sft", "sample", "label", "rm", "ppo", "eval"]
    calls, actions = go(path)
    assert calls == [] and set(actions.values()) == {"skipped"}
    path = write(tmp_path, ppo=7)
    calls, _ = go(path)
    assert calls == ["ppo", "eval"]
    m = read_manifest(tmp_path / "run" / "ppo")
    assert m["status"] == "done" and m["summary"] == {"value": 7}
    assert set(m["inputs"]) == {"rm", "sft"}


def test_changed_upstream_reruns_everything_downstream(tmp_path):
    go(write(tmp_path))
    calls, _ = go(write(tmp_path, text=BASE.replace("value: 1}", "value: 9}")))
    assert calls == ["gen", "sft", "sample", "label", "rm", "ppo", "eval"]
    # the ppo output the eval read carries the new gen value through sft
    res = json.loads((tmp_path / "run" / "eval" / "result.json").read_text())
    assert res["upstream"][1]["upstream"][0]["value"] == 9


def test_volatile_field_change_is_not_a_config_change(tmp_path):
    go(write(tmp_path))
    calls, _ = go(write(tmp_path, text=BASE.replace("label: {{}}", "label: {{progress: false}}")))
    assert calls == []


def test_same_output_stops_the_rerun_wave(tmp_path):
    """A forced rerun that writes the same bytes leaves downstream up to date."""
    path = write(tmp_path)
    go(path)
    calls, actions = go(path, only="label")
    assert calls == ["label"]
    assert actions["sample"] == "not selected" and actions["rm"] == "not selected"
    calls, _ = go(path)
    assert calls == []


def test_from_forces_the_stage_and_everything_after(tmp_path):
    path = write(tmp_path)
    go(path)
    calls, actions = go(path, from_="rm")
    assert calls == ["rm", "ppo", "eval"]
    assert actions["gen"] == "not selected"


def test_only_needs_finished_upstream(tmp_path):
    path = write(tmp_path)
    with pytest.raises(SelectionError, match="sft has not finished and ppo needs it"):
        go(path, only="ppo")
    with pytest.raises(SelectionError, match="no stage 'ppx'"):
        go(path, only="ppx")


def test_deleted_output_reruns_that_stage(tmp_path):
    path = write(tmp_path)
    go(path)
    (tmp_path / "run" / "rm" / "result.json").unlink()
    calls, _ = go(path)
    assert calls == ["rm"]  # same bytes again, so ppo and eval stay up to date


def test_failed_stage_keeps_finished_work_and_resumes(tmp_path):
    path = write(tmp_path, text=BASE.replace("rm: {{value: 5}}", "rm: {{value: 5, fail: true}}"))
    with pytest.raises(StageFailed, match="rm failed: RuntimeError: boom"):
        go(path)
    assert read_manifest(tmp_path / "run" / "rm")["status"] == "failed"
    assert read_manifest(tmp_path / "run" / "label")["status"] == "done"
    calls, _ = go(write(tmp_path))
    assert calls == ["rm", "ppo", "eval"]


def test_left_out_stages_rewire_their_consumers(tmp_path):
    text = BASE.replace("sft: {{value: 2}}\n", "").replace("label: {{}}\n", "")
    calls, _ = go(write(tmp_path, text=text))
    assert calls == ["gen", "sample", "rm", "ppo", "eval"]
    m = read_manifest(tmp_path / "run" / "rm")
    assert set(m["inputs"]) == set()  # no label: this fake rm has nothing upstream
    assert set(read_manifest(tmp_path / "run" / "eval")["inputs"]) == {"ppo"}


def test_rounds_chain_policy_and_reward_model(tmp_path):
    path = write(tmp_path, rounds=2)
    calls, _ = go(path)
    assert calls == ["gen", "sft", "round1/sample", "round1/label", "round1/rm", "round1/ppo",
                     "round2/sample", "round2/label", "round2/rm", "round2/ppo", "eval"]
    inputs = lambda key: set(read_manifest(tmp_path / "run" / key)["inputs"])  # noqa: E731
    assert inputs("round1/sample") == {"sft"}
    assert inputs("round2/sample") == {"round1/ppo"}  # the latest policy
    assert inputs("round2/rm") == {"round2/label", "round1/rm"}  # continues the RM
    assert inputs("round2/ppo") == {"round2/rm", "sft", "round1/ppo"}
    assert inputs("eval") == {"round2/ppo", "sft"}
    calls, _ = go(path, only="round2/ppo")
    assert calls == ["round2/ppo"]
    calls, _ = go(write(tmp_path, rounds=2, ppo=8))
    assert calls == ["round1/ppo", "round2/sample", "round2/label", "round2/rm", "round2/ppo",
                     "eval"]


def test_run_settings_fill_unset_fields(tmp_path):
    text = "run: {{name: t, out: {out}, model: base-m, seed: 5}}\ngen: {{}}\nsft: {{model: own, seed: 1}}\n"
    go(write(tmp_path, text=text))
    gen = json.loads((tmp_path / "run" / "gen" / "result.json").read_text())
    sft = json.loads((tmp_path / "run" / "sft" / "result.json").read_text())
    assert (gen["model"], gen["seed"]) == ("base-m", 5)
    assert (sft["model"], sft["seed"]) == ("own", 1)


class FakeEngine:
    def __init__(self, tag):
        self.tag, self.closed = tag, False

    def close(self):
        self.closed = True


def test_one_engine_for_the_run_kept_through_training_while_memory_allows(tmp_path):
    from cai.pipeline import EnginePool

    opened = []

    def load(name, model, **options):
        opened.append(FakeEngine(f"{name}:{model}"))
        return opened[-1]

    def pool(free_gib):
        return EnginePool(lambda m: None, load, footprint=lambda *a: 2 << 30,
                          available=lambda: free_gib << 30, train_reserve=8 << 30)

    engine = lambda config: ("fake", config.model, {})  # noqa: E731
    sts = stages(engine)
    text = BASE.replace("sft: {{value: 2}}\n", "")  # gen, sample, label share the base engine
    go(write(tmp_path, text=text), sts, engines=pool(20))
    assert len(opened) == 1 and opened[0].closed
    for key in ("gen", "sample", "label"):
        assert json.loads((tmp_path / "run" / key / "result.json").read_text())["backend"] == "fake:None"
    opened.clear()
    go(write(tmp_path, out=tmp_path / "run2"), sts, engines=pool(20))
    assert len(opened) == 1  # gen | sft (trains beside it: 20 GiB free) | sample, label
    opened.clear()
    go(write(tmp_path, out=tmp_path / "run3"), sts, engines=pool(6))
    assert len(opened) == 2  # gen | sft (6 GiB free < 8 to train: closed) | sample, label
    assert all(e.closed for e in opened)


@pytest.mark.parametrize("text, expected", [
    ("run: {{name: t, out: {out}}}\ngen: {{}}\nlable: {{}}\n",
     r"p.yaml:3:1: unknown section 'lable' \(did you mean 'label'\?\)"),
    ("run: {{name: t, out: {out}}}\ngen:\n  value: 1\n  valeu: 2\n",
     r"p.yaml:4:3: gen.valeu: unknown key 'valeu'"),
    ("run: {{name: t, out: {out}}}\ngen:\n  value: one\n",
     r"p.yaml:3:3: gen.value: Input should be a valid integer"),
    ("run: {{name: t, out: {out}}}\ngen:\n  out: elsewhere\n",
     r"p.yaml:3:3: gen.out: filled in by the runner"),
    ("run: {{name: t, out: {out}, rounds: 0}}\ngen: {{}}\n",
     r"p.yaml:1:\d+: run.rounds: Input should be greater than or equal to 1"),
    ("gen: {{}}\n", r"p.yaml:1:1: missing `run:` section"),
    ("run: {{name: t, out: {out}}}\ngen: [1, 2\n", r"p.yaml:\d+:\d+: YAML syntax error"),
    ("run: {{name: t, out: {out}}}\nprompts:\n  train:\n    - {{file: nope.jsonl}}\ngen: {{}}\n",
     r"p.yaml:4:7: prompts.train\[0\].file: nope.jsonl does not exist"),
])
def test_bad_pipeline_errors_are_located(tmp_path, text, expected):
    path = write(tmp_path, text=text)
    sts = stages()
    with pytest.raises(PipelineError, match=expected):
        plan(load_pipeline(path, [s.name for s in sts]), sts, echo=lambda m: None)


def test_prompt_sets_take_rows_from_several_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": f"a{i}", "prompt": f"A {i}"}) + "\n" for i in range(5)))
    b.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"B {i}"}) + "\n" for i in range(5)))
    text = textwrap.dedent(f"""\
        run: {{name: t, out: {tmp_path / 'run'}}}
        prompts:
          train:
            - {{file: {a}, limit: 2}}
            - {{file: {b}, skip: 1, limit: 2}}
        gen: {{}}
        """)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    sts = stages()
    plan(load_pipeline(path, [s.name for s in sts]), sts, echo=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "prompts" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a0", "a1", "b1", "b2"]


def test_a_grown_limit_keeps_the_outputs_a_stage_resumes_into(tmp_path):
    """generate's `limit` (here `value`) only grew: its directory stays, so it adds records
    to those it has; shrunk, or grown along with another change: cleared as usual."""
    from dataclasses import replace

    sts = stages()
    sts[0] = replace(sts[0], grows=("value",))
    go(write(tmp_path), sts)
    kept = tmp_path / "run" / "gen" / "earlier-records"

    def rerun(gen_section):
        kept.write_text("x")
        calls, _ = go(write(tmp_path, text=BASE.replace("gen: {{value: 1}}", gen_section)), sts)
        return calls[:1] == ["gen"], kept.exists()

    assert rerun("gen: {{value: 3}}") == (True, True)  # grew: kept
    assert rerun("gen: {{value: 3}}") == (False, True)  # up to date: nothing ran
    assert rerun("gen: {{value: 2}}") == (True, False)  # shrank: cleared
    assert rerun("gen: {{value: 5, seed: 1}}") == (True, False)  # another field too: cleared


def test_the_before_after_table_gives_n_and_intervals(tmp_path):
    from cai.pipeline.stages import final_eval

    prop = lambda k, n, lo, hi: {"rate": k / n, "k": k, "n": n, "ci95": [lo, hi]}  # noqa: E731
    summary = {"reference": {"harmful_safe": prop(5, 44, 0.05, 0.24),
                             "benign_over_refusal": prop(0, 50, 0.0, 0.071),
                             "reward": {"mean": -0.5, "n": 94}},
               "policy": {"harmful_safe": prop(22, 44, 0.355, 0.645),
                          "benign_over_refusal": prop(3, 50, 0.021, 0.162),
                          "reward": {"mean": 0.25, "n": 94}},
               "kl": {"mean": 4.0, "se": 0.5, "n": 94},
               "report": {"html": "run/report.html"}}
    lines = final_eval(summary, tmp_path / "eval")
    rows = {ln[:31].strip(): ln[31:].split("  ") for ln in lines if ln[:31].strip()}
    cells = lambda name: [c.strip() for c in rows[name] if c.strip()]  # noqa: E731
    assert cells("refusal/redirect on harmful") == ["11.4% [5-24] n=44", "50.0% [36-64] n=44"]
    assert cells("over-refusal on benign") == ["0.0% [0-7] n=50", "6.0% [2-16] n=50"]
    assert cells("KL(policy || reference), nats") == ["0", "4.00 ± 0.98"]
    assert cells("mean reward (reward model)") == ["-0.50", "0.25"]
    assert lines[-1] == "report: run/report.html"


def test_ctrl_c_stops_cai_run_keeping_finished_stages(tmp_path, monkeypatch):
    """SIGINT in the middle of a stage: `cai run` stops at once with 130 and no traceback,
    says how to go on; the stages before are kept and a rerun starts at the stopped one."""
    import os
    import signal

    from typer.testing import CliRunner

    import cai.pipeline
    from cai.cli import app

    def interrupting_run(config: FakeConfig, *, backend=None, log=None, progress=None) -> dict:
        if config.value == 5:  # rm: Ctrl-C arrives while it works
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the signal should have stopped the stage")
        return fake_run(config, backend=backend)

    import dataclasses

    sts = [dataclasses.replace(s, run=interrupting_run) for s in stages()]
    monkeypatch.setattr(cai.pipeline, "builtin_stages", lambda: sts)
    path = write(tmp_path)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert "stopped by SIGINT during rm; finished stages are kept" in result.output
    assert f"rerun `cai run {path}` to go on" in result.output
    assert read_manifest(tmp_path / "run" / "label")["status"] == "done"
    assert read_manifest(tmp_path / "run" / "rm")["status"] == "failed"
    sts[:] = stages()
    CALLS.clear()
    assert CliRunner().invoke(app, ["run", str(path)]).exit_code == 0
    assert CALLS == ["rm", "ppo", "eval"]


class WithConstitution(FakeConfig):
    constitution: str | None = None


def test_a_stage_that_rebuilds_keeps_its_outputs_when_only_the_constitution_changed(tmp_path):
    """generate remakes only the records a constitution edit touched (it `rebuilds` the
    constitution input): its directory stays; without `rebuilds` it is cleared."""
    from dataclasses import replace

    from cai.constitution import SHIPPED_DIR

    for rebuilds, stays in ((("constitution",), True), ((), False)):
        tmp = tmp_path / str(stays)
        tmp.mkdir()
        constitution = tmp / "c.yaml"
        constitution.write_text((SHIPPED_DIR / "harmless.yaml").read_text())
        text = BASE.replace("gen: {{value: 1}}", f"gen: {{{{value: 1, constitution: {constitution}}}}}")
        kept = tmp / "run" / "gen" / "earlier-records"
        sts = stages()
        sts[0] = replace(sts[0], config=WithConstitution, rebuilds=rebuilds)
        go(write(tmp, text=text), sts)
        kept.write_text("x")
        constitution.write_text(constitution.read_text().replace(
            "Name the specific parts that do.", "Quote them."))
        calls, _ = go(write(tmp, text=text), sts)
        assert calls[0] == "gen" and kept.exists() == stays


def test_a_rebuilds_entry_naming_a_stage_covers_its_steps_in_every_round(tmp_path):
    """label `rebuilds` its upstream pairs (it relabels only the pairs that changed): when
    round2/sample's output changes, round2/label's directory stays; it is cleared when
    `rebuilds` does not name sample."""
    from dataclasses import replace

    for rebuilds, stays in ((("sample",), True), ((), False)):
        tmp = tmp_path / str(stays)
        tmp.mkdir()
        sts = stages()
        sts[3] = replace(sts[3], rebuilds=rebuilds)
        go(write(tmp, rounds=2), sts)
        kept = tmp / "run" / "round2" / "label" / "earlier-labels"
        kept.write_text("x")
        calls, _ = go(write(tmp, text=BASE.replace("sample: {{value: 3}}", "sample: {{value: 4}}"),
                            rounds=2), sts)
        assert "round2/label" in calls and kept.exists() == stays
