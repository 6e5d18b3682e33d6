"""`cai serve --api-key`: a bearer token on every route, 401 without it; no keyless serving
beyond loopback; the openai backend sends the key and names the fix when it is refused."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cai.backends import BackendError, SamplingConfig
from cai.cli import app
from cai.config import ConfigError
from cai.serve import build_app, check_bind, is_loopback
from test_openai_backend import Server, client, free_port

KEY = "s3cret-key"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def keyed(tiny_backend):
    return TestClient(build_app(tiny_backend, "tiny", api_key=KEY))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}])
def test_missing_or_wrong_key_is_401(keyed, headers):
    for method, path, body in [("get", "/v1/models", None),
                               ("post", "/v1/chat/completions", CHAT),
                               ("post", "/tokenize", {"prompt": "hi"})]:
        res = keyed.request(method, path, json=body, headers=headers)
        assert res.status_code == 401, (path, headers)
        assert res.headers["www-authenticate"] == "Bearer"


def test_right_key_is_200(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert keyed.get("/v1/models", headers=auth).status_code == 200
    res = keyed.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert res.status_code == 200 and res.json()["choices"][0]["message"]["role"] == "assistant"


def test_no_key_means_open(tiny_backend):
    assert TestClient(build_app(tiny_backend, "tiny")).get("/v1/models").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "node-1.cluster"])
def test_beyond_loopback_needs_a_key(host):
    with pytest.raises(ConfigError, match="--api-key"):
        check_bind(host, None)
    check_bind(host, KEY)
    check_bind(host, None, insecure=True)


def test_cli_refuses_keyless_public_bind_before_loading(monkeypatch):
    monkeypatch.delenv("CAI_API_KEY", raising=False)
    t0 = time.perf_counter()
    # the model does not exist: the refusal must come before any load is attempted
    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--model", "/nonexistent"])
    assert res.exit_code == 2
    assert "--host 0.0.0.0" in res.output and "--api-key" in res.output
    assert time.perf_counter() - t0 < 5


def test_openai_backend_sends_the_key(tiny_backend, monkeypatch):
    port = free_port()
    server = Server(build_app(tiny_backend, "tiny", api_key=KEY), port).start()
    greedy = SamplingConfig(temperature=0.0, max_tokens=3)
    conv = [[{"role": "user", "content": "hello"}]]
    try:
        assert client(port, api_key=KEY).generate(conv, greedy)[0][0].token_ids
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        assert client(port).generate(conv, greedy)[0][0].token_ids
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match="refused the API key.*--api-key"):
            client(port).generate(conv, greedy)
        assert time.perf_counter() - t0 < 10  # not retried as an outage
    finally:
        server.stop()
