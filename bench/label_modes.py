"""Pairwise vs pointwise AI feedback on human-labeled pairs, one engine for every run.

    python bench/label_modes.py --pairs pipelines/prompts/human_prefs.jsonl \\
        [--pairs more.jsonl] [--k 1 4] [--variants pairwise pointwise pointwise-noshot] \\
        [--backend vllm] [--model NAME] [--gpu-memory-utilization 0.3] [--json out.json]

Each file is labeled in each variant at each K exactly as `cai label --mode ...
--principles K --eval-against FILE` would (same principle draws, same prompts, same
report), with a fresh pointwise cache per run so times are comparable. A variant is a
mode, "-noshot" meaning without the constitution's feedback examples. Prints, per run:
n, accuracy with its 95% Wilson interval, accuracy where the human choice is the longer
and the shorter answer, the length-balanced accuracy, "prefer longer", position
consistency (pairwise), seconds per pair (engine load excluded), and for pointwise the
maximum-likelihood tau on that set and the median |s_x - s_y|.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", action="append", required=True, help="human-labeled pairs (repeatable)")
    ap.add_argument("--constitution", default="harmless")
    ap.add_argument("--k", type=int, nargs="+", default=[1])
    ap.add_argument("--variants", nargs="+", default=["pairwise", "pointwise"])
    ap.add_argument("--tau", type=float, default=None, help="pointwise tau (default: DEFAULT_TAU)")
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--model", default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each file")
    ap.add_argument("--json", default=None, help="write every report here")
    args = ap.parse_args()

    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.label import (DEFAULT_TAU, LabelConfig, build_report, fit_tau, fitting_pairs,
                           human_preferences, label_pairs, read_pairs, reference_diffs, run_info,
                           to_record)

    c = load_constitution(args.constitution)
    opts = {"gpu_memory_utilization": args.gpu_memory_utilization} if args.backend == "vllm" else {}
    results = []
    t0 = time.perf_counter()
    with load_backend(args.backend, args.model, **opts) as engine:
        print(f"engine {engine.name} {engine.model} loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        for path in args.pairs:
            pairs, _ = read_pairs(path)
            pairs = pairs[:args.limit] if args.limit else pairs
            human = human_preferences(pairs)
            for variant in args.variants:
                mode, _, shot = variant.partition("-")
                for k in args.k:
                    cfg = LabelConfig(mode=mode, principles=k, few_shot=shot != "noshot",
                                      tau=(args.tau or DEFAULT_TAU) if mode == "pointwise" else None)
                    fit, long = fitting_pairs(engine, c, pairs, cfg)
                    start = time.perf_counter()
                    labels = label_pairs(engine, c, fit, cfg)
                    secs = time.perf_counter() - start
                    recs = [to_record(lab, engine.model, run_info(c, cfg)) for lab in labels]
                    rep = build_report(recs, human)
                    row = {"file": path, "variant": variant, "k": k, "too_long": len(long),
                           "seconds": secs, "seconds_per_pair": secs / max(1, len(fit)),
                           "report": rep.model_dump()}
                    if mode == "pointwise":
                        diffs = reference_diffs(labels, human)
                        row["fitted_tau"] = fit_tau(diffs)
                        row["median_abs_diff"] = statistics.median(abs(d) for ds in diffs for d in ds)
                    results.append(row)
                    print(_line(row), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


def _pct(r) -> str:
    if not r or not r.get("pairs"):
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f}% [{100 * lo:.0f},{100 * hi:.0f}] n={r['pairs']}"


def _line(row: dict) -> str:
    rep = row["report"]
    h = rep["human_accuracy"]
    pc = rep["position_consistency"]
    extra = (f" tau_fit={row['fitted_tau']:.2f} med|d|={row['median_abs_diff']:.2f}"
             if "fitted_tau" in row else f" pos.consistency={100 * pc:.1f}%" if pc is not None else "")
    return (f"{row['file'].rsplit('/', 1)[-1]} {row['variant']} K={row['k']}: "
            f"acc {_pct({'pairs': h['pairs'], 'rate': h['rate'], 'ci95': h['ci95']})} | "
            f"longer {_pct(h['when_longer'])} | shorter {_pct(h['when_shorter'])} | "
            f"balanced {_pct(h['length_balanced'])} | prefer-longer "
            f"{100 * h['longer_baseline']:.1f}% | {row['seconds_per_pair']:.2f} s/pair"
            f" ({row['too_long']} too long){extra}")


if __name__ == "__main__":
    main()
