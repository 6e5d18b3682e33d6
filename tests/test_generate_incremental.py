"""Edit one principle, rerun only what it touched (`cai.generate.incremental`).

A hashing backend writes and scores deterministically from the exact text it is sent, so
a record made again under an edited principle comes out different, and a record left
alone would come out the same even if it were (wrongly) made again: the tests count the
records made again from the backend's own calls, not only from the output."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from cai.backends import Backend, Generation
from cai.constitution import SHIPPED_DIR, diff_constitutions, load_constitution, sample_principle
from cai.generate.config import GenerateConfig
from cai.generate.run import run_generate

ROOT = Path(__file__).resolve().parents[1]


def _h(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class HashBackend(Backend):
    """Text and log-probs as hashes of what it is sent; counts the response requests."""

    name, model = "hashing", "hash-model"

    def __init__(self) -> None:
        self.responses = 0

    def render_chat(self, conversation, add_generation_prompt=True):
        return json.dumps(conversation) + ("<assistant>" if add_generation_prompt else "")

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            if len(conv) <= 2:  # a response request: [system?, user]
                self.responses += 1
            gens = []
            for i in range(sampling.n):
                h = _h(conv, i)
                text = " ".join(f"word{h[j:j + 5]}" for j in range(0, 40, 5)) + "."
                gens.append(Generation(text=text, token_ids=[1] * 9, finish_reason="stop"))
            out.append(gens)
        return out

    def continuation_logprobs(self, prompts, continuations):
        return [-5.0 * int(_h(p, c)[:6], 16) / 0xFFFFFF for p, c in zip(prompts, continuations)]


def _demo_prompts(tmp_path: Path) -> Path:
    """pipelines/demo.yaml's `train` prompt set, as one file."""
    demo = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text())
    rows = []
    for entry in demo["prompts"]["train"]:
        lines = (ROOT / entry["file"]).read_text().splitlines()
        rows += lines[:entry["limit"]]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _demo_config(tmp_path: Path, constitution: Path) -> GenerateConfig:
    section = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text())["generate"]
    section.update(prompts=str(_demo_prompts(tmp_path)), constitution=str(constitution),
                   out=str(tmp_path / "run"), progress=False)
    return GenerateConfig(**section)


def _rows(run: Path) -> dict[str, dict]:
    return {r["id"]: r for shard in sorted((run / "revisions").glob("*.parquet"))
            for r in pq.read_table(shard).to_pylist()}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_editing_one_demo_principle_remakes_exactly_its_records(tmp_path):
    constitution = tmp_path / "harmless.yaml"
    shutil.copy(SHIPPED_DIR / "harmless.yaml", constitution)
    config = _demo_config(tmp_path, constitution)
    first = run_generate(config, backend=HashBackend())
    before = _rows(tmp_path / "run")
    assert first["records"] == len(before) == 64
    used = {i for i, r in enumerate(before.values()) if "violence-weapons" in r["principle_ids"]}
    # every violence_weapons prompt is routed (by its category) to that principle alone
    categories = [json.loads(r["metadata"]).get("category") for r in before.values()]
    by_category = {i for i, c in enumerate(categories) if c == "violence_weapons"}
    assert by_category and by_category <= used

    old = load_constitution(constitution)
    _edit(constitution, "a weapon to do so? Name the specific parts that do.",
          "a weapon to do so? Quote each part that does.")
    assert diff_constitutions(old, load_constitution(constitution)).to_dict() == {
        "edited": ["violence-weapons"], "added": [], "removed": [], "redrawn": [], "frame": False}

    backend = HashBackend()
    second = run_generate(config, backend=backend)
    after = _rows(tmp_path / "run")
    assert second["records"] == 64 and set(after) == set(before)
    ids = list(before)
    remade = {i for i, rid in enumerate(ids) if after[rid] != before[rid]}
    assert second["new_records"] == backend.responses == len(used)  # only those were asked for
    assert remade == used  # ...each of them changed (its critique prompt did)
    for i, rid in enumerate(ids):
        if i not in used:
            assert after[rid] == before[rid]  # byte for byte, every column

    third = run_generate(config, backend=HashBackend())  # nothing left to do
    assert third["new_records"] == 0 and _rows(tmp_path / "run") == after


