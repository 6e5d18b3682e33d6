"""One engine per model for the whole `cai run` (`cai.pipeline.engines.EnginePool`): started
once, kept while a later step needs it and the next step's memory allows, closed when no
later step needs it. Engines here are fakes that count starts and closes; memory is faked."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cai.pipeline import EnginePool, Stage, load_pipeline, run_pipeline

GiB = 1 << 30
EVENTS: list[str] = []


class Engine:
    def __init__(self, model):
        self.model = model
        EVENTS.append(f"start {model}")

    def close(self):
        EVENTS.append(f"close {self.model}")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str
    model: str | None = None
    reference: str | None = None
    seed: int = 0
    progress: bool = True


def run(config, *, backend=None, reference_backend=None, log=None, progress=None):
    EVENTS.append(f"{Path(config.out).name} on {getattr(backend, 'model', None)}"
                  + (f" + {reference_backend.model}" if reference_backend else ""))
    Path(config.out).mkdir(parents=True, exist_ok=True)
    (Path(config.out) / "done").write_text("1")
    return {}


def stage(name, engine=True, reference=False):
    return Stage(name=name, config=Config, run=run, wire=lambda w: {"out": str(w.dir)},
                 engine=(lambda c: ("fake", c.model, {})) if engine else None,
                 more_engines=((lambda c: {"reference_backend": ("fake", c.reference, {})})
                               if reference else None))


# the demo's shape: base model for generate and label, the SFT model for sample, the PPO
# policy and the base model (reference) for eval; sft, rm and ppo train
STAGES = [stage("generate"), stage("sft", engine=False), stage("sample"), stage("label"),
          stage("rm", engine=False), stage("ppo", engine=False), stage("eval", reference=True)]
PIPELINE = """\
run: {{name: t, out: {out}}}
generate: {{model: base}}
sft: {{}}
sample: {{model: sftmodel}}
label: {{model: base}}
rm: {{}}
ppo: {{}}
eval: {{model: policy, reference: base}}
"""


def go(tmp_path, free_gib: float, footprint_gib: float = 3) -> EnginePool:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(out=tmp_path / "run"))
    pool = EnginePool(lambda m: None, lambda name, model, **o: Engine(model),
                      footprint=lambda *a: int(footprint_gib * GiB),
                      available=lambda: int(free_gib * GiB), train_reserve=8 * GiB)
    EVENTS.clear()
    run_pipeline(load_pipeline(path, [s.name for s in STAGES]), STAGES, echo=lambda m: None,
                 engines=pool)
    return pool


def test_base_engine_serves_generate_label_and_eval_when_memory_allows(tmp_path):
    pool = go(tmp_path, free_gib=20)
    assert EVENTS == ["start base", "generate on base",
                      "sft on None",  # trains beside the idle base engine: 20 GiB free
                      "start sftmodel", "sample on sftmodel",
                      "close sftmodel",  # no later step samples from it
                      "label on base", "rm on None", "ppo on None",
                      "start policy", "eval on policy + base",
                      "close base", "close policy"]
    assert (pool.starts, pool.reused) == (3, 2)  # 5 starts before: one per engine step + eval's two
    for key in ("generate", "label", "eval"):
        assert json.loads((tmp_path / "run" / key / "stage.json").read_text())["status"] == "done"
    manifest = json.loads((tmp_path / "run" / "eval" / "stage.json").read_text())
    assert manifest["engine_starts"] == 1  # the policy; the reference was running


def test_tight_memory_closes_the_idle_engine_for_training_and_new_engines(tmp_path):
    # 6 GiB free: under the 8 GiB a training step claims, over the 3 GiB of a new engine
    go(tmp_path, free_gib=6)
    assert EVENTS == ["start base", "generate on base",
                      "close base", "sft on None",  # 6 GiB free < 8 to train
                      "start sftmodel", "sample on sftmodel", "close sftmodel",
                      "start base", "label on base",
                      "close base", "rm on None", "ppo on None",
                      "start policy", "start base", "eval on policy + base",
                      "close policy", "close base"]


def test_an_idle_engine_is_closed_when_a_new_one_would_not_fit(tmp_path):
    # 9 GiB free: training fits beside the idle engine (>= 8), a 10 GiB engine does not
    go(tmp_path, free_gib=9, footprint_gib=10)
    assert EVENTS[:7] == ["start base", "generate on base", "sft on None",
                          "close base",  # sample's 10 GiB engine does not fit beside it
                          "start sftmodel", "sample on sftmodel", "close sftmodel"]


def test_model_spellings_of_the_default_model_share_one_engine():
    from cai.models import DEFAULT_MODEL, models_dir
    from cai.pipeline.engines import model_key

    assert model_key(None) == model_key(DEFAULT_MODEL) == model_key(str(models_dir() / DEFAULT_MODEL))
    assert model_key("out/ppo/policy") != model_key(None)


def test_eval_takes_the_policy_reference_and_judge_engines(tmp_path):
    from cai.eval.policy import EvalPolicyConfig
    from cai.pipeline.runner import Step, step_engines
    from cai.pipeline.stages import EVAL

    def engines(**kw):
        config = EvalPolicyConfig(out=str(tmp_path), model="pol", backend="vllm",
                                  backend_options={"gpu_memory_utilization": 0.3}, **kw)
        return step_engines(Step(key="eval", stage=EVAL, round=None, dir=tmp_path,
                                 config=config, config_hash="", used=[]))

    opts = {"gpu_memory_utilization": 0.3}
    assert engines(reference="base") == {"backend": ("vllm", "pol", opts),
                                         "reference_backend": ("vllm", "base", opts)}
    assert engines(reference="base", judge_model="judge")["judge_backend"] == ("vllm", "judge", opts)
    assert "judge_backend" not in engines(reference="base", judge_model="judge", constitution="none")
    assert engines() == {"backend": ("vllm", "pol", opts)}  # no reference: the policy alone


def test_cai_run_eval_reuses_generates_engine_for_policy_and_reference(tmp_path, tiny_model_dir):
    """The real generate and eval stages (transformers backend, tiny random model): eval's
    policy and reference are the base model, so the engine generate started serves both."""
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.pipeline.manifest import read_manifest
    from pipeline_yaml import generate_then_eval

    path = generate_then_eval(tmp_path / "p.yaml", f"name: t, out: {tmp_path / 'run'}, "
                              f"model: {tiny_model_dir}, backend: transformers",
                              tiny_model_dir, tiny_model_dir)
    r = CliRunner().invoke(app, ["run", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.count("starting the transformers engine") == 1
    assert "reusing the transformers engine" in r.output
    m = read_manifest(tmp_path / "run" / "eval")
    assert m["status"] == "done" and m["engine_starts"] == 0
    assert m["summary"]["kl"]["mean"] == 0.0  # the same weights on both sides
    assert "policy_load_s" not in m["summary"]["timings"]  # eval loaded no model itself


# ---------------------------------------------------------------- one engine, weights swapped
# Fakes of a vLLM engine that swaps weights (`cai.backends.vllm_swap`): it answers with the
# model whose weights it holds, so a call on the wrong weights shows in the stage's record.


from cai.backends.vllm_swap import VLLMWeightsView  # noqa: E402


class SwapEngine(Engine):
    def __init__(self, model):
        import threading

        super().__init__(model)
        self.weights, self.lock, self.tokenizer = model, threading.RLock(), None

    def load_weights(self, model):
        EVENTS.append(f"swap {self.weights} -> {model}")
        self.weights = model

    def generate(self, conversations, sampling):
        return [[self.weights] for _ in conversations]


def ask(backend) -> str:
    return backend.generate([[]], None)[0][0]


def run_and_ask(config, *, backend=None, reference_backend=None, log=None, progress=None):
    """Like `run`, but each engine answers: eval alternates policy, reference, policy. Then
    it closes what it was given, as a stage closes the engines it loaded itself: a view's
    close must leave the shared engine running."""
    answers = [ask(backend)] if backend else []
    if reference_backend:
        answers += [ask(reference_backend), ask(backend)]
    for given in (backend, reference_backend):
        if isinstance(given, VLLMWeightsView):
            given.close()
    EVENTS.append(f"{Path(config.out).name} on {getattr(backend, 'model', None)}: "
                  + ",".join(answers))
    Path(config.out).mkdir(parents=True, exist_ok=True)
    (Path(config.out) / "done").write_text("1")
    return {}


SWAP_STAGES = [Stage(name=s.name, config=Config, run=run_and_ask, wire=s.wire, engine=s.engine,
                     more_engines=s.more_engines) for s in STAGES]


def go_swapping(tmp_path, family, swap_weights=True, free_gib=20) -> EnginePool:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(out=tmp_path / "run"))
    pool = EnginePool(lambda m: EVENTS.append(m.strip()) if "swapped" in m else None,
                      lambda name, model, **o: SwapEngine(model),
                      footprint=lambda *a: 3 * GiB, available=lambda: int(free_gib * GiB),
                      train_reserve=8 * GiB, swap_weights=swap_weights, family=family)
    EVENTS.clear()
    run_pipeline(load_pipeline(path, [s.name for s in STAGES]), SWAP_STAGES,
                 echo=pool.echo, engines=pool)
    return pool


def one_family(name, model, options):
    return ("tiny-llama", model)


def test_one_family_runs_the_demo_on_one_engine_with_each_call_on_its_own_weights(tmp_path):
    pool = go_swapping(tmp_path, one_family)
    swapped = [e for e in EVENTS if e.startswith("swapped")]
    assert [e for e in EVENTS if not e.startswith("swapped")] == [
        "start base", "generate on base: base",
        "sft on None: ",  # trains beside the engine: 20 GiB free
        "swap base -> sftmodel", "sample on sftmodel: sftmodel",
        "swap sftmodel -> base", "label on base: base", "rm on None: ", "ppo on None: ",
        # eval: policy, reference, policy again: every answer from its own weights
        "swap base -> policy", "swap policy -> base", "swap base -> policy",
        "eval on policy: policy,base,policy",
        "close base"]  # the engine started on base, closed once at the end
    assert len(swapped) == 5 and swapped[0].startswith("swapped sftmodel's weights into the vllm engine (")
    assert (pool.starts, pool.swaps) == (1, 5)
    manifest = json.loads((tmp_path / "run" / "eval" / "stage.json").read_text())
    assert (manifest["engine_starts"], manifest["engine_swaps"]) == (0, 3)
    sample = json.loads((tmp_path / "run" / "sample" / "stage.json").read_text())
    assert (sample["engine_starts"], sample["engine_swaps"]) == (0, 1)


def test_a_model_written_during_the_run_joins_the_family_when_its_step_comes(tmp_path):
    """A fresh run: when generate plans, sft's and ppo's outputs do not exist yet (no
    family); by their steps they do, and they share the base model's engine."""
    run = tmp_path / "run"
    written = {"sftmodel": run / "sft" / "done", "policy": run / "ppo" / "done"}
    pool = go_swapping(tmp_path, lambda n, m, o: ("f", m)
                       if m not in written or written[m].exists() else None)
    assert [e for e in EVENTS if e.startswith("start")] == ["start base"]
    assert pool.swaps == 5


