"""vLLM on CPU: the KV-cache block size, and what the prefix cache can reuse with it.

vLLM's prefix cache reuses whole blocks only. Its CPU default block is 128 tokens, longer
than most of cai's scoring prompts, so a one-token scoring request (routing's topic names,
the labeler's "(A)"/"(B)") prefilled its whole prompt again. Each block size runs in a fresh
process on the embedded model, over the same work:

  route     `cai generate`'s routing of 32 demo training prompts (topic names scored)
  generate  two answers to each of 24 red-team prompts (greedy and T=1, 64 tokens)
  label     the labeler's comparisons of those pairs (few-shot, both orders)

and prints each phase's seconds, the ratio to the first block size, and whether greedy
text and log-probs agree.

    .venv/bin/python bench/block_size.py [--blocks 128 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time

def main():
    from cai.backends import load_backend
    from cai.backends.base import SamplingConfig
    from cai.constitution import load_constitution
    from cai.generate.routing import score_prompts
    from cai.label.cot import answer_text
    from cai.label.inputs import Pair, pair_key
    from cai.label.labeler import COMPARISON_OPTIONS, LabelConfig, comparison_conversations

    block = int(sys.argv[1])
    t0 = time.perf_counter()
    b = load_backend("vllm", None, gpu_memory_utilization=0.3, block_size=block)
    out = {"start_s": time.perf_counter() - t0}
    c = load_constitution("harmless")
    rows = [json.loads(l) for l in open("pipelines/prompts/red_team_train.jsonl")]
    texts = [r["prompt"] for r in rows]

    t = time.perf_counter()
    routes = score_prompts(b, c, texts[:32])
    out["route_s"] = time.perf_counter() - t

    convs = [[{"role": "user", "content": x}] for x in texts[:24]]
    t = time.perf_counter()
    greedy = b.generate(convs, SamplingConfig(max_tokens=64, temperature=0.0))
    sampled = b.generate(convs, SamplingConfig(max_tokens=64, temperature=1.0, seed=0))
    out["generate_s"] = time.perf_counter() - t

    pairs = [Pair(key=pair_key(conv, g[0].text, s[0].text), prompt=conv, first=g[0].text,
                  second=s[0].text) for conv, g, s in zip(convs, greedy, sampled)]
    _, comps = comparison_conversations(c, pairs, LabelConfig(principles=1, few_shot=True))
    prompts = [answer_text(b.render_chat(conv), None) for conv in comps]
    t = time.perf_counter()
    lps = b.continuation_logprobs([p for p in prompts for _ in COMPARISON_OPTIONS],
                                  [o for _ in prompts for o in COMPARISON_OPTIONS])
    out["label_s"] = time.perf_counter() - t
    out["label_prompt_tokens"] = sum(len(b.tokenizer(p).input_ids) for p in prompts) / len(prompts)
    out["comparisons"] = len(prompts)
    out["greedy"] = [g[0].text for g in greedy]
    out["label_lps"] = lps
    out["route_scores"] = [sorted(r.values()) for r in routes]
    b.close()
    print("RESULT " + json.dumps(out))

if __name__ == "__main__":
    main()
"""

PHASES = ("start_s", "route_s", "generate_s", "label_s")


def run(block: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(block)], capture_output=True,
                         text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
        sys.exit(f"engine run failed (block {block}):\n{res.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def max_gap(a: list, b: list) -> float:
    flat = lambda x: [v for y in x for v in (y if isinstance(y, list) else [y])]  # noqa: E731
    return max(abs(u - v) for u, v in zip(flat(a), flat(b)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, 32])
    a = ap.parse_args()
    runs = {blk: run(blk) for blk in a.blocks}
    first = runs[a.blocks[0]]
    print(f"label prompts: {first['comparisons']} comparisons of "
          f"{first['label_prompt_tokens']:.0f} tokens on average")
    print("block  " + "  ".join(f"{p[:-2]:>9}" for p in PHASES) + "   (seconds; ratio to "
          f"block {a.blocks[0]})")
    for blk, r in runs.items():
        cells = [f"{r[p]:6.1f} s" + (f" {first[p] / r[p]:4.2f}x" if blk != a.blocks[0] and
                                      p != "start_s" else "")
                 for p in PHASES]
        print(f"{blk:5}  " + "  ".join(f"{c:>9}" for c in cells))
    for blk, r in runs.items():
        if blk == a.blocks[0]:
            continue
        same = r["greedy"] == first["greedy"]
        print(f"block {blk} vs {a.blocks[0]}: greedy text {'identical' if same else 'DIFFERS'}; "
              f"largest log-prob gap: labels {max_gap(r['label_lps'], first['label_lps']):.1e}, "
              f"routes {max_gap(r['route_scores'], first['route_scores']):.1e} nats")


if __name__ == "__main__":
    main()
