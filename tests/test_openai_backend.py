"""The `openai` backend against a real OpenAI-compatible HTTP server on loopback
(`cai serve`'s app over the tiny model), with injected faults: server down then up,
HTTP 500s, and a server that never comes up."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from cai.backends import SamplingConfig
from cai.backends.openai_backend import OpenAIBackend, ServerError
from cai.serve import build_app

CONVS = [[{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}] for i in range(8)]
GREEDY = SamplingConfig(temperature=0.0, max_tokens=6, ignore_eos=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FailEveryOther:
    """ASGI middleware: answers every second POST with HTTP 500, as a flaky server would."""

    def __init__(self, app):
        self.app, self.posts, self.failed = app, 0, 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            with self.lock:
                self.posts += 1
                fail = self.posts % 2 == 1
                self.failed += fail
            if fail:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"error": "injected"}'})
                return
        await self.app(scope, receive, send)


class Server:
    def __init__(self, app, port):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def client(port, **kw) -> OpenAIBackend:
    kw.setdefault("retry_for", 30.0)
    return OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1",
                         backoff_initial=0.1, backoff_max=0.5, concurrency=4, **kw)


def test_generation_over_http_matches_local(tiny_backend):
    port = free_port()
    server = Server(build_app(tiny_backend, "tiny"), port).start()
    try:
        remote = client(port).generate(CONVS, GREEDY)
    finally:
        server.stop()
    local = tiny_backend.generate(CONVS, GREEDY)
    assert [g[0].text for g in remote] == [g[0].text for g in local]
    assert [g[0].token_ids for g in remote] == [g[0].token_ids for g in local]


def test_server_down_then_up_loses_no_request(tiny_backend):
    port = free_port()
    results = {}

    def run():
        results["out"] = client(port).generate(CONVS, GREEDY)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)  # requests are failing with connection refused meanwhile
    assert worker.is_alive() and "out" not in results
    server = Server(build_app(tiny_backend, "tiny"), port).start()
    try:
        worker.join(60)
    finally:
        server.stop()
    local = tiny_backend.generate(CONVS, GREEDY)
    assert [g[0].text for g in results["out"]] == [g[0].text for g in local]


def test_http_500s_are_retried(tiny_backend):
    port = free_port()
    flaky = FailEveryOther(build_app(tiny_backend, "tiny"))
    server = Server(flaky, port).start()
    try:
        remote = client(port).generate(CONVS, GREEDY)
        prompt = tiny_backend.render_chat(CONVS[0]) + "The answer is:"
        scores = client(port).continuation_logprobs([prompt, prompt], [" (A)", " (B)"])
    finally:
        server.stop()
    assert flaky.failed >= len(CONVS) // 2  # faults really happened
    local = tiny_backend.generate(CONVS, GREEDY)
    assert [g[0].text for g in remote] == [g[0].text for g in local]
    assert scores == pytest.approx(tiny_backend.continuation_logprobs([prompt, prompt], [" (A)", " (B)"]), abs=1e-4)


def test_dead_server_gives_a_clear_error_after_the_last_try():
    port = free_port()
    lines = []
    backend = client(port, retry_for=2.0, status=lines.append)
    start = time.perf_counter()
    with pytest.raises(ServerError, match=rf"127.0.0.1:{port}/v1: request 0 failed after \d+ tries "
                                          r"over 2 s \(retry budget 2 s, --retry-for\): APIConnectionError"):
        backend.generate(CONVS[:1], GREEDY)
    assert 2.0 <= time.perf_counter() - start < 4.0  # the budget is a duration: 2 s, + one wait
    assert "is failing (APIConnectionError); retrying for up to 2 s" in lines[0]
