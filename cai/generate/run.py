"""`run_generate(config)`: prompts + constitution -> a run directory of revisions, SFT data
and preference pairs, resumable after any crash.

    load prompts -> drop records a constitution edit made stale (incremental.py) -> plan
    records -> skip those already in a shard -> for each chunk:
    respond, critique, revise (one batched call per stage) -> one atomic shard
    -> sft/ + preferences/ + manifest
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from cai.backends import Backend, load_backend
from cai.backends.context import ChatTokenizer, TokenCounter
from cai.config import ConfigError, progress_bar, say
from cai.constitution import Constitution, load_constitution
from cai.generate.checkpoint import RunStore
from cai.generate.config import (GenerateConfig, apply_recommended, fingerprint, fingerprint_fields,
                                 effective_route, input_fields)
from cai.prompts import PromptItem, load_prompts
from cai.generate.outputs import revision_row, write_outputs
from cai.generate.incremental import hash_table, stale_records
from cai.generate.pipeline import Chain, Run, run_chains
from cai.generate.progress import Progress, format_summary
from cai.generate.report import build_report
from cai.interrupt import note_saved
from cai.models import recommended_settings, registry_name
from cai.schema import stable_id, write_rejects

REJECTS = "rejects.jsonl"


def record_id(item: PromptItem, sample_index: int, config_hash: str) -> str:
    return stable_id(item.key, sample_index, config_hash)


def plan_chunks(items: list[PromptItem], samples: int, chunk_size: int) -> list[list[PromptItem]]:
    """Fixed chunks of whole prompts (all samples of a prompt share one response request), in
    input order, so a rerun re-forms exactly the chunks an interrupted run did not finish."""
    per_chunk = max(1, chunk_size // samples)
    return [items[i:i + per_chunk] for i in range(0, len(items), per_chunk)]


def drop_stale(store: RunStore, constitution: Constitution, config: GenerateConfig,
               table: dict[str, str], log: Callable[[str], None]) -> set[str]:
    """Drop the records a constitution edit made stale (they are made again, like records
    never made); returns their ids. Says how many went, and why, per reason."""
    stale = stale_records(store.iter_records(), constitution, config, table)
    if stale:
        store.drop(set(stale))
        why = Counter(s.reason for s in stale.values())
        log(f"cai generate: {store.root}: the constitution changed; remaking {len(stale)} "
            "records (" + "; ".join(f"{n}: {r}" for r, n in why.most_common(5))
            + (", ..." if len(why) > 5 else "") + ")")
    return set(stale)


def _token_counter(config: GenerateConfig, backend: Backend | None) -> TokenCounter:
    """The engine's own count when there is an engine; else the model's tokenizer alone (the
    engine is loaded only once there is work, after the prompts are read)."""
    if backend is not None and backend.tokenizer is not None:
        return backend
    from transformers import AutoTokenizer

    from cai.models import resolve_model

    return ChatTokenizer(AutoTokenizer.from_pretrained(resolve_model(config.model)))


def check_scoring_support(backend: Backend, config: GenerateConfig) -> None:
    """Fail before any work when a log-prob check is on but the backend cannot render the
    model's chat template (an OpenAI-compatible server named without `tokenizer=`): the
    checks score chat-formatted text, so without the template they would score garbage."""
    wanted = [name for name, on in (
        ("--route auto", effective_route(config) == "auto"),
        ("--unchanged-threshold", config.unchanged_threshold is not None),
        ("--min-relevance", config.min_relevance is not None)) if on]
    if not wanted:
        return
    try:
        backend.render_chat([{"role": "user", "content": "x"}])
    except ValueError as e:
        raise ConfigError(
            f"{', '.join(wanted)} score text with the model's chat template, which this "
            f"backend cannot render ({e}). Or turn them off: --route random "
            "--unchanged-threshold off --min-relevance off") from None


def chunk_rows(backend: Backend, chains: list[Chain], *, constitution: Any,
               config: GenerateConfig, rounds: int, provenance: dict[str, Any]
               ) -> tuple[list[dict[str, Any]], list[Any]]:
    """One chunk on a Ray actor's engine: its rows and the engine calls it made (for the
    driver's progress bars)."""
    check_scoring_support(backend, config)
    calls: list[Any] = []
    run_chains(Run(backend, constitution, config, observe=calls.append), chains, rounds)
    return [revision_row(ch, provenance) for ch in chains], calls


