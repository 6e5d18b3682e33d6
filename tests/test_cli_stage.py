"""The generated stage commands (cai.cli.stage): every stage command takes --config (a bare
section file) with flags on top, refuses the old spellings naming the new key, and prints
each field's description and default once in its help."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from cai.cli import app
from cai.config import ConfigError, load_section
from cai.eval.policy import EvalPolicyConfig
from cai.eval.rm import EvalRMConfig
from cai.eval.score import JudgeScoreConfig, ScoreConfig
from cai.generate.config import GenerateConfig
from cai.label.run import LabelRunConfig
from cai.label.sample import SampleRunConfig
from cai.train.rm import RMConfig
from cai.train.sft import SFTConfig

# (command, config class, a bare section that validates, a flag that overrides one field)
COMMANDS = [
    (["generate"], GenerateConfig, {"prompts": "p.jsonl", "out": "g", "seed": 1},
     ["--seed", "7"], ("seed", 7)),
    (["sample"], SampleRunConfig, {"prompts": "p.jsonl", "out": "c.jsonl", "n": 3},
     ["--n", "4"], ("n", 4)),
    (["label"], LabelRunConfig, {"pairs": "c.jsonl", "out": "l", "principles": 2},
     ["-k", "3"], ("principles", 3)),
    (["score"], ScoreConfig, {"model": "rm", "data": "d.jsonl", "out": "s.jsonl"},
     ["--batch-size", "2"], ("batch_size", 2)),
    (["score", "--judge"], JudgeScoreConfig, {"data": "d.jsonl", "out": "s.jsonl", "k": 2},
     ["-k", "5"], ("k", 5)),
    (["eval", "rm"], EvalRMConfig, {"model": "rm", "data": "d.jsonl", "max_length": 64},
     ["--max-length", "32"], ("max_length", 32)),
    (["eval", "policy"], EvalPolicyConfig,
     {"model": "pol", "out": "e", "harmful": ["h.jsonl"], "max_tokens": 16},
     ["--max-tokens", "8", "--backend-option", "gpu_memory_utilization=0.2"], ("max_tokens", 8)),
    (["train", "sft"], SFTConfig, {"data": ["d.jsonl"], "out": "o", "lr": 1.0e-3},
     ["--lr", "0.5", "--lr-scheduler", "cosine"], ("lr", 0.5)),
    (["train", "rm"], RMConfig, {"data": "d.jsonl", "out": "o", "epochs": 2},
     ["--epochs", "3", "--no-share-prompt"], ("epochs", 3)),
]


@pytest.fixture
def captured(monkeypatch):
    """Replace each command's body past config building: record the validated config."""
    from cai.cli import stage

    seen: list = []
    real = stage.StageArgs.config

    def config(self, cls):
        cfg = real(self, cls)
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(stage.StageArgs, "config", config)
    return seen


@pytest.mark.parametrize("argv,cls,section,flags,changed", COMMANDS,
                         ids=[" ".join(c[0]) for c in COMMANDS])
def test_config_file_with_flags_on_top(tmp_path, captured, argv, cls, section, flags, changed):
    path = tmp_path / "section.yaml"
    path.write_text(yaml.safe_dump(section))
    res = CliRunner().invoke(app, [*argv, "--config", str(path)])
    assert res.exit_code == 0, res.output
    assert captured[-1] == cls.model_validate(section)
    res = CliRunner().invoke(app, [*argv, "--config", str(path), *flags])
    assert res.exit_code == 0, res.output
    name, value = changed
    assert getattr(captured[-1], name) == value
    untouched = {k: v for k, v in section.items() if k != name}
    assert {k: getattr(captured[-1], k) for k in untouched} == \
        {k: getattr(cls.model_validate(section), k) for k in untouched}


def test_backend_option_and_lists_reach_the_config(tmp_path, captured):
    res = CliRunner().invoke(app, ["eval", "policy", "-m", "pol", "-o", str(tmp_path), "-p", "a",
                                   "-p", "b", "--backend-option", "gpu_memory_utilization=0.25",
                                   "--backend-option", "base_url=http://x/v1", "--reward", "rm"])
    assert res.exit_code == 0, res.output
    cfg = captured[-1]
    assert cfg.prompts == ["a", "b"] and cfg.reward == "rm"
    assert cfg.backend_options == {"gpu_memory_utilization": 0.25, "base_url": "http://x/v1"}