def test_swapping_off_or_another_family_starts_an_engine_per_model(tmp_path):
    go_swapping(tmp_path, one_family, swap_weights=False)
    assert [e for e in EVENTS if e.startswith(("start", "swap "))] == [
        "start base", "start sftmodel", "start policy"]

    # the SFT model cannot be swapped in (another architecture, an adapter, ...): own engine
    pool = go_swapping(tmp_path / "2", lambda n, m, o: None if m == "sftmodel" else ("f", m))
    assert [e for e in EVENTS if e.startswith(("start", "swap ", "close"))] == [
        "start base", "start sftmodel", "close sftmodel", "swap base -> policy",
        "swap policy -> base", "swap base -> policy", "close base"]
    assert (pool.starts, pool.swaps) == (2, 3)


def test_a_family_engine_counts_once_against_memory(tmp_path):
    """6 GiB free, 3 GiB an engine: eval's policy and reference share one engine, so the
    engine started for it is one footprint, and training closes it as it closes any."""
    go_swapping(tmp_path, one_family, free_gib=6)
    assert [e for e in EVENTS if not e.startswith("swapped")] == [
        "start base", "generate on base: base",
        "close base", "sft on None: ",  # trains: 6 GiB < 8
        "start sftmodel", "sample on sftmodel: sftmodel",
        "swap sftmodel -> base", "label on base: base",
        "close sftmodel", "rm on None: ", "ppo on None: ",  # the engine started on sftmodel
        "start policy", "swap policy -> base", "swap base -> policy",
        "eval on policy: policy,base,policy", "close policy"]


