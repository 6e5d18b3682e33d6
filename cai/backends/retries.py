"""How the `openai` backend waits on a server: a slow answer is not an outage.

Two budgets, kept apart because a busy server and a dead one need opposite responses:

- `request_timeout` (default 600 s): how long one request waits for its answer. A request
  that times out is sent again (the server answered the connection, it is only busy), up to
  `MAX_TIMEOUTS` times; only then does it fail, with "the server is slow (N requests timed
  out over T s)" and the flags that help (`--request-timeout`, `--max-concurrency`).
- `retry_for` (default 300 s: a `vllm serve` restart takes 30-70 s): how long a request
  keeps retrying while the server gives no answer at all (connection refused or reset, 429,
  5xx). The clock counts only that time: it starts at the first such failure and restarts
  whenever the server answers, or times out, in between.

Retries use tenacity with exponential backoff and full jitter (waits up to `backoff_max`).
While the server fails or is slow, a status line (one per change, shared by the concurrent
requests) says so: when it started, how much of the budget has gone, when it is back.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import openai
from tenacity import RetryError, Retrying, retry_if_exception_type, wait_random_exponential
from tenacity.stop import stop_base

from cai.backends.base import BackendError

T = TypeVar("T")

# 429 is RateLimitError and 5xx is InternalServerError in the openai client; APITimeoutError
# is a subclass of APIConnectionError, told apart below.
NO_ANSWER = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
RETRY_FOR_S = 300.0
REQUEST_TIMEOUT_S = 600.0
MAX_TIMEOUTS = 3  # timeouts of one request before it fails as "the server is slow"
STATUS_EVERY_S = 10.0  # how often a "still failing" line is repeated


class ServerError(BackendError):
    """The server gave no answer for the whole retry budget."""


class ServerSlow(ServerError):
    """A request timed out MAX_TIMEOUTS times: the server answers, but not in time."""


class Stopped(Exception):
    """The call was abandoned (the batch failed or was interrupted): stop retrying."""


class ServerWatch:
    """Shared by the concurrent requests to one server: the outage and slowness lines, one
    per change rather than one per request, and the count of timeouts for the message."""

    def __init__(self, where: str, budget: float, report: Callable[[str], None]) -> None:
        self.where, self.budget, self.report = where, budget, report
        self.lock = threading.Lock()
        self.since: float | None = None  # when the current outage began
        self.last_report = 0.0
        self.timeouts = 0
        self.first_timeout: float | None = None

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        with self.lock:
            if isinstance(error, openai.APITimeoutError):
                self.timeouts += 1
                if self.first_timeout is None:
                    self.first_timeout = now
                if self.timeouts == 1 or now - self.last_report >= STATUS_EVERY_S:
                    self.last_report = now
                    self.report(f"cai: {self.where} is slow ({self.slow_summary(now)}); "
                                "waiting and sending again")
                return
            if self.since is None:
                self.since = self.last_report = now
                self.report(f"cai: {self.where} is failing ({type(error).__name__}); "
                            f"retrying for up to {self.budget:.0f} s")
            elif now - self.last_report >= STATUS_EVERY_S:
                self.last_report = now
                self.report(f"cai: {self.where} still failing ({type(error).__name__}), "
                            f"retrying {now - self.since:.0f} s / {self.budget:.0f} s")

    def slow_summary(self, now: float | None = None) -> str:
        took = (now or time.monotonic()) - (self.first_timeout or time.monotonic())
        return f"{self.timeouts} requests timed out over {took:.0f} s"

    def ok(self) -> None:
        if self.since is None:  # the common case: no lock
            return
        with self.lock:
            if self.since is not None:
                self.report(f"cai: {self.where} answering again after "
                            f"{time.monotonic() - self.since:.0f} s")
                self.since = None


class _Budget(stop_base):
    """Stop one request's retries: after `max_timeouts` timeouts, after `retry_for` seconds
    of no answer (counted from the first failure since the last answer), or after
    `max_attempts` tries when that is set."""

    def __init__(self, retry_for: float, max_timeouts: int, max_attempts: int | None) -> None:
        self.retry_for, self.max_timeouts, self.max_attempts = retry_for, max_timeouts, max_attempts
        self.timeouts = 0
        self.outage_since: float | None = None

    def __call__(self, retry_state) -> bool:
        error = retry_state.outcome.exception()
        now = retry_state.outcome_timestamp or time.monotonic()
        if self.max_attempts is not None and retry_state.attempt_number >= self.max_attempts:
            return True
        if isinstance(error, openai.APITimeoutError):
            self.timeouts += 1
            self.outage_since = None  # the server took the request: busy, not gone
            return self.timeouts >= self.max_timeouts
        if self.outage_since is None:
            self.outage_since = now
        return now - self.outage_since >= self.retry_for


def call_with_retries(call: Callable[[], T], *, what: str, where: str, watch: ServerWatch,
                      retry_for: float, request_timeout: float, max_attempts: int | None,
                      backoff: tuple[float, float], sleep: Callable[[float], None]) -> T:
    """`call()` until it answers; `ServerSlow` or `ServerError` when a budget runs out.
    `sleep` waits between tries and raises `Stopped` when the caller gave up."""
    budget = _Budget(retry_for, MAX_TIMEOUTS, max_attempts)
    retrying = Retrying(
        retry=retry_if_exception_type(NO_ANSWER),
        wait=wait_random_exponential(multiplier=backoff[0], max=backoff[1]),
        stop=budget, sleep=sleep, reraise=False,
        before_sleep=lambda state: watch.failed(state.outcome.exception()),
    )
    start = time.monotonic()
    try:
        result = retrying(call)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        # a wrong key is not an outage: retrying cannot help
        raise BackendError(
            f"{where}: the server refused the API key (HTTP {e.status_code}); pass the server's "
            "key with --api-key or OPENAI_API_KEY") from None
    except RetryError as e:
        last = e.last_attempt.exception()
        tries = e.last_attempt.attempt_number
        took = time.monotonic() - start
        if isinstance(last, openai.APITimeoutError):
            watch.failed(last)
            raise ServerSlow(
                f"{where}: the server is slow ({watch.slow_summary()}): {what} got no answer "
                f"within {request_timeout:g} s in {tries} tries. Give it longer "
                "(--request-timeout) or send fewer requests at once (--max-concurrency)"
            ) from None
        raise ServerError(
            f"{where}: {what} failed after {tries} tries over {took:.0f} s "
            f"(retry budget {retry_for:g} s, --retry-for): {type(last).__name__}: {last}"
        ) from None
    watch.ok()
    return result