def test_a_pipeline_files_section_is_read(tmp_path, captured):
    path = tmp_path / "p.yaml"
    path.write_text("run: {name: t}\nrm:\n  data: d.jsonl\n  lr: 2.0e-4\n")
    res = CliRunner().invoke(app, ["train", "rm", "--config", str(path), "-o", "x"])
    assert res.exit_code == 0, res.output
    assert (captured[-1].lr, captured[-1].out, captured[-1].data) == (2e-4, "x", ["d.jsonl"])


@pytest.mark.parametrize("argv,old,new", [
    (["train", "sft"], "--output-dir", "--out"),
    (["train", "rm"], "--learning-rate", "--lr"),
    (["train", "sft"], "--scheduler", "--lr-scheduler"),
    (["generate"], "--max-new-tokens", "--max-tokens"),
    (["generate"], "--field", "--prompt-field"),
    (["eval", "policy"], "--reward-model", "--reward"),
    (["eval", "policy"], "--gpu-memory-utilization", "--backend-option gpu_memory_utilization=VALUE"),
    (["sample"], "--policy", "--model"),
])
def test_old_flags_are_usage_errors_naming_the_new_one(argv, old, new):
    res = CliRunner().invoke(app, [*argv, f"{old}=1"])
    assert res.exit_code == 2
    assert f"{old} is now {new}" in " ".join(res.output.split()).replace(" │", "")


def test_old_yaml_keys_are_refused_with_file_line_and_new_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("run: {name: t}\ngenerate:\n  prompts: p.jsonl\n  out: o\n  field: q\n"
                    "  max_new_tokens: 9\n")
    with pytest.raises(ConfigError) as e:
        load_section(path, "generate", GenerateConfig)
    assert f"{path}:5: generate.field: `field` is now `prompt_field`" in str(e.value)
    assert f"{path}:6: generate.max_new_tokens: `max_new_tokens` is now `max_tokens`" in str(e.value)
    bare = tmp_path / "eval.yaml"
    bare.write_text("model: m\nout: o\ngpu_memory_utilization: 0.3\n")
    res = CliRunner().invoke(app, ["eval", "policy", "--config", str(bare)])
    assert res.exit_code == 1
    assert (f"{bare}:3: eval.gpu_memory_utilization: `gpu_memory_utilization` is now "
            "`backend_options.gpu_memory_utilization`") in res.output


def test_old_pipeline_keys_are_located(tmp_path):
    from cai.pipeline import builtin_stages
    from cai.pipeline.runner import plan
    from cai.pipeline.spec import PipelineError, load_pipeline

    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(f"run: {{name: t, out: {tmp_path / 'run'}}}\nsft:\n  data: [d]\n"
                    "  scheduler: cosine\n")
    stages = builtin_stages()
    with pytest.raises(PipelineError) as e:
        plan(load_pipeline(path, [s.name for s in stages]), stages, echo=lambda m: None)
    assert f"{path}:4:3: sft.scheduler: `scheduler` is now `lr_scheduler`" in str(e.value)


@pytest.mark.parametrize("argv,cls", [(["train", "rm"], RMConfig), (["sample"], SampleRunConfig),
                                      (["eval", "policy"], EvalPolicyConfig)])
def test_help_shows_each_description_and_default_once(argv, cls):
    res = CliRunner().invoke(app, [*argv, "--help"], terminal_width=1000,
                             env={"COLUMNS": "1000"})
    assert res.exit_code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.output).split())
    for name, info in cls.model_fields.items():
        if not info.description or name in ("backend_options", "ray"):  # their own flags
            continue
        default = info.get_default(call_default_factory=True) if not info.is_required() else None
        want = " ".join(info.description.split())
        if default not in (None, [], {}):
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            want += f" (default: {shown})"
            assert text.count(f"(default: {shown})") >= 1
        assert text.count(want) == 1, (name, want)


