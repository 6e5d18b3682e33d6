"""Content hashes per principle, and what changed between two versions of a constitution.

A generated record or a label stores the hash of each principle it used, so after an edit
only the records whose principles changed are made again (`cai.generate.incremental`).
A principle's hash covers everything of it that reaches the model: its critique, revision,
comparison and judgement texts and the worked examples written for it. Its weight and tags
are not text the model reads: they decide draws and routing, which are checked by drawing
again (see `cai.constitution.sampling`).

The *frame* is what every record's prompts share: the system prompt and, when few-shot is
on, every critique/revision example with its principle's requests (all of them are shown
before every critique, so editing a principle that has an example changes the frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cai.constitution.schema import Constitution
from cai.schema import content_hash

FRAME = "@frame"


def principle_hash(c: Constitution, principle_id: str) -> str:
    """Hash of what principle `principle_id` sends to a model, its examples included."""
    p = c.principle(principle_id)
    return content_hash({
        "critique_request": p.critique_request, "revision_request": p.revision_request,
        "comparison": p.comparison, "judgement": p.judgement_question,
        "few_shot": [ex.model_dump(mode="json") for ex in c.few_shot if ex.principle == p.id],
        "feedback_few_shot": [ex.model_dump(mode="json") for ex in c.feedback_few_shot
                              if ex.principle == p.id],
    })


def frame_hash(c: Constitution, few_shot: bool) -> str:
    """Hash of what all of a generation run's prompts share (system prompt, examples)."""
    shots = [{**ex.model_dump(mode="json"),
              "requests": [c.principle(ex.principle).critique_request,
                           c.principle(ex.principle).revision_request]}
             for ex in c.few_shot] if few_shot else []
    return content_hash({"system_prompt": c.system_prompt, "few_shot": shots})


def principle_hashes(c: Constitution, few_shot: bool = True) -> dict[str, str]:
    """{principle id: hash} for every principle, plus FRAME."""
    return {FRAME: frame_hash(c, few_shot), **{p.id: principle_hash(c, p.id) for p in c.principles}}


def feedback_hashes(c: Constitution, few_shot: bool = True) -> dict[str, str]:
    """As `principle_hashes`, for AI feedback: the frame is the worked comparisons shown
    before every question (with their principles' questions), when few-shot is on."""
    shots = [{**ex.model_dump(mode="json"),
              "questions": [c.principle(ex.principle).comparison,
                            c.principle(ex.principle).judgement_question]}
             for ex in c.feedback_few_shot] if few_shot else []
    return {FRAME: content_hash(shots), **{p.id: principle_hash(c, p.id) for p in c.principles}}


@dataclass
class ConstitutionDiff:
    """Principles edited (their text or examples), added, removed, or with other draws
    (weight or tags changed), and whether the shared frame changed."""

    edited: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    redrawn: list[str] = field(default_factory=list)
    frame: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.edited or self.added or self.removed or self.redrawn or self.frame)

    def to_dict(self) -> dict[str, Any]:
        return {"edited": self.edited, "added": self.added, "removed": self.removed,
                "redrawn": self.redrawn, "frame": self.frame}


def diff_constitutions(a: Constitution, b: Constitution, few_shot: bool = True) -> ConstitutionDiff:
    ha, hb = principle_hashes(a, few_shot), principle_hashes(b, few_shot)
    ids_a, ids_b = [p.id for p in a.principles], [p.id for p in b.principles]
    draws = lambda c, pid: (c.principle(pid).weight, sorted(c.principle(pid).tags))  # noqa: E731
    common = [pid for pid in ids_a if pid in ids_b]
    return ConstitutionDiff(
        edited=[pid for pid in common if ha[pid] != hb[pid]],
        added=[pid for pid in ids_b if pid not in ids_a],
        removed=[pid for pid in ids_a if pid not in ids_b],
        redrawn=[pid for pid in common if draws(a, pid) != draws(b, pid)],
        frame=ha[FRAME] != hb[FRAME],
    )
