"""How many records of a generation run each constitution change would make again
(`cai constitution diff A B --run DIR`): the rerun rules of `incremental`, counted
without running anything."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cai.constitution import FRAME, Constitution
from cai.generate.checkpoint import RunStore
from cai.generate.config import GenerateConfig
from cai.generate.incremental import ROUTE, hash_table, stale_records


def touched(run_dir: str | Path, new: Constitution) -> dict[str, Any]:
    """{"records": n, "stale": m, "by_cause": {principle id | FRAME | ROUTE: records}}. A
    record blamed on two principles (a draw that moved from one to the other) counts for
    both."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    if not manifest or not manifest.get("config"):
        raise FileNotFoundError(f"{run_dir}: not a `cai generate` run directory (no manifest)")
    config = GenerateConfig.model_validate(manifest["config"])
    records = list(store.iter_records())
    stale = stale_records(records, new, config, hash_table(new, config))
    by_cause: Counter[str] = Counter(c for s in stale.values() for c in s.causes)
    return {"records": len(records), "stale": len(stale), "by_cause": dict(by_cause),
            "few_shot": config.few_shot, "frame": FRAME, "route": ROUTE}
