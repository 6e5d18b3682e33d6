"""BIG-bench `hhh_alignment` (Askell et al., 2021) as prompt/chosen/rejected JSONL for
`cai label --pairs ... --eval-against ...`.

    pip download --no-deps bigbench==1.0.0      # an sdist; unpack it anywhere
    python bench/hhh_pairs.py BIGBENCH/bigbench/benchmark_tasks/hhh_alignment -o hhh.jsonl

The task (Apache-2.0) has four subtasks (harmless, helpful, honest, other), 221
examples, each a conversation and two responses, one marked better by its authors. Its
data carries a canary asking that it never appear in training corpora, so we convert it
on the fly for measurement and do not ship it. A multi-turn input ("...\\n\\nAssistant: ...
\\n\\nHuman: ...") becomes a message list ending with the user's last turn.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SUBTASKS = ("harmless", "helpful", "honest", "other")
_TURN = re.compile(r"\n\n(Human|Assistant):")


def conversation(text: str) -> list[dict[str, str]]:
    parts = _TURN.split(text)
    turns = [{"role": "user", "content": parts[0].strip()}]
    for who, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if who == "Human" else "assistant", "content": content.strip()})
    return turns


def rows(task_dir: Path) -> list[dict]:
    out = []
    for sub in SUBTASKS:
        examples = json.loads((task_dir / sub / "task.json").read_text(encoding="utf-8"))["examples"]
        for i, ex in enumerate(examples):
            ranked = sorted(ex["target_scores"].items(), key=lambda kv: -kv[1])
            (chosen, _), (rejected, _) = ranked[0], ranked[-1]
            out.append({"id": f"hhh-{sub}-{i:03d}", "prompt": conversation(ex["input"]),
                        "chosen": chosen.strip(), "rejected": rejected.strip(), "subtask": sub})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task_dir", type=Path, help="bigbench/benchmark_tasks/hhh_alignment")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    data = rows(args.task_dir)
    with args.out.open("w", encoding="utf-8") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(data)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
