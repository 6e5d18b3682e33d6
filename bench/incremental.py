"""Edit one principle, rerun only what it touched: the demo's generate stage, a full run
against the rerun after editing one principle's critique request.

    python bench/incremental.py [--backend transformers] [--principle NAME] [--max-tokens 128]
                                [--limit N] [--light]

The demo's generate section (pipelines/demo.yaml: its 64 train prompts, route auto by the
`category` field, 2 revision candidates, ...) on the embedded model, one engine shared by
both runs (its load is not timed). After the full run, the share of records an edit of
each of the 14 principles would touch is counted from the records' principle hashes
(`cai constitution diff --run`, without running). The principle edited is `--principle`,
or by default the one with the median share among the principles the run used (the
lower median, ties by id): the demo's red-team prompts route mostly to crime (about 41% of records) and violence-weapons
(28%), and an edit of those cannot cost 1/5 of the full run when it remakes 2/5 of it.

Prints, from the one run: the full run's seconds, the principle edited and why, the share
of records it touches, the rerun's seconds and records remade, rerun/full, and
(rerun/full) / share: 1.0 when the rerun costs exactly its share of the full run, above 1
by the rerun's fixed costs (reading the shards, rewriting sft/ and preferences/).

`--light` turns off the demo's scoring steps (routing by the model, the no-change verdict,
the relevance check; one revision candidate): on a loaded 2-core CPU through
transformers, which shares no prompt prefixes, they take most of the time. `--limit N`
takes the first N prompts only (a quick check of the script, not a figure).
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
                light: bool = False, limit: int | None = None) -> GenerateConfig:
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
    if limit:
        section["limit"] = limit
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


def shares_by_principle(tmp: Path, constitution: Path) -> dict[str, int]:
    """Records an edit of each principle would make again, counted from the run's stored
    principle hashes (the rerun rules, nothing run)."""
    out = {}
    for p in load_constitution(constitution).principles:
        trial = tmp / "trial.yaml"
        shutil.copy(constitution, trial)
        edit(trial, p.id)
        out[p.id] = touched(tmp / "run", load_constitution(trial))["stale"]
    return out


def median_principle(shares: dict[str, int]) -> str:
    """The principle with the lower median share among those the run used (ties broken by
    id): an edit of a principle no record used reruns nothing, which would meet the target
    without measuring anything."""
    used = [pid for pid in shares if shares[pid]] or list(shares)
    ordered = sorted(used, key=lambda pid: (shares[pid], pid))
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="transformers")
    ap.add_argument("--model", default=None)
    ap.add_argument("--principle", default=None,
                    help="the principle to edit (default: the median share, see above)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default: the demo's (128)")
    ap.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    ap.add_argument("--light", action="store_true", help="no model scoring steps (see above)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cai-incremental-"))
    try:
        constitution = tmp / "harmless.yaml"
        shutil.copy(SHIPPED_DIR / "harmless.yaml", constitution)
        ids = {p.id for p in load_constitution(constitution).principles}
        if args.principle and args.principle not in ids:
            sys.exit(f"--principle {args.principle}: not a principle of harmless.yaml")
        config = demo_config(tmp, constitution, args.max_tokens, args.light, args.limit)
        backend = load_backend(args.backend, args.model)
        t0 = time.perf_counter()
        full = run_generate(config, backend=backend)
        t_full = time.perf_counter() - t0
        records = full["records"]
        shares = shares_by_principle(tmp, constitution)
        principle = args.principle or median_principle(shares)
        used = sum(1 for n in shares.values() if n)
        why = "--principle" if args.principle else \
            f"the median share of the {used} principles the run used (lower median, ties by id)"
        edit(constitution, principle)
        t0 = time.perf_counter()
        again = run_generate(config, backend=backend)
        t_again = time.perf_counter() - t0
        backend.close()
        share = shares[principle] / records if records else 0.0
        ratio = t_again / t_full
        print(f"backend {args.backend}, model {backend.model}, {records} records "
              f"(max_tokens {config.max_tokens}{', light' if args.light else ''}"
              f"{f', first {args.limit} prompts' if args.limit else ''})")
        print(f"full run                {t_full:8.1f} s")
        print(f"edited principle        {principle} ({why})")
        print(f"share of records        {share:8.3f} ({shares[principle]} of {records} use it)")
        print(f"rerun                   {t_again:8.1f} s: {again['new_records']} records made "
              f"again")
        print(f"rerun / full            {ratio:8.3f} (target for 1 of 14 principles: <= 0.2, "
              f"{'met' if ratio <= 0.2 else 'not met'})")
        print(f"(rerun / full) / share  " + (f"{ratio / share:8.2f} (1 = in proportion to the "
                                            "records touched)" if share else
                                            "     n/a (the edit touches no record)"))
        print("records an edit of each principle would make again:")
        for pid, n in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {pid:<28} {n:3d}  ({n / records if records else 0:.1%})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
