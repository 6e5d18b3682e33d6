"""Measure issue 13's pieces on one vLLM engine (the embedded model):

  1. routing accuracy of --route auto on the categorised prompt files (red-team -> their
     category's principle, helpful -> benign), the benign threshold chosen on the train
     files and reported on the eval files too, with n and chance;
  2. an AFTER run: `cai generate` with pipelines/demo.yaml on a mixed prompt set;
  3. the relevance check's scores (PMI, meta-commentary) of every revision in the given
     run directories, for hand labelling.

    flock /tmp/cai-vllm.lock python bench/revision_quality.py --mixed pipelines/prompts/mixed_eval.jsonl \
        --after outputs/revq/after --score-runs outputs/revq/before outputs/revq/after --out outputs/revq/measure.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cai.constitution import load_constitution
from cai.generate import relevance, routing
from cai.generate.checkpoint import RunStore
from cai.generate.quality import meta_commentary

PROMPTS = Path("pipelines/prompts")


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (PROMPTS / name).read_text().splitlines() if line.strip()]


def accuracy(c, scored, threshold, exclude=()):
    """(right, n) for harmful->its category's principle and benign->benign."""
    out = {"harm_right": 0, "harm_n": 0, "harm_flagged": 0, "benign_right": 0, "benign_n": 0}
    for row, scores in scored:
        s = {k: v for k, v in scores.items() if k not in exclude}
        r = routing.decide(c, s, threshold)
        if row["id"].startswith("rt"):
            out["harm_n"] += 1
            out["harm_flagged"] += r.label != routing.BENIGN
            out["harm_right"] += r.label != routing.BENIGN and row["category"] in c.principle(r.label).tags
        else:
            out["benign_n"] += 1
            out["benign_right"] += r.label == routing.BENIGN
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixed", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--score-runs", nargs="*", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-routing", action="store_true")
    args = ap.parse_args()

    from cai.backends.vllm_backend import VLLMBackend
    from cai.models import pull

    c = load_constitution("harmless")
    t0 = time.perf_counter()
    backend = VLLMBackend(str(pull()), gpu_memory_utilization=0.3, max_model_len=4096)
    result: dict = {"engine_start_s": round(time.perf_counter() - t0, 1)}
    chosen = None
    try:
        if not args.skip_routing:
            # every other train prompt (time on a shared CPU); the eval files in full
            tune = rows("red_team_train.jsonl")[::2] + rows("helpful_train.jsonl")[::2]
            held = rows("red_team_eval.jsonl") + rows("helpful_eval.jsonl")
            # the shipped raw-text layout, and the question as a chat turn for comparison
            variants = {"raw": routing.routing_text,
                        "chat": lambda b, t: b.render_chat([{"role": "user", "content":
                            f"Name the topic of this request in a few words.\n\nRequest: {t}"}])
                        + "Topic:"}
            best = None
            for name, fn in variants.items():
                routing.routing_text = fn
                t1 = time.perf_counter()
                tune_s = list(zip(tune, routing.score_prompts(backend, c, [r["prompt"] for r in tune])))
                held_s = list(zip(held, routing.score_prompts(backend, c, [r["prompt"] for r in held])))
                secs = round(time.perf_counter() - t1, 1)
                for exclude in ((), ("general-harm", "toxicity")):
                    sweep = []
                    for th in [x / 2 for x in range(0, 13)]:
                        a = accuracy(c, tune_s, th, exclude)
                        bal = 0.5 * (a["harm_flagged"] / a["harm_n"] + a["benign_right"] / a["benign_n"])
                        sweep.append((bal, a["harm_right"] / a["harm_n"], th))
                    bal, _, th = max(sweep)
                    key = f"{name}/{'no-generic' if exclude else 'all'}"
                    entry = {"threshold": th, "tune": accuracy(c, tune_s, th, exclude),
                             "eval": accuracy(c, held_s, th, exclude), "tune_balanced": round(bal, 3),
                             "scoring_s": secs}
                    result.setdefault("routing", {})[key] = entry
                    print(key, json.dumps(entry), flush=True)
                    score = entry["tune"]["harm_right"] / entry["tune"]["harm_n"] + bal
                    if best is None or score > best[0]:
                        best = (score, name, exclude, th, fn)
            _, name, exclude, chosen, fn = best
            routing.routing_text = fn
            if exclude:
                keep = routing.candidates
                routing.candidates = lambda cc: [p for p in keep(cc) if p.id not in exclude]
            result["routing_choice"] = {"variant": name, "exclude": list(exclude), "threshold": chosen}
            print("chosen", result["routing_choice"], flush=True)

        from cai.generate.config import load_config
        from cai.generate.run import run_generate

        overrides = {"prompts": args.mixed, "out": args.after, "limit": 40, "progress": False}
        if chosen is not None:
            overrides["route_threshold"] = chosen
        t1 = time.perf_counter()
        summary = run_generate(load_config("pipelines/demo.yaml", overrides), backend=backend)
        result["after"] = {k: summary[k] for k in ("status", "sft", "preferences", "report", "scoring_s",
                                                   "generate_s")}
        result["after"]["wall_s"] = round(time.perf_counter() - t1, 1)
        print("after", json.dumps(result["after"]), flush=True)

        scored = []
        for run in args.score_runs:
            recs = list(RunStore(run).iter_records())
            prompts = relevance.distinct_prompts([r["prompt"] for r in recs])
            items, keys = [], []
            for r in recs:
                rev = r["rounds"][0]["revision"] if r["rounds"] else None
                if rev:
                    items.append((r["prompt"], relevance.shuffled(prompts, r["prompt"]), rev))
                    keys.append(r)
            pmis = relevance.pmi(backend, items)
            for r, (_, _, rev), s in zip(keys, items, pmis):
                scored.append({"run": run, "id": r["id"], "source_id": r["source_id"],
                               "prompt": r["prompt"][-1]["content"], "initial_response": r["initial_response"],
                               "principle": r["rounds"][0]["principle_id"], "revision": rev,
                               "status": r["status"], "pmi": s, "meta": meta_commentary(rev)})
        result["scored_revisions"] = scored
    finally:
        backend.close()
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
