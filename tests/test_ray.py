"""The data stages on a Ray cluster: two simulated nodes (`ray.cluster_utils.Cluster`, one
CPU each), a tiny random model on the transformers backend, one engine per actor. Every
record is written once, by the driver, into the files a local run writes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from child_env import REPO, child_env
from test_generate_resume import _records  # records without their timings

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="needs the ray extra (pip install 'cai[ray]')")

PROMPTS = str(REPO / "pipelines/prompts/red_team_train.jsonl")


def _has_dashboard() -> bool:
    """ray[default] (the dashboard and job server) installed, not only ray[data,train]."""
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each, shared by this module; this process connects as a driver."""
    from ray.cluster_utils import Cluster

    from cai.cluster import connect

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": _has_dashboard(), "dashboard_port": _free_port(),
        "dashboard_host": "127.0.0.1"})  # the dashboard runs `ray job submit`'s job server
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray = connect(c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def _gen_config(model_dir: Path, out: Path, *, limit: int = 6, ray: dict | None = None,
                max_tokens: int = 8):
    from cai.generate.config import load_config

    return load_config(None, {
        "prompts": PROMPTS, "out": str(out), "backend": "transformers", "model": str(model_dir),
        "limit": limit, "chunk_size": 1, "max_tokens": max_tokens, "few_shot": False,
        "temperature": 0.0, "seed": 3, "progress": False, "ray": ray})


@pytest.fixture(scope="module")
def local_generate(tmp_path_factory, tiny_model_dir):
    """The same generation, greedy, in this process without Ray (12 records)."""
    from cai.generate.run import run_generate

    out = tmp_path_factory.mktemp("local") / "gen"
    summary = run_generate(_gen_config(tiny_model_dir, out, limit=12, max_tokens=24))
    records = {r["id"]: r for r in _records(out)}
    records["summary"] = summary  # not a record id: 16 hex digits
    return records


def _assert_exactly_once_and_equal(run: Path, local: dict[str, dict], n: int) -> None:
    rows = _records(run)
    ids = [r["id"] for r in rows]
    assert len(ids) == n and len(set(ids)) == n  # every record once: no loss, no duplicate
    assert set(ids) == set(local) - {"summary"}
    assert not list(run.rglob("*.tmp"))
    for r in rows:
        assert r == local[r["id"]]  # field by field, timings aside


def test_generate_on_two_replicas_equals_local(cluster, tmp_path, tiny_model_dir,
                                               local_generate):
    from cai.generate.run import run_generate

    out = tmp_path / "ray"
    summary = run_generate(_gen_config(tiny_model_dir, out, limit=12, max_tokens=24,
                                       ray={"address": cluster.address, "replicas": 2}))
    nodes = {a["node_id"] for a in summary["ray_actors"]}
    assert len(summary["ray_actors"]) == 2 and len(nodes) == 2  # one engine on each node
    assert summary["records"] == 12 and summary["new_records"] == 12
    _assert_exactly_once_and_equal(out, local_generate, 12)
    local = local_generate["summary"]  # the datasets built from the records agree too
    for key in ("status", "sft", "preferences", "tokens"):
        assert summary[key] == local[key], key


def _cli(model_dir: Path, out: Path, address: str) -> subprocess.Popen:
    args = ["--prompts", PROMPTS, "-o", str(out), "--backend", "transformers", "--model",
            str(model_dir), "--limit", "12", "--chunk-size", "1", "--max-tokens", "24",
            "--no-few-shot", "--temperature", "0", "--seed", "3", "--no-progress",
            "--ray", address, "--replicas", "2"]
    return subprocess.Popen([sys.executable, "-m", "cai", "generate", *args], cwd=REPO,
                            env=child_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_shard(proc: subprocess.Popen, run: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any((run / "revisions").glob("part-*.parquet")):
            return
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the test could act:\n{proc.communicate()[1]}"
    raise AssertionError("no shard written in time")


def _engine_actors() -> list[tuple[str, str]]:
    import ray

    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("cai-engine-")]


def test_killed_actor_then_sigkilled_driver_then_rerun_is_exactly_once(
        cluster, tmp_path, tiny_model_dir, local_generate):
    """One run through both failures (one driver start, not two: CI time): an engine
    actor crashes mid-run, then the driver is SIGKILLed; the rerun finishes the rest."""
    import ray

    out = tmp_path / "crashes"
    proc = _cli(tiny_model_dir, out, cluster.address)
    _wait_for_shard(proc, out)
    name, namespace = _engine_actors()[0]
    # a crash of the engine process: Ray restarts the actor and retries its chunk
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
    written = len(_records(out))
    deadline = time.monotonic() + 180
    while len(_records(out)) < written + 3 and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = _records(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a chunk written twice after the actor crash"
    done_at_kill = len(ids)
    assert written < done_at_kill < 12, "the work went on past the crash, and was cut short"
    deadline = time.monotonic() + 60  # the actors die with their owner, the driver
    while _engine_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _engine_actors(), "engine actors outlived the SIGKILLed driver"

    rerun = _cli(tiny_model_dir, out, cluster.address)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"{done_at_kill} of 12 records already done" in err
    _assert_exactly_once_and_equal(out, local_generate, 12)


def _write_pairs(path: Path) -> Path:
    import json

    rows = [{"prompt": f"Name a {thing}.", "chosen": f"A {good}.", "rejected": f"A {bad}."}
            for thing, good, bad in [("fruit", "pear", "carrot"), ("colour", "blue", "chair"),
                                     ("planet", "Mars", "spoon"), ("tree", "oak", "cloud"),
                                     ("metal", "iron", "river"), ("bird", "crow", "brick"),
                                     ("fish", "trout", "lamp"), ("flower", "rose", "stone")]]
    rows.insert(3, {"prompt": "Name a sea.", "chosen": "Red.", "rejected": "word " * 3000})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_label_on_two_replicas_equals_local(cluster, tmp_path, tiny_model_dir, mode):
    from cai.data.store import read_preferences
    from cai.label.run import LabelRunConfig, run_label

    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    common = dict(pairs=str(pairs), principles=2, seed=3, few_shot=False, mode=mode,
                  backend="transformers", model=str(tiny_model_dir), progress=False,
                  **({"tau": 0.7} if mode == "pointwise" else {}))
    local = run_label(LabelRunConfig(out=str(tmp_path / "local"), **common))
    on_ray = run_label(LabelRunConfig(out=str(tmp_path / "ray"), **common,
                                      ray={"address": cluster.address, "replicas": 2}))
    a, b = read_preferences(tmp_path / "local"), read_preferences(tmp_path / "ray")
    assert len(a) == len(b) == 8 and on_ray["too_long"] == local["too_long"] == 1
    for x, y in zip(a, b):
        assert x.id == y.id and x.chosen == y.chosen and x.labeler == y.labeler
        assert x.p_chosen == pytest.approx(y.p_chosen, abs=1e-6)
    assert (tmp_path / "local" / "rejects.jsonl").read_text() == \
        (tmp_path / "ray" / "rejects.jsonl").read_text()


def test_sample_and_judge_on_ray_split_their_batches_over_the_replicas(cluster, tmp_path,
                                                                       tiny_model_dir):
    """The stages without checkpoint chunks (sample, score --judge, eval policy) run their
    batch calls through RayBackend: judge scores equal local ones to 1e-6; samples come back
    one row per prompt, in order, with n responses (transformers seeds per call, so sampled
    texts are not compared)."""
    import json

    from cai.eval.score import JudgeScoreConfig, run_judge_score
    from cai.label.sample import SampleRunConfig, run_sample

    ray = {"address": cluster.address, "replicas": 2}
    engine = dict(backend="transformers", model=str(tiny_model_dir), progress=False)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name a {w}.", "response": f"A {w}."}) + "\n"
                            for w in ["fruit", "tree", "bird", "fish", "metal", "planet"]))
    scores = {}
    for where, extra in (("local", {}), ("ray", {"ray": ray})):
        run_judge_score(JudgeScoreConfig(data=str(data), out=str(tmp_path / f"{where}.jsonl"),
                                         k=2, few_shot=False, **engine, **extra))
        scores[where] = [json.loads(x) for x in (tmp_path / f"{where}.jsonl").read_text().splitlines()]
    assert len(scores["ray"]) == 6
    for a, b in zip(scores["local"], scores["ray"]):
        assert a["judge_principles"].keys() == b["judge_principles"].keys()
        assert a["judge_score"] == pytest.approx(b["judge_score"], abs=1e-6)

    summary = run_sample(SampleRunConfig(prompts=PROMPTS, out=str(tmp_path / "cand.jsonl"),
                                         limit=6, n=2, max_tokens=6, ray=ray, **engine))
    rows = [json.loads(x) for x in (tmp_path / "cand.jsonl").read_text().splitlines()]
    assert summary["rows"] == 6 and [r["source_id"] for r in rows] == \
        [json.loads(x)["id"] for x in Path(PROMPTS).read_text().splitlines()[:6]]
    assert all(len(r["responses"]) == 2 for r in rows)
    assert summary["model"] == str(tiny_model_dir)


def test_a_model_a_node_cannot_load_is_an_error_naming_the_node(cluster, tmp_path):
    from cai.config import ConfigError
    from cai.generate.run import run_generate

    missing = tmp_path / "not-on-this-node"
    (missing / "config.json").parent.mkdir()
    (missing / "config.json").write_text("{}")  # resolvable here, unloadable there
    with pytest.raises(ConfigError) as e:
        run_generate(_gen_config(missing, tmp_path / "o", limit=1,
                                 ray={"address": cluster.address, "replicas": 1}))
    assert "cannot load transformers engine" in str(e.value)
    assert "node " in str(e.value) and "reachable from every node" in str(e.value)


def test_wrong_address_is_refused_in_seconds(tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "cai", "generate", "--prompts", PROMPTS, "-o",
                        str(tmp_path / "o"), "--limit", "1", "--backend", "transformers",
                        "--ray", f"127.0.0.1:{port}"], cwd=REPO, env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in r.stderr
    assert time.monotonic() - t0 < 60  # Python start and imports; ray.init alone retries minutes


def test_without_ray_ray_is_not_imported(tmp_path, tiny_model_dir):
    code = ("import sys\nfrom cai.generate.config import load_config\n"
            "from cai.generate.run import run_generate\n"
            f"run_generate(load_config(None, {{'prompts': {PROMPTS!r}, 'out': {str(tmp_path / 'o')!r}, "
            f"'backend': 'transformers', 'model': {str(tiny_model_dir)!r}, 'limit': 1, "
            "'max_tokens': 4, 'progress': False}))\n"
            "assert 'ray' not in sys.modules, 'ray imported by a local run'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.slow
def test_ray_job_submit_runs_a_pipeline(cluster, tmp_path, tiny_model_dir):
    """`ray job submit --working-dir . -- cai run X.yaml` on the simulated cluster writes the
    records a local `cai run` of the same file writes (stage timings printed for the notes)."""
    import json

    work = tmp_path / "project"
    (work / "prompts").mkdir(parents=True)
    (work / "prompts" / "p.jsonl").write_text(
        "".join(Path(PROMPTS).read_text().splitlines(keepends=True)[:8]))

    def pipeline(out: Path, ray: str) -> str:
        return (f"run: {{name: t, out: {out}, model: {tiny_model_dir}, backend: transformers"
                f"{ray}}}\nprompts: {{train: [{{file: prompts/p.jsonl}}]}}\n"
                "generate: {prompts: train, max_tokens: 16, chunk_size: 2, few_shot: false, "
                "temperature: 0.0, seed: 3}\n")

    (work / "ray.yaml").write_text(pipeline(tmp_path / "job-out", ", ray: {replicas: 2}"))
    (work / "local.yaml").write_text(pipeline(tmp_path / "local-out", ""))
    t0 = time.monotonic()
    if _has_dashboard():
        dashboard = f"http://{cluster.head_node.address_info['webui_url']}"
        job = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address",
             dashboard, "--working-dir", ".", "--", sys.executable, "-m", "cai", "run",
             "ray.yaml"], cwd=work, env=child_env(), capture_output=True, text=True,
            timeout=600)
    else:  # without ray[default] no job server: run the entrypoint as the job would run it
        job = subprocess.run([sys.executable, "-m", "cai", "run", "ray.yaml"], cwd=work,
                             env=child_env(RAY_ADDRESS=cluster.address), capture_output=True,
                             text=True, timeout=600)
        print("\n(ray[default] missing: the job's entrypoint ran with RAY_ADDRESS instead)")
    job_s = time.monotonic() - t0
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    t0 = time.monotonic()
    local = subprocess.run([sys.executable, "-m", "cai", "run", "local.yaml"], cwd=work,
                           env=child_env(), capture_output=True, text=True, timeout=600)
    local_s = time.monotonic() - t0
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = _records(tmp_path / "job-out" / "generate"), _records(tmp_path / "local-out" / "generate")
    assert len(a) == 8 and sorted(a, key=lambda r: r["id"]) == sorted(b, key=lambda r: r["id"])
    stage = json.loads((tmp_path / "job-out" / "generate" / "stage.json").read_text()) \
        if (tmp_path / "job-out" / "generate" / "stage.json").exists() else {}
    how = "ray job submit" if _has_dashboard() else "cai run with RAY_ADDRESS"
    print(f"\n{how}: {job_s:.1f} s end to end (local cai run {local_s:.1f} s); "
          f"generate stage {stage.get('seconds')} s")
