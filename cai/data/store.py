"""A preference store: a directory of Parquet shards in `ARROW_SCHEMA` plus `manifest.json`.

    out/
      part-00000-<w>.parquet   (shard_size records each, written atomically)
      part-00001-<w>.parquet
      manifest.json            (written last: counts, shards, schema version, sources)

<w> is a random token per write, so a rewrite never touches the shards the current
manifest lists: a crash mid-write leaves the previous store whole. The manifest is the
source of truth for which shards belong to the store; other shards (from earlier writes)
are deleted once the new manifest is in place. A
store with no records still has one empty shard, so `datasets.load_dataset("parquet",
data_files=f"{out}/*.parquet")` and every reader see the schema.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
from pydantic import ValidationError

from cai.io import MANIFEST_NAME, DataError, atomic_write_json, iter_rows, write_parquet_atomic
from cai.records import ARROW_SCHEMA, PreferenceRecord
from cai.schema import validation_errors

SCHEMA_VERSION = 1
STORE_FORMAT = "cai.preferences"
_SHARD = re.compile(r"^part-\d{5,}(-[0-9a-f]+)?\.parquet$")


def records_to_table(records: Iterable[PreferenceRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=ARROW_SCHEMA)


def write_preferences(
    records: Iterable[PreferenceRecord],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 1000,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `records` as a store under `out_dir`; return the manifest (also `manifest.json`).

    `records` is consumed once, a shard at a time. `extra` goes into the manifest as-is
    (e.g. an import report).
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    shards: list[dict[str, Any]] = []
    sources: Counter[str] = Counter()
    hard = 0
    batch: list[PreferenceRecord] = []
    token = os.urandom(4).hex()

    def flush() -> None:
        name = f"part-{len(shards):05d}-{token}.parquet"
        write_parquet_atomic(records_to_table(batch), out / name)
        shards.append({"file": name, "count": len(batch)})
        batch.clear()

    for rec in records:
        sources[rec.source] += 1
        hard += rec.p_chosen in (0.0, 1.0)
        batch.append(rec)
        if len(batch) >= shard_size:
            flush()
    if batch or not shards:
        flush()

    total = sum(s["count"] for s in shards)
    manifest: dict[str, Any] = {
        "format": STORE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "count": total,
        "hard_labels": hard,
        "soft_labels": total - hard,
        "sources": dict(sorted(sources.items())),
        "shards": shards,
        "fields": ARROW_SCHEMA.names,
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(out / MANIFEST_NAME, manifest)
    keep = {s["file"] for s in shards}
    for stale in out.iterdir():
        if _SHARD.match(stale.name) and stale.name not in keep:
            stale.unlink()
    return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The store's manifest, or None when `path` is not a store directory."""
    m = Path(path) / MANIFEST_NAME
    if not m.is_file():
        return None
    manifest = json.loads(m.read_text(encoding="utf-8"))
    version = manifest.get("schema_version")
    if manifest.get("format") == STORE_FORMAT and version != SCHEMA_VERSION:
        raise DataError(f"{m}: schema_version {version}, this cai reads {SCHEMA_VERSION}")
    return manifest


def iter_preferences(path: str | os.PathLike) -> Iterator[PreferenceRecord]:
    """Stream records from a store directory, a .parquet file, or JSONL of record dicts.

    Stored data is expected to be valid: the first bad row raises `DataError` naming it.
    """
    read_manifest(path)  # version check
    for row in iter_rows(path):
        if row.error:
            raise DataError(f"{row.location}: {row.error}")
        try:
            yield PreferenceRecord.from_row(row.data or {})
        except (ValidationError, json.JSONDecodeError) as e:
            raise DataError(f"{row.location}: not a preference record ({_first_error(e)})") from e


def read_preferences(path: str | os.PathLike) -> list[PreferenceRecord]:
    return list(iter_preferences(path))


def _first_error(e: Exception) -> str:
    return validation_errors(e)[0] if isinstance(e, ValidationError) else str(e)
