"""The `openai` backend against a real OpenAI-compatible HTTP server on loopback
(`cai serve`'s app over the tiny model), with injected faults: server down then up,
HTTP 500s, and a server that never comes up."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import uvicorn

from cai.backends import SamplingConfig
from cai.backends.openai_backend import OpenAIBackend, ServerError, ServerSlow
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
    kw = {"retry_for": 30.0, "max_concurrency": 4, **kw}
    return OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1",
                         backoff_initial=0.1, backoff_max=0.5, **kw)


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


class SlowPosts:
    """ASGI middleware: the first `count` POSTs (all when None) answer only after `delay`
    seconds, as a server busy with other work would."""

    def __init__(self, app, delay: float, count: int | None = None):
        self.app, self.delay, self.count, self.posts = app, delay, count, 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        import asyncio

        if scope["type"] == "http" and scope["method"] == "POST":
            with self.lock:
                self.posts += 1
                slow = self.count is None or self.posts <= self.count
            if slow:
                await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


def test_a_slow_server_is_waited_for_not_given_up_on(tiny_backend):
    """Answers slower than the outage budget (retry_for) are waited for; and timed-out
    requests are sent again without spending that budget."""
    port = free_port()
    slow = SlowPosts(build_app(tiny_backend, "tiny"), delay=1.0, count=3)
    server = Server(slow, port).start()
    lines = []
    try:
        patient = client(port, retry_for=0.2, request_timeout=5.0, status=lines.append)
        waited = patient.generate(CONVS[:3], GREEDY)  # 3 answers, each after 1 s > retry_for
        slow.count, slow.posts = 3, 0
        impatient = client(port, retry_for=0.2, request_timeout=0.5, status=lines.append)
        retried = impatient.generate(CONVS[:3], GREEDY)  # 3 timeouts, then fast answers
    finally:
        server.stop()
    local = [g[0].text for g in tiny_backend.generate(CONVS[:3], GREEDY)]
    assert [g[0].text for g in waited] == local and [g[0].text for g in retried] == local
    assert any("is slow (1 requests timed out" in line for line in lines)
    assert not any("failing" in line for line in lines)


def test_repeated_timeouts_say_the_server_is_slow(tiny_backend):
    port = free_port()
    server = Server(SlowPosts(build_app(tiny_backend, "tiny"), delay=2.0), port).start()
    try:
        backend = client(port, retry_for=0.2, request_timeout=0.3, max_concurrency=2,
                         status=lambda line: None)
        with pytest.raises(ServerError) as caught:
            backend.generate(CONVS[:2], GREEDY)
    finally:
        server.stop()
    message = str(caught.value)
    assert isinstance(caught.value, ServerSlow)
    assert re.search(r"the server is slow \(\d+ requests timed out over \d+ s\): request [01] got "
                     r"no answer within 0.3 s in 3 tries", message), message
    assert "--request-timeout" in message and "--max-concurrency" in message
    assert "failed" not in message


def test_chats_are_rendered_and_counted_by_the_server(tiny_backend):
    """`cai serve` answers vLLM's /tokenize and /detokenize; the backend renders, counts and
    scores through them when the model id ("tiny") is nothing local."""
    port = free_port()
    server = Server(build_app(tiny_backend, "tiny"), port).start()
    try:
        remote = client(port)
        rendered = remote.render_chat(CONVS[1])
        counted = remote.count_tokens(CONVS[1])
        context = remote.context_length()
        prompt = rendered + "The answer is:"
        scores = remote.continuation_logprobs([prompt, prompt], [" (A)", " (B)"])
    finally:
        server.stop()
    assert rendered == tiny_backend.render_chat(CONVS[1])
    assert counted == tiny_backend.count_tokens(CONVS[1])
    assert context == tiny_backend.context_length()
    local = tiny_backend.continuation_logprobs([prompt, prompt], [" (A)", " (B)"])
    assert scores == pytest.approx(local, abs=1e-4)


def test_without_tokenize_the_error_names_the_flag(tiny_backend, tiny_model_dir):
    app = build_app(tiny_backend, "tiny")
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/tokenize"]
    port = free_port()
    server = Server(app, port).start()
    try:
        bare = client(port)
        assert bare.tokenizer is None and bare.count_tokens(CONVS[0]) is None
        with pytest.raises(ValueError, match=r"has no /tokenize \(NotFoundError.*"
                                             r"model id 'tiny' is not a local model: pass --tokenizer"):
            bare.render_chat(CONVS[0])
        named = client(port, tokenizer=str(tiny_model_dir))
        assert named.render_chat(CONVS[0]) == tiny_backend.render_chat(CONVS[0])
    finally:
        server.stop()