@pytest.mark.parametrize("argv,given,backend", [
    (["generate", "--prompts", "p.jsonl", "-o", "g", "--backend", "vllm"],
     ["--base-url", "http://x/v1"], "vllm"),
    (["label", "--pairs", "c.jsonl", "-o", "l", "--backend", "transformers"],
     ["--api-key", "k", "--max-concurrency", "4"], "transformers"),
    (["eval", "policy", "-m", "pol", "-o", "e", "-p", "h.jsonl"],
     ["--request-timeout", "5"], "the default"),
])
def test_remote_engine_flags_without_backend_openai_are_usage_errors(argv, given, backend):
    res = CliRunner().invoke(app, [*argv, *given])
    assert res.exit_code == 2, res.output
    names = " ".join(a for a in given if a.startswith("--"))
    assert f"error: {names}: only for --backend openai (this run's backend: {backend}); " \
           "add --backend openai" in res.output
    assert "TypeError" not in res.output


def test_remote_engine_flags_with_backend_openai_in_the_file(tmp_path, captured):
    path = tmp_path / "g.yaml"
    path.write_text("prompts: p.jsonl\nout: g\nbackend: openai\n")
    res = CliRunner().invoke(app, ["generate", "--config", str(path), "--base-url", "http://x/v1"])
    assert res.exit_code == 0, res.output
    assert captured[-1].backend_options == {"base_url": "http://x/v1"}


@pytest.mark.parametrize("flags,ray", [
    ([], None),
    (["--ray"], {}),  # $RAY_ADDRESS, else a local Ray
    (["--ray", "--no-progress"], {}),  # a bare --ray before another flag
    (["--ray", "10.0.0.1:6379", "--replicas", "2"], {"address": "10.0.0.1:6379", "replicas": 2}),
    (["--replicas", "4", "--gpus-per-replica", "1"], {"replicas": 4, "gpus_per_replica": 1.0}),
])
def test_ray_flags_make_the_ray_block(flags, ray, tmp_path):
    import typer

    from cai.cli.stage import stage_command
    from cai.config import EngineConfig, RayConfig

    seen = []
    cmd_app = typer.Typer()

    @stage_command(cmd_app, "x", [EngineConfig], section="x")
    def x(args):
        seen.append(args.config(EngineConfig))

    cmd_app.command("y")(lambda: None)  # two commands, so typer keeps the command name
    res = CliRunner().invoke(cmd_app, ["x", "--out", "o", *flags])
    assert res.exit_code == 0, res.output
    assert seen[0].ray == (None if ray is None else RayConfig(**ray))


def test_pipeline_ray_block_reaches_every_engine_stage_and_a_stage_overrides_it(tmp_path):
    from cai.config import RayConfig
    from cai.pipeline import builtin_stages
    from cai.pipeline.runner import plan
    from cai.pipeline.spec import load_pipeline

    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    stages = builtin_stages()
    def steps(run_extra: str, generate_extra: str = "", sft: str = "{}") -> dict:
        path = tmp_path / "p.yaml"
        path.write_text(f"run: {{name: t, out: {tmp_path / 'run'}{run_extra}}}\n"
                        f"prompts: {{train: [{{file: {tmp_path / 'p.jsonl'}}}]}}\n"
                        f"generate: {{prompts: train{generate_extra}}}\nsft: {sft}\n"
                        "sample: {prompts: train}\nlabel: {ray: {replicas: 3}}\n")
        return {s.stage.name: s for s in plan(load_pipeline(path, [s.name for s in stages]),
                                                stages, echo=lambda m: None)}

    on = steps(", ray: {address: 'h:1', replicas: 2}", ", ray: null")
    assert on["sample"].config.ray == RayConfig(address="h:1", replicas=2)
    assert on["label"].config.ray == RayConfig(address="h:1", replicas=3)  # key by key
    assert on["generate"].config.ray is None  # `ray: null`: this stage runs here
    # a training stage takes the cluster's address only for its Ray Train `workers:`
    assert on["sft"].config.ray is None
    assert steps(", ray: {address: 'h:1'}", sft="{workers: 2}")["sft"].config.ray == "h:1"
    off = steps("")
    assert off["sample"].config.ray is None
    # where the engines run is no part of a stage's identity: nothing reruns for it
    assert on["sample"].config_hash == off["sample"].config_hash
