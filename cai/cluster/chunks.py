"""A stage's chunks on Ray: one actor per replica, each holding one cai engine, fed through
`ray.util.ActorPool`; the driver gets `(index, result)` back as each chunk finishes.

    for i, rows in run_chunks(fn, chunks, engine=("vllm", model, options), ray_config=cfg):
        store.write_shard(rows)          # the driver writes, atomically, as a local run does

`fn(backend, chunk)` is the stage's own per-chunk code (a module-level function or a
`functools.partial` of one, so Ray can pickle it); it runs inside the actor on the actor's
engine. Ray does the scheduling, placement (`num_cpus`/`num_gpus` per replica) and
recovery: a crashed actor is restarted (`max_restarts`) and its running chunk retried
(`max_task_retries`); an actor that stays dead leaves the pool and its chunk goes to
another. Exactly-once is the driver's: it writes each chunk once, and a store skips the
record ids it already holds, so a chunk that ran twice is still written once.

The actors are owned by the driver, so they die with it, however it dies (Ray's owner
fate-sharing; a vLLM engine inside one dies with the actor: `cai.backends.lifeline`).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable, Iterator, Sequence

from cai.config import ConfigError, RayConfig

ACTOR_NAME = "cai-engine"
_STARTS = itertools.count()  # eval may hold two engines' actors at once: names stay unique
MAX_RESTARTS = 3  # per actor: a crash (OOM, a killed node) restarts it, a crash loop does not
EngineSpec = tuple[str | None, str | None, dict[str, Any]]  # (backend, model, options)


class EngineActor:
    """One replica: one cai backend, built once, running chunks one at a time."""

    def __init__(self, backend: str | None, model: str | None, options: dict[str, Any]) -> None:
        from cai.backends import load_backend

        try:
            self.backend = load_backend(backend, model, **options)
        except Exception as e:  # the message the driver shows: which node could not load it
            raise RuntimeError(f"node {socket.gethostname()} ({node_id()}): cannot load "
                               f"{backend or 'the default'} engine on model {model!r}: {e}. "
                               "The model must be reachable from every node (a hub id or a "
                               "shared path).") from e

    def run(self, fn: Callable[[Any, Any], Any], index: int, chunk: Any) -> tuple[int, Any]:
        return index, fn(self.backend, chunk)

    def where(self) -> dict[str, Any]:
        return {"node_id": node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def start_actors(engine: EngineSpec, config: RayConfig) -> list[Any]:
    """`config.replicas` engine actors, spread over the nodes (SPREAD), each reserving its
    CPUs and GPUs, named `cai-engine-<start>-<i>` in the driver's namespace (`ray list
    actors`)."""
    from cai.cluster import connect

    ray = connect(config.address)
    remote = ray.remote(EngineActor)
    options = dict(num_cpus=config.cpus_per_replica, num_gpus=config.gpus_per_replica,
                   max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                   scheduling_strategy="SPREAD")
    start = next(_STARTS)
    return [remote.options(name=f"{ACTOR_NAME}-{start}-{i}", **options).remote(*engine)
            for i in range(config.replicas)]


def placement(actors: list[Any]) -> list[dict[str, Any]]:
    """Where each actor runs (node id, host, pid), once its engine is loaded; an engine that
    cannot load on some node is a ConfigError naming that node."""
    import ray

    try:
        return ray.get([a.where.remote() for a in actors])
    except ray.exceptions.RayActorError as e:
        raise ConfigError(f"a Ray engine actor could not start: {_cause(e)}") from None


def run_chunks(fn: Callable[[Any, Any], Any], chunks: Sequence[Any], *, engine: EngineSpec,
               ray_config: RayConfig, actors: list[Any] | None = None,
               on_start: Callable[[list[dict[str, Any]]], None] | None = None
               ) -> Iterator[tuple[int, Any]]:
    """Yield `(index, fn(engine, chunks[index]))` for every chunk, in the order they finish.
    `actors`: ones the caller started (`start_actors`) and will stop; else they are started
    here and killed when the iteration ends (finished, failed or abandoned). `on_start` gets
    `placement(actors)` once every engine is loaded."""
    import ray
    from ray.util import ActorPool

    owned = actors is None
    if actors is None:
        actors = start_actors(engine, ray_config)
    fn_ref = ray.put(fn)  # shipped once, not once per chunk
    pool = ActorPool(actors)
    todo = dict(enumerate(chunks))
    died = ""
    try:
        if owned or on_start is not None:
            where = placement(actors)  # fails fast, naming the node, when an engine cannot load
            if on_start is not None:
                on_start(where)
        while todo:
            if not pool.has_free():  # the pool drops an actor that stays dead
                raise ConfigError(f"every Ray engine actor died: {died}")
            for i, chunk in todo.items():
                pool.submit(lambda a, v: a.run.remote(fn_ref, *v), (i, chunk))
            while pool.has_next():
                try:
                    i, result = pool.get_next_unordered()
                except ray.exceptions.ActorDiedError as e:
                    died = _cause(e)  # its chunk is still in `todo`: it goes round again
                    continue
                del todo[i]
                yield i, result
    finally:
        if owned:
            for a in actors:
                ray.kill(a)


def _cause(e: BaseException) -> str:
    text = str(e)
    return text[-2000:]  # Ray's message ends with the actor's own error
