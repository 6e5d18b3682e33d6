"""The run directory as a checkpoint: finished records live in atomic Parquet shards.

    <run>/
      manifest.json          identity (fingerprint + inputs), status, counts, summary
      revisions/part-00000.parquet ...   one shard per finished chunk, the full chain per record
      .lock                  held (flock) while a process works here; names the holder (pid,
                             host, start time, command) for the message a second run prints

Exactly-once rests on three facts:
  - a shard appears under its real name only once it is complete (temp file + fsync +
    rename), so after `kill -9` every visible shard is whole and a half-written one is
    only a `.part-*.tmp`, swept away on the next start;
  - a record's id is a hash of its prompt, sample index and the generation fingerprint, and
    a rerun only generates ids no shard holds yet (after dropping, with `drop`, the records
    a constitution edit made stale: each shard holding one is rewritten without it, so a
    kill in between only leaves records missing, to be made again);
  - the flock keeps two processes from filling one run directory at once (the kernel drops
    it when a process dies, however it dies).
A changed fingerprint or input set is refused (`RunConfigError`), never mixed in.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from cai.io import MANIFEST_NAME, atomic_write_json, write_parquet_atomic
from cai.schema import arrow_messages

RUN_FORMAT = "cai.generate-run"
REVISIONS = "revisions"

_MESSAGES = arrow_messages()
_ROUND = pa.struct([
    ("round", pa.int32()), ("principle_id", pa.string()),
    ("critique", pa.string()), ("critique_finish", pa.string()), ("critique_tokens", pa.int32()),
    ("revision", pa.string()), ("revision_finish", pa.string()), ("revision_tokens", pa.int32()),
    # which of the revision_candidates was kept, and the problems of those passed over
    ("revision_candidate", pa.int32()), ("rejected_candidates", pa.list_(pa.string())),
    # P(no change needed) from the verdict before the critique; the kept revision's PMI
    # with its prompt (relevance check). Null where the step did not run.
    ("p_no_change", pa.float64()), ("revision_relevance", pa.float64()),
])
# Fixed, so every shard (and an empty run) has the same columns for `datasets`.
REVISION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source_id", pa.string()),
    ("location", pa.string()),
    ("sample_index", pa.int32()),
    ("prompt", _MESSAGES),
    ("initial_response", pa.string()),
    ("response_finish", pa.string()),
    ("response_tokens", pa.int32()),
    ("rounds", pa.list_(_ROUND)),
    ("principle_ids", pa.list_(pa.string())),
    ("final_response", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("flags", pa.list_(pa.string())),
    ("route", pa.string()),  # principle id or "benign" (route auto), "tags", "random"
    ("route_score", pa.float64()),  # route auto: the best candidate's gain, nats
    ("model", pa.string()),
    ("backend", pa.string()),
    ("sampling", pa.string()),  # JSON: per-stage parameters
    ("seed", pa.int64()),
    ("constitution", pa.string()),
    ("constitution_hash", pa.string()),  # the whole constitution's, when the record was made
    ("principle_hashes", pa.string()),  # JSON: the parts of it the record used (incremental.py)
    ("config_hash", pa.string()),
    ("timings", pa.string()),  # JSON: seconds of the batched calls the record was part of
    ("metadata", pa.string()),  # JSON: the input row's other fields
])


class RunConfigError(RuntimeError):
    """The run directory belongs to a different configuration."""


class RunLockedError(RuntimeError):
    """Another process is working in this run directory."""


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.revisions = self.root / REVISIONS
        self._lock_fd: int | None = None
        self.stale_holder: dict[str, Any] | None = None  # set by open(): see _lock

    # ------------------------------------------------------------------ lifecycle

    def open(self, identity: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """Lock the directory, sweep leftovers of a killed writer, and check (or record)
        the run's identity. Returns the manifest."""
        if self.root.exists() and not self.root.is_dir():
            raise RunConfigError(f"{self.root}: exists and is not a directory")
        self.revisions.mkdir(parents=True, exist_ok=True)
        self._lock()
        for tmp in self.root.rglob(".*.tmp"):  # a temp file is never a finished write
            tmp.unlink(missing_ok=True)
        manifest = self.manifest()
        if manifest is None:
            if any(self.revisions.glob("*.parquet")):
                raise RunConfigError(f"{self.root}: has revision shards but no manifest; "
                                     "not a run this command can continue")
            manifest = {"format": RUN_FORMAT, "status": "running", **identity, "config": config,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write_json(self.root / MANIFEST_NAME, manifest)
            return manifest
        if manifest.get("format") != RUN_FORMAT:
            raise RunConfigError(f"{self.root}: not a `cai generate` run directory")
        changes = _diff({k: manifest.get(k) for k in identity}, identity)
        if changes:
            raise RunConfigError(
                f"{self.root} holds a run with a different configuration:\n  "
                + "\n  ".join(changes)
                + "\nRerun with the original settings to continue it, or choose a new --out.")
        return manifest

    def _lock(self) -> None:
        """Take the flock, or say who holds it. The kernel drops a flock when its process
        dies, so a lock file that still names a holder once we have the flock was left by a
        process that died without cleaning up: `stale_holder` says which."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, running since "
                   f"{holder.get('started')}: {holder.get('command')}" if holder else
                   "a process that has not written its name yet")
            raise RunLockedError(
                f"{self.root} is in use by another `cai generate` ({who}). Wait for it to "
                "finish, stop it, or choose another --out.") from None
        self.stale_holder = _read_holder(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)  # a clean exit leaves no holder named
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ contents

    def manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.root / MANIFEST_NAME, manifest)

    def shards(self) -> list[Path]:
        return sorted(self.revisions.glob("part-*.parquet"))

    def done_ids(self) -> set[str]:
        done: set[str] = set()
        for shard in self.shards():
            done.update(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
        return done

    def write_shard(self, rows: list[dict[str, Any]]) -> Path:
        """One finished chunk, atomically, under the next free number."""
        numbers = [int(p.stem.split("-")[1]) for p in self.shards()]
        path = self.revisions / f"part-{max(numbers, default=-1) + 1:05d}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=REVISION_SCHEMA), path)
        return path

    def drop(self, ids: set[str]) -> int:
        """Remove the records `ids` from their shards (each rewritten atomically without
        them, or deleted when nothing is left); the other rows stay as they were. Returns
        how many rows went."""
        dropped = 0
        for shard in self.shards():
            table = pq.read_table(shard, schema=REVISION_SCHEMA)
            keep = [i not in ids for i in table.column("id").to_pylist()]
            if all(keep):
                continue
            dropped += keep.count(False)
            if any(keep):
                write_parquet_atomic(table.filter(pa.array(keep)), shard)
            else:
                shard.unlink()
        return dropped

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every finished record in shard order, each id once (a repeat would be a bug in
        this module; it is skipped, and counted by the caller comparing lengths)."""
        seen: set[str] = set()
        for shard in self.shards():
            for row in pq.read_table(shard, schema=REVISION_SCHEMA).to_pylist():
                if row["id"] not in seen:
                    seen.add(row["id"])
                    yield row
