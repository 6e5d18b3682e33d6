"""Small pipeline files tests run through `cai run`."""

from __future__ import annotations

from pathlib import Path

PROMPTS = Path(__file__).resolve().parent.parent / "pipelines" / "prompts"


def generate_then_eval(path: Path, run: str, policy: str, reference: str) -> Path:
    """generate on 2 training prompts, then eval `policy` against `reference` on 2 held-out
    prompts, 4 tokens each; `run` is the `run:` mapping's inside. Returns `path`."""
    path.write_text(f"""\
run: {{{run}}}
prompts:
  train: [{{file: {PROMPTS / 'red_team_train.jsonl'}, limit: 2}}]
generate: {{prompts: train, max_tokens: 4, few_shot: false}}
eval:
  model: {policy}
  reference: {reference}
  harmful: [{PROMPTS / 'red_team_eval.jsonl'}]
  benign: [{PROMPTS / 'helpful_eval.jsonl'}]
  limit: 1
  max_tokens: 4
  constitution: none
""")
    return path
