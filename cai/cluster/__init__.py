"""Connecting to a Ray cluster: the one place cai calls `ray.init`.

Ray is an optional extra (`cai[ray]`); nothing outside a `ray:`/`--ray` run imports it.
`ray.init` on an address where no cluster answers retries for minutes, so the address is
probed first and a dead or wrong one is refused within seconds.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from cai.config import ConfigError, RayConfig

PROBE_TIMEOUT_S = 5.0

__all__ = ["RayConfig", "connect", "probe", "require_ray"]


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'cai[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConfigError unless something listens at `address` (host:port forms only)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one "
                          "with `ray start --head` or check the address") from None


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """`ray.init` once per process (a second call reuses the connection); returns `ray`."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    target = address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets RAY_ADDRESS
    if target not in (None, "", "auto", "local"):
        probe(target)
    try:
        ray.init(address=address, log_to_driver=False, **init_kwargs)
    except ConnectionError as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    return ray