def test_run_swap_weights_false_starts_an_engine_per_model(tmp_path, tiny_model_dir):
    """Two checkpoints of one architecture (the tiny model and a copy) on the vllm backend,
    through `cai run`'s own pool: one engine, or with `run: swap_weights: false` two."""
    import shutil

    base = str(Path(tiny_model_dir).resolve())
    other = str(Path(shutil.copytree(tiny_model_dir, tmp_path / "other")).resolve())
    stages = [Stage(name=name, config=Config, run=run_and_ask, wire=lambda w: {"out": str(w.dir)},
                    engine=lambda c: ("vllm", c.model, {})) for name in ("generate", "sample")]
    for swap, starts in (("true", ["start " + base]), ("false", ["start " + base, "start " + other])):
        path = tmp_path / f"{swap}.yaml"
        path.write_text(f"run: {{name: t, out: {tmp_path / swap}, swap_weights: {swap}}}\n"
                        f"generate: {{model: {base}}}\nsample: {{model: {other}}}\n")
        EVENTS.clear()
        run_pipeline(load_pipeline(path, ["generate", "sample"]), stages, echo=lambda m: None,
                     load_backend=lambda name, model, **o: SwapEngine(model))
        assert [e for e in EVENTS if e.startswith("start")] == starts
        assert EVENTS[-2] == f"sample on {other}: {other}"  # its own weights either way


def test_a_view_reloads_a_checkpoint_rewritten_in_the_same_directory(tmp_path):
    """The engine holds a directory's weights; a later step writes a new checkpoint there
    (same path): the next call loads it again, and calls in between do not."""
    from cai.backends.vllm_swap import weights_stamp

    model = tmp_path / "sft"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first")

    class StampedEngine(SwapEngine):
        def __init__(self, model):
            super().__init__(model)
            self.weights_stamp = weights_stamp(model)

        def load_weights(self, model):
            super().load_weights(model)
            self.weights_stamp = weights_stamp(model)

    EVENTS.clear()
    view = VLLMWeightsView(StampedEngine(str(model)), str(model))
    ask(view), ask(view)
    assert not [e for e in EVENTS if e.startswith("swap")]  # the loaded weights: no reload
    (model / "model.safetensors").write_bytes(b"second checkpoint")
    ask(view), ask(view)
    assert [e for e in EVENTS if e.startswith("swap")] == [f"swap {model} -> {model}"]
