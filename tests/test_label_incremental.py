"""Edit one principle, relabel only the pairs it touched (`cai.label.incremental`).

A scripted backend scores from a hash of the exact text it is sent and counts the pairs it
is asked about, so the tests count the pairs labeled again from the backend's own calls;
a pair labeled again under an edited principle would come out different, and the labels
kept are compared byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cai.backends import Backend
from cai.constitution import SHIPPED_DIR
from cai.data.store import read_preferences
from cai.label.run import LabelRunConfig, run_label


class ScoringBackend(Backend):
    """Option log-probs as hashes of (prompt, option); records every prompt it scores."""

    name, model = "scripted", "scripted-model"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def render_chat(self, conversation, add_generation_prompt=True):
        return json.dumps(conversation)

    def generate(self, conversations, sampling):  # pairwise labeling without CoT: unused
        raise AssertionError("no generation expected")

    def continuation_logprobs(self, prompts, continuations):
        self.prompts += prompts[::2]  # each prompt comes with its two options
        return [-int(hashlib.sha256((p + c).encode()).hexdigest()[:6], 16) / 0xFFFFFF
                for p, c in zip(prompts, continuations)]

    def pairs_scored(self) -> int:  # K=1: each pair is asked in two orders
        n, self.prompts = len(self.prompts) // 2, []
        return n


def _pairs(path: Path, n: int, start: int = 0, changed: int | None = None) -> Path:
    rows = [{"prompt": f"How do I do thing {i}?", "chosen": f"Like this {i}.",
             "rejected": f"No {i}." if i != changed else f"Never {i}."}
            for i in range(start, n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(out: Path) -> dict[str, str]:
    """pair (its prompt: one per pair here) -> the stored row, as the JSON a reader sees (a
    record's id follows its orientation, which a new label may flip)."""
    return {r.prompt[-1].content: json.dumps(r.to_row(), sort_keys=True)
            for r in read_preferences(out)}


def _constitution(path: Path, edit: tuple[str, str] | None = None,
                  drop: str | None = None) -> Path:
    """harmless.yaml at `path` (made the first time), with one text edited or one
    principle removed."""
    text = path.read_text() if path.exists() else (SHIPPED_DIR / "harmless.yaml").read_text()
    if edit:
        assert edit[0] in text
        text = text.replace(*edit)
    path.write_text(text)
    if drop:  # remove one principle's block (it has no worked examples)
        lines = text.splitlines(keepends=True)
        i = lines.index(f"  - id: {drop}\n")
        j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("  - id:"))
        path.write_text("".join(lines[:i] + lines[j:]))
    return path


def test_editing_one_principle_relabels_exactly_its_pairs(tmp_path):
    backend = ScoringBackend()
    pairs = _pairs(tmp_path / "pairs.jsonl", 60)
    cfile = _constitution(tmp_path / "c.yaml")
    out = tmp_path / "labels"
    cfg = LabelRunConfig(pairs=str(pairs), out=str(out), constitution=str(cfile),
                         mode="pairwise", progress=False)
    first = run_label(cfg, backend=backend, log=lambda m: None)
    assert (first["relabeled"], first["kept"], backend.pairs_scored()) == (60, 0, 60)
    before = _rows(out)
    by_principle: dict[str, set[str]] = {}
    for r in read_preferences(out):
        by_principle.setdefault(r.principle_ids[0], set()).add(r.prompt[-1].content)
    crime = by_principle["crime"]
    assert 0 < len(crime) < 60

    # edit crime's comparison question: exactly the pairs labeled under it are asked again
    _constitution(cfile, edit=("Which response gives less assistance with committing a crime?",
                               "Which response helps less with any crime?"))
    second = run_label(cfg, backend=backend, log=lambda m: None)
    assert backend.pairs_scored() == len(crime) == second["relabeled"]
    assert second["kept"] == 60 - len(crime)
    after = _rows(out)
    assert set(after) == set(before)
    assert [i for i in before if after[i] != before[i]] == sorted(crime, key=list(before).index)
    assert all(json.loads(after[i])["metadata"] != json.loads(before[i])["metadata"]
               for i in crime)  # the new comparison text was really scored
    assert list(after) == list(before)  # in input order

    # a third run has nothing to do: every label kept byte for byte
    third = run_label(cfg, backend=backend, log=lambda m: None)
    assert (backend.pairs_scored(), third["relabeled"], third["kept"]) == (0, 0, 60)
    assert _rows(out) == after

    # removing a principle relabels only its pairs (the other draws do not move)
    _constitution(cfile, drop="toxicity")
    fourth = run_label(cfg, backend=backend, log=lambda m: None)
    toxicity = by_principle.get("toxicity", set())
    assert backend.pairs_scored() == fourth["relabeled"] == len(toxicity) > 0
    assert all(_rows(out)[i] == after[i] for i in after if i not in toxicity)


def test_changed_added_and_removed_pairs(tmp_path):
    """A changed pair is labeled again, a new one labeled, a removed one's label dropped;
    the rest kept. JSONL output this time."""
    backend = ScoringBackend()
    pairs = _pairs(tmp_path / "pairs.jsonl", 20)
    out = tmp_path / "labels.jsonl"
    cfg = LabelRunConfig(pairs=str(pairs), out=str(out), mode="pairwise", progress=False)
    run_label(cfg, backend=backend, log=lambda m: None)
    backend.pairs_scored()
    before = _rows(out)
    _pairs(pairs, 21, start=1, changed=5)  # pair 0 gone, pair 5 changed, pair 20 new
    s = run_label(cfg, backend=backend, log=lambda m: None)
    assert (backend.pairs_scored(), s["relabeled"], s["kept"], s["dropped"]) == (2, 2, 18, 2)
    after = _rows(out)
    changed = "How do I do thing 5?"
    assert set(before) - set(after) == {"How do I do thing 0?"}
    assert set(after) - set(before) == {"How do I do thing 20?"}
    assert "Never 5." in after[changed] and "Never 5." not in before[changed]
    assert all(after[i] == before[i] for i in set(before) & set(after) if i != changed)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


def test_a_killed_run_keeps_what_it_labeled_and_its_rerun_labels_the_rest(tmp_path,
                                                                          monkeypatch):
    import cai.label.run

    monkeypatch.setattr(cai.label.run, "CHECKPOINT_PAIRS", 10)
    pairs = _pairs(tmp_path / "pairs.jsonl", 35)
    out = tmp_path / "labels"
    cfg = LabelRunConfig(pairs=str(pairs), out=str(out), mode="pairwise", progress=False)

    class Dies(ScoringBackend):  # killed while scoring the third part of 10 pairs
        def continuation_logprobs(self, prompts, continuations):
            if len(self.prompts) >= 2 * 20:
                raise Killed
            return super().continuation_logprobs(prompts, continuations)

    with pytest.raises(Killed):
        run_label(cfg, backend=Dies(), log=lambda m: None)
    saved = _rows(out)
    assert list(saved) == [f"How do I do thing {i}?" for i in range(20)]
    backend = ScoringBackend()
    s = run_label(cfg, backend=backend, log=lambda m: None)
    assert (backend.pairs_scored(), s["relabeled"], s["kept"]) == (15, 15, 20)
    after = _rows(out)
    assert len(after) == 35 and all(after[k] == v for k, v in saved.items())
    # the same labels as one uninterrupted run
    whole = run_label(cfg.model_copy(update={"out": str(tmp_path / "whole")}),
                      backend=ScoringBackend(), log=lambda m: None)
    assert whole["relabeled"] == 35 and _rows(tmp_path / "whole") == after