def _run_on_ray(config: GenerateConfig, constitution: Any, rounds: int,
                provenance: dict[str, Any], chunks: list[list[Chain]], store: RunStore,
                bars: Progress, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The chunks on `config.ray`'s engine actors; each is written here as it finishes.
    Returns where the actors ran."""
    from functools import partial

    from cai.cluster.chunks import run_chunks

    fn = partial(chunk_rows, constitution=constitution, config=config, rounds=rounds,
                 provenance=provenance)
    engine = (config.backend_name(), config.model, config.backend_options)
    where: list[dict[str, Any]] = []

    def started(actors: list[dict[str, Any]]) -> None:
        where.extend(actors)
        log(f"cai generate: {len(actors)} Ray engine replicas on "
            f"{len({a['node_id'] for a in actors})} nodes")

    for i, (rows, calls) in run_chunks(fn, chunks, engine=engine, ray_config=config.ray,
                                       on_start=started):
        bars.start_chunk()
        for call in calls:
            bars.observe(call)
        store.write_shard(rows)
        bars.chunk_done(len({ch.item.key for ch in chunks[i]}), len(chunks[i]), rounds)
    return where


def run_generate(config: GenerateConfig, *, backend: Backend | None = None,
                 log: Callable[[str], None] = say,
                 progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """Run (or finish) the generation described by `config`; returns the summary.

    `backend`: an engine the caller already built (tests, benchmarks, a pipeline runner
    sharing one engine); otherwise one is loaded, only when there is work to do.
    """
    t_start = time.perf_counter()
    model_ref = config.model or (backend.model if backend else None)
    config, recommended = apply_recommended(config, recommended_settings(model_ref))
    constitution = load_constitution(config.constitution)
    rounds = config.rounds_for(constitution)
    gen = fingerprint_fields(config, constitution,
                             model=config.model or (backend.model if backend else None),
                             backend=backend.name if backend else None)
    config_hash = fingerprint(gen)
    identity = {"fingerprint": config_hash, "generation": gen, "inputs": input_fields(config)}
    root = Path(config.out)
    owned: Backend | None = None
    bars: Progress | None = None
    ray_actors: list[dict[str, Any]] = []  # where the engines ran, on Ray
    with RunStore(root) as store:
        manifest = store.open(identity, config.model_dump(mode="json"))
        if store.stale_holder:
            h = store.stale_holder
            log(f"cai generate: {root}: taking over the lock left by pid {h.get('pid')} on "
                f"{h.get('host')} (started {h.get('started')}), which is no longer running")
        counter = _token_counter(config, backend) if config.max_prompt_tokens else None
        items, rejects = load_prompts(
            config.prompts, field=config.prompt_field, messages_field=config.messages_field,
            id_field=config.id_field, max_prompt_tokens=config.max_prompt_tokens,
            count_tokens=counter.count_tokens if counter else None, limit=config.limit)
        write_rejects(rejects, root / REJECTS)

        table = hash_table(constitution, config)
        done = store.done_ids() - drop_stale(store, constitution, config, table, log)
        chunks = []
        for chunk in plan_chunks(items, config.samples, config.chunk_size):
            chains = [Chain(id=record_id(it, s, config_hash), item=it, sample_index=s)
                      for it in chunk for s in range(config.samples)]
            chains = [ch for ch in chains if ch.id not in done]
            if chains:
                chunks.append(chains)
        planned = len(items) * config.samples
        planned_ids = {record_id(it, s, config_hash) for it in items for s in range(config.samples)}
        pending = sum(map(len, chunks))
        if done and pending:
            log(f"cai generate: resuming {root}: {planned - pending} of {planned} records "
                "already done")

        # stored in every record: what made it
        provenance = {"model": gen["model"], "backend": gen["backend"],
                      "sampling": gen["sampling"], "seed": config.seed,
                      "constitution": constitution.name,
                      "constitution_hash": constitution.content_hash(),
                      "principle_hashes": table, "config_hash": config_hash}
        try:
            if chunks and config.ray is not None:
                bars = Progress(pending, len({ch.item.key for c in chunks for ch in c}),
                                rounds, enabled=config.progress, make=progress)
                ray_actors = _run_on_ray(config, constitution, rounds, provenance, chunks,
                                         store, bars, log)
            elif chunks:
                if backend is None:
                    backend = owned = load_backend(config.backend_name(), config.model,
                                                   **config.backend_options)
                check_scoring_support(backend, config)
                bars = Progress(pending, len({ch.item.key for c in chunks for ch in c}),
                                rounds, enabled=config.progress, make=progress)
                run = Run(backend, constitution, config, observe=bars.observe,
                          in_call=bars.in_call)
                for chains in chunks:
                    bars.start_chunk()
                    run_chains(run, chains, rounds)
                    store.write_shard([revision_row(ch, provenance) for ch in chains])
                    bars.chunk_done(len({ch.item.key for ch in chains}), len(chains), rounds)
        except BaseException as e:  # Ctrl-C, SIGTERM, a server gone for good: say what is kept
            # counted from the shards: a signal may land between a shard's rename and `written`
            note_saved(e, f"{len(store.done_ids() & planned_ids)} of {planned} records saved "
                          f"in {root}")
            raise
        finally:
            if bars is not None:
                bars.close()
            if owned is not None:
                owned.close()

        records = list(store.iter_records())
        datasets = write_outputs(records, root)
        statuses = Counter(r["status"] for r in records)
        stats = (bars.stats() if bars else
                 {"tokens": {"response": 0, "critique": 0, "revision": 0, "total": 0},
                  "requests": {}, "generate_s": 0.0, "tokens_per_s": 0.0})
        summary = {
            "out": str(root),
            "records": len(records),
            "status": dict(sorted(statuses.items())),
            "new_records": pending,
            "already_done": planned - pending,
            "rejects": len(rejects),
            "reject_reasons": dict(sorted(Counter(r.code for r in rejects).items())),
            **stats,
            "wall_s": round(time.perf_counter() - t_start, 3),
            "sft": datasets["sft"]["count"],
            "preferences": datasets["preferences"]["count"],
            "recommended": ({"model": registry_name(model_ref), "applied": recommended}
                            if recommended else None),
            "report": build_report(records, tags_field=config.principle_tags_field),
            **({"ray_actors": ray_actors} if ray_actors else {}),
            "engine_precision": getattr(backend, "precision", None),
        }
        manifest.update(
            status="complete",
            config=config.model_dump(mode="json"),
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            datasets={"revisions": {"dir": "revisions", "count": len(records),
                                    "shards": [p.name for p in store.shards()]},
                      **datasets},
            rejects={"file": REJECTS, "count": len(rejects),
                     "reasons": summary["reject_reasons"]},
            summary=summary,
        )
        store.write_manifest(manifest)
    if config.progress:
        log(format_summary(summary))
    return summary
