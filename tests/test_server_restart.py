"""A batch job outlives a server restart: `cai generate --backend openai` against a loopback
`cai serve` app; after the first chunk the server stops for 6 s, longer than the old budget
of 6 tries lasts with the same backoff, and comes back; the run finishes without a rerun.
Past the budget, the command ends with one paragraph: what failed, what is saved, how to
resume."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cai.backends.openai_backend import OpenAIBackend, ServerError
from cai.cli import app
from cai.generate.config import load_config
from cai.generate.run import run_generate
from cai.serve import build_app
from test_openai_backend import CONVS, GREEDY, Server, free_port

REPO = Path(__file__).parents[1]
PROMPTS = str(REPO / "pipelines/prompts/red_team_train.jsonl")
OUTAGE_S = 6.0
BACKOFF = {"backoff_initial": 0.1, "backoff_max": 1.0}  # the test's scale; the default cap is 10 s


def test_the_old_budget_of_6_tries_would_not_ride_out_the_outage():
    port = free_port()  # nothing listens: connection refused, as during a restart
    backend = OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1", max_attempts=6,
                            retry_for=300, status=lambda line: None, **BACKOFF)
    start = time.perf_counter()
    with pytest.raises(ServerError, match="failed after 6 tries"):
        backend.generate(CONVS[:1], GREEDY)
    assert time.perf_counter() - start < OUTAGE_S


def test_generate_rides_through_a_server_restart(tmp_path, tiny_backend):
    port = free_port()
    served = build_app(tiny_backend, "tiny")
    server = Server(served, port).start()
    run = tmp_path / "run"
    cfg = load_config(None, {
        "prompts": PROMPTS, "out": str(run), "backend": "openai", "model": "tiny",
        "backend_options": {"base_url": f"http://127.0.0.1:{port}/v1", "retry_for": 30.0,
                            "max_concurrency": 4, **BACKOFF},
        # default checks (route auto, min_relevance): rendered through the server's /tokenize
        "limit": 8, "chunk_size": 4, "max_tokens": 6, "few_shot": False, "progress": False})
    result: dict = {}

    def work():
        try:
            result["summary"] = run_generate(cfg)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=work)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not list((run / "revisions").glob("part-*.parquet")):
            assert time.monotonic() < deadline and worker.is_alive(), result
            time.sleep(0.02)
        server.stop()
        down = time.monotonic()
        time.sleep(OUTAGE_S)
        assert worker.is_alive(), result  # still retrying, not failed
        server = Server(served, port).start()
        worker.join(120)
    finally:
        server.stop()
    assert "error" not in result, result
    assert time.monotonic() - down > OUTAGE_S
    summary = result["summary"]
    assert summary["records"] == 8 and summary["new_records"] == 8
    ids = [i for f in (run / "revisions").glob("*.parquet")
           for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == 8


def test_status_lines_show_the_outage_and_its_end(tiny_backend):
    port = free_port()
    lines: list[str] = []
    backend = OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1", retry_for=30,
                            status=lines.append, max_concurrency=4, **BACKOFF)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", backend.generate(CONVS, GREEDY)))
    worker.start()
    time.sleep(1.5)
    server = Server(build_app(tiny_backend, "tiny"), port).start()
    try:
        worker.join(60)
    finally:
        server.stop()
    assert len(out["r"]) == len(CONVS)
    assert lines[0].startswith(f"cai: server http://127.0.0.1:{port}/v1 is failing (APIConnectionError)")
    assert "answering again after" in lines[-1]
    assert len(lines) == 2  # one line for the outage, one for its end, not one per request


def test_exhausted_budget_is_one_paragraph_with_what_is_saved(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "generate", "--prompts", PROMPTS, "-o", str(run), "--backend", "openai",
        "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--retry-for", "1",
        "--limit", "2", "--no-few-shot", "--no-progress",
        "--route", "random", "--unchanged-threshold", "off", "--min-relevance", "off"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and result.exception is None or \
        isinstance(result.exception, SystemExit)
    assert f"error: http://127.0.0.1:{port}/v1: listing models failed after" in result.output
    assert "(retry budget 1 s, --retry-for): APIConnectionError" in result.output
    assert f"0 of 2 records saved in {run}. To resume once the server answers again" in result.output


def test_generate_without_a_chat_template_fails_before_any_work(tmp_path, tiny_backend):
    """The default log-prob checks score chat-formatted text; a server without /tokenize,
    named by a model id that is nothing local, cannot format it, so the run stops at once
    and names the flag that fixes it."""
    served = build_app(tiny_backend, "tiny")
    served.router.routes = [r for r in served.router.routes if getattr(r, "path", "") != "/tokenize"]
    port = free_port()
    server = Server(served, port).start()
    try:
        cfg = load_config(None, {
            "prompts": PROMPTS, "out": str(tmp_path / "run"), "backend": "openai",
            "model": "tiny", "backend_options": {"base_url": f"http://127.0.0.1:{port}/v1"},
            "limit": 2, "max_tokens": 4, "few_shot": False, "progress": False})
        with pytest.raises(ValueError, match=r"--route auto.*pass --tokenizer"):
            run_generate(cfg)
        result = CliRunner().invoke(app, [
            "generate", "--prompts", PROMPTS, "-o", str(tmp_path / "cli"), "--backend", "openai",
            "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--limit", "2",
            "--no-few-shot", "--no-progress", "--min-relevance", "off"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "error: --route auto, --unchanged-threshold score text" in result.output
        assert not list((tmp_path / "run").glob("revisions/part-*.parquet"))
    finally:
        server.stop()
