"""A stage's manifest, `stage.json`: what it ran with and what it made.

    {"stage": "rm", "round": 1, "status": "done" | "running" | "failed",
     "config_hash": ..., "inputs": {"label": <its output hash>, "file:prompts": ...},
     "config": {...}, "summary": {...}, "started": ..., "finished": ..., "seconds": ...,
     "output_hash": ..., "files": {relative path: size}}

A finished stage is up to date when its config hash and its inputs are the same as now and
its files are still there with their sizes. Downstream stages list this stage's
`output_hash` (a hash of its files' contents) among their inputs, so any change upstream
reaches them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cai.io import atomic_write_json

MANIFEST = "stage.json"


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def output_files(stage_dir: Path) -> dict[str, int]:
    """The stage's files (relative path -> size), without its manifest and hidden files
    (locks, temp files)."""
    files = {}
    if not stage_dir.is_dir():
        return files
    for p in sorted(stage_dir.rglob("*")):
        rel = p.relative_to(stage_dir)
        if p.is_file() and rel.as_posix() != MANIFEST and not _hidden(rel):
            files[rel.as_posix()] = p.stat().st_size
    return files


def hash_path(path: str | os.PathLike) -> str | None:
    """Content hash of a file, or of every file under a directory (names and bytes);
    None when the path does not exist."""
    p = Path(path)
    if p.is_file():
        return _hash_files(p.parent, [p.name])
    if p.is_dir():
        return _hash_files(p, list(output_files(p)))
    return None


def _hash_files(root: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8") + b"\0")
        with open(root / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((stage_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_manifest(stage_dir: Path, manifest: dict[str, Any]) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / MANIFEST, manifest)


def stale_reasons(manifest: dict[str, Any] | None, config_hash: str,
                  inputs: dict[str, str | None], stage_dir: Path) -> list[str]:
    """Why the stage must run (empty: it is up to date)."""
    if manifest is None:
        return ["never ran"]
    if manifest.get("status") != "done":
        return [f"last run {manifest.get('status', 'unfinished')}"]
    why = []
    if manifest.get("config_hash") != config_hash:
        why.append("config changed")
    old = manifest.get("inputs") or {}
    changed = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
    if changed:
        why.append("inputs changed: " + ", ".join(changed))
    files = output_files(stage_dir)
    missing = [f for f, size in (manifest.get("files") or {}).items() if files.get(f) != size]
    if missing:
        why.append(f"{len(missing)} output file(s) missing or changed")
    return why
