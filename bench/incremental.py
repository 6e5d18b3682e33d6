"""Edit one principle, rerun only what it touched: the demo's generate stage, a full run
against the rerun after editing one principle's critique request.

    python bench/incremental.py [--backend transformers] [--principle privacy] [--max-tokens 128]
                                [--light]

The demo's generate section (pipelines/demo.yaml: its 64 train prompts, route auto by the
`category` field, 2 revision candidates, ...) on the embedded model, one engine shared by
both runs (its load is not timed). Prints each run's seconds, the records the rerun made
again (and the share it should be: the records that used the principle), their ratio, and
the share of records an edit of each of the 14 principles would touch
(`cai constitution diff --run`, counted without running). `--light` turns off the demo's
scoring steps (routing by the model, the no-change verdict, the relevance check; one
revision candidate): on a loaded 2-core CPU through transformers, which shares no prompt
prefixes, they take most of the time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cai.backends import load_backend  # noqa: E402
from cai.constitution import SHIPPED_DIR, load_constitution  # noqa: E402
from cai.generate.config import GenerateConfig  # noqa: E402
from cai.generate.run import run_generate  # noqa: E402
from cai.generate.touched import touched  # noqa: E402


def demo_config(tmp: Path, constitution: Path, max_tokens: int | None,
                light: bool = False) -> GenerateConfig:
    demo = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text())
    rows = []
    for entry in demo["prompts"]["train"]:
        rows += (ROOT / entry["file"]).read_text().splitlines()[:entry["limit"]]
    (tmp / "train.jsonl").write_text("\n".join(rows) + "\n")
    section = {**demo["generate"], "prompts": str(tmp / "train.jsonl"),
               "constitution": str(constitution), "out": str(tmp / "run"), "progress": False}
    if max_tokens:
        section["max_tokens"] = max_tokens
    if light:
        section.update(route="tags", unchanged_threshold=None, min_relevance=None,
                       revision_candidates=1)
    return GenerateConfig(**section)


def edit(constitution: Path, principle: str) -> None:
    """Append a sentence to the principle's critique request (the YAML stays valid: the
    request is a folded block, so one more indented line continues it)."""
    lines = constitution.read_text().splitlines()
    start = lines.index(f"  - id: {principle}")
    at = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("critique_request:"))
    end = next(i for i in range(at + 1, len(lines)) if not lines[i].startswith("      "))
    lines.insert(end, "      Quote the exact words.")
    constitution.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="transformers")
    ap.add_argument("--model", default=None)
    ap.add_argument("--principle", default="privacy")
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the demo's (128)")
    ap.add_argument("--light", action="store_true", help="no model scoring steps (see above)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cai-incremental-"))
    try:
        constitution = tmp / "harmless.yaml"
        shutil.copy(SHIPPED_DIR / "harmless.yaml", constitution)
        config = demo_config(tmp, constitution, args.max_tokens, args.light)
        backend = load_backend(args.backend, args.model)
        t0 = time.perf_counter()
        full = run_generate(config, backend=backend)
        t_full = time.perf_counter() - t0
        records = full["records"]
        shares = {}
        for p in load_constitution(constitution).principles:
            trial = tmp / "trial.yaml"
            shutil.copy(constitution, trial)
            edit(trial, p.id)
            shares[p.id] = touched(tmp / "run", load_constitution(trial))["stale"]
        edit(constitution, args.principle)
        t0 = time.perf_counter()
        again = run_generate(config, backend=backend)
        t_again = time.perf_counter() - t0
        backend.close()
        print(f"backend {args.backend}, model {backend.model}, {records} records "
              f"(max_tokens {config.max_tokens}{', light' if args.light else ''})")
        print(f"full run              {t_full:8.1f} s")
        print(f"rerun, {args.principle} edited {t_again:8.1f} s: {again['new_records']} records "
              f"made again ({again['new_records'] / records:.1%}; predicted "
              f"{shares[args.principle]})")
        print(f"rerun / full          {t_again / t_full:8.3f}")
        print("records an edit of each principle would make again:")
        for pid, n in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"  {pid:<28} {n:3d}  ({n / records:.1%})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
