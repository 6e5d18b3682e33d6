"""The demo's generate stage at two chunk sizes: how many records one engine call batches.

A chunk is one batched engine call per step (answers, critiques, revisions). On a CPU a
decode step costs far more than its matmuls, so a larger batch buys tokens/s. Each size
runs the demo's own generate section (pipelines/demo.yaml, nothing else changed) through
`cai run --only generate` in a fresh process, then the bench prints the engine seconds,
tokens/s, the ratio to the first size, and whether the records agree.

    .venv/bin/python bench/generate_chunk.py [--sizes 32 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(size: int, tmp: Path) -> dict:
    spec = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text())
    spec = {k: v for k, v in spec.items() if k in ("run", "prompts", "generate")}
    spec["run"]["name"] = f"bench-chunk-{size}"
    spec["run"]["out"] = str(tmp / spec["run"]["name"])
    spec["generate"]["chunk_size"] = size
    path = tmp / f"chunk-{size}.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "cai", "run", str(path), "--only", "generate"],
                         cwd=ROOT, capture_output=True, text=True)
    stage = tmp / spec["run"]["name"] / "generate"
    if res.returncode or not (stage / "stage.json").exists():
        sys.exit(f"chunk {size} failed:\n{res.stderr[-3000:]}")
    info = json.loads((stage / "stage.json").read_text())
    return {"wall_s": info["seconds"], **info["summary"], "records": records(stage)}


def records(stage: Path) -> dict[str, tuple]:
    import pandas as pd

    df = pd.concat(pd.read_parquet(p) for p in sorted((stage / "revisions").glob("*.parquet")))
    return {r.id: (r.status, str(r.final_response), str(r.initial_response))
            for r in df.itertuples()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        runs = {n: run(n, Path(d)) for n in a.sizes}
    first = runs[a.sizes[0]]
    print("chunk  engine s  tok/s   ratio  stage wall s  records")
    for n, r in runs.items():
        same = "identical" if r["records"] == first["records"] else "DIFFER"
        print(f"{n:5}  {r['generate_s']:8.1f}  {r['tokens_per_s']:5.1f}  "
              f"{first['generate_s'] / r['generate_s']:5.2f}x  {r['wall_s']:12.1f}  "
              f"{len(r['records'])} {same if n != a.sizes[0] else ''}")


if __name__ == "__main__":
    main()