SMALL = """\
schema: 1
name: small
version: "1"
description: Four principles, drawn at random.
principles:
"""


def _principle(pid: str) -> str:
    return (f"  - {{id: {pid}, critique_request: 'Critique under {pid}.', "
            f"revision_request: 'Revise under {pid}.', comparison: 'Which is {pid}?'}}\n")


def _random_run(tmp_path: Path, ids: list[str]) -> tuple[dict, dict, GenerateConfig]:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL + "".join(_principle(p) for p in ids))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}?"}) + "\n"
                               for i in range(60)))
    config = GenerateConfig(prompts=str(prompts), constitution=str(path), out=str(tmp_path / "run"),
                            route="random", unchanged_threshold=None, min_relevance=None,
                            rounds=2, progress=False)
    return run_generate(config, backend=HashBackend()), _rows(tmp_path / "run"), config


def test_adding_a_principle_remakes_only_the_draws_it_wins(tmp_path):
    _, before, _ = _random_run(tmp_path, ["a", "b", "c", "d"])
    summary, after, config = _random_run(tmp_path, ["a", "b", "c", "d", "e"])
    c = load_constitution(config.constitution)
    wins = {rid for rid, r in before.items()
            if any(sample_principle(c, 0, f"{rid}/round{k}").id == "e" for k in range(2))}
    remade = {rid for rid in before if after[rid] != before[rid]}
    assert wins and remade == wins and summary["new_records"] == len(wins)
    assert all("e" in after[rid]["principle_ids"] for rid in remade)
    assert 0.2 < len(wins) / len(before) < 0.55  # 1 - (4/5)^2 = 0.36 expected


def test_removing_a_principle_remakes_only_its_records(tmp_path):
    _, before, _ = _random_run(tmp_path, ["a", "b", "c", "d"])
    summary, after, _ = _random_run(tmp_path, ["a", "c", "d"])
    had_b = {rid for rid, r in before.items() if "b" in r["principle_ids"]}
    remade = {rid for rid in before if after[rid] != before[rid]}
    assert had_b and remade == had_b and summary["new_records"] == len(had_b)
    assert not any("b" in r["principle_ids"] for r in after.values())


def test_constitution_diff_counts_the_records_a_rerun_would_remake(tmp_path):
    from typer.testing import CliRunner

    from cai.cli.constitution import app

    _, before, config = _random_run(tmp_path, ["a", "b", "c", "d"])
    old = tmp_path / "old.yaml"
    shutil.copy(config.constitution, old)
    new = tmp_path / "new.yaml"
    new.write_text(old.read_text().replace("Critique under b.", "Critique harder under b.")
                   .replace("  - {id: d,", "  - {id: d, weight: 2,"))
    had_b = sum("b" in r["principle_ids"] for r in before.values())
    c = load_constitution(new)
    d_moves = sum(any(sample_principle(c, 0, f"{rid}/round{k}").id != r["principle_ids"][k]
                      for k in range(2)) and "b" not in r["principle_ids"]
                  for rid, r in before.items())
    result = CliRunner().invoke(app, ["diff", str(old), str(new), "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "small 1 -> small 1: 2 changes"
    assert lines[1].split() == ["edited", "b", str(had_b), "records"]
    assert lines[2].split()[:2] == ["redrawn", "d"]
    assert lines[-1] == (f"{had_b + d_moves} of 60 records in {tmp_path / 'run'} "
                         "would be made again")
    summary = run_generate(config.model_copy(update={"constitution": str(new)}),
                           backend=HashBackend())
    assert summary["new_records"] == had_b + d_moves
