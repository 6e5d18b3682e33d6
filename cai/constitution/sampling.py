"""Deterministic, weighted principle draws.

A draw depends only on (seed, key) and the constitution, never on what was drawn before
or on processing order, so a resumed or re-sharded run picks the same principle for the
same record. Generation uses key = f"{record_id}/round{r}".

Each principle gets its own uniform number u from (seed, key, principle id), and the
principle with the smallest -ln(u) / weight wins (an exponential race: principle p wins
with probability weight_p / sum of weights; the next smallest are weighted draws without
replacement, Efraimidis-Spirakis). Because a principle's number depends on nothing but
its own id, editing the constitution moves only the draws that involve the edit: adding a
principle changes only the draws it now wins, removing one only the draws it had won,
reweighting one only draws that move to or from it, and editing a principle's text moves
none (`cai.generate.incremental` reruns exactly those records).
"""

from __future__ import annotations

import hashlib
import math
from typing import Collection

from cai.constitution.schema import Constitution, Principle


def _uniform(seed: int, key: str, principle_id: str) -> float:
    """A number in (0, 1) determined by (seed, key, principle id) alone."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}\x00{principle_id}".encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / (2 ** 64 + 2)


def _race(seed: int, key: str, pool: list[Principle]) -> list[Principle]:
    """`pool` (weights > 0) ordered by its exponential race for (seed, key): first = drawn."""
    return sorted(pool, key=lambda p: (-math.log(_uniform(seed, key, p.id)) / p.weight, p.id))


def tagged(constitution: Constitution, tags: Collection[str] | None) -> list[Principle]:
    """The drawable principles (weight > 0) sharing a tag with `tags`; all drawable ones
    when `tags` is empty or None, or when none shares a tag."""
    pool = [p for p in constitution.principles if p.weight > 0]
    wanted = set(tags or ())
    return [p for p in pool if wanted.intersection(p.tags)] or pool


def sample_principles(constitution: Constitution, seed: int, key: str, k: int,
                      distinct: bool = True, tags: Collection[str] | None = None) -> list[Principle]:
    """`k` principles drawn by weight; `distinct` draws without replacement (draw i with
    replacement is the winner of its own race, key f"{key}#{i}"). Weight-0 principles are
    never drawn. With `tags`, only principles sharing one are drawn (all of them if none
    does: see `tagged`)."""
    pool = tagged(constitution, tags)
    routed = len(pool) < sum(p.weight > 0 for p in constitution.principles)
    if k < 0:
        raise ValueError("k must be >= 0")
    if distinct and k > len(pool):
        raise ValueError(f"cannot draw {k} distinct principles: {constitution.name} has "
                         f"{len(pool)} with weight > 0"
                         + (f" sharing a tag with {sorted(tags)}" if routed else ""))
    if not pool and k:
        raise ValueError(f"{constitution.name} has no principle with weight > 0")
    if distinct:
        return _race(seed, key, pool)[:k]
    return [_race(seed, key if i == 0 else f"{key}#{i}", pool)[0] for i in range(k)]


def sample_principle(constitution: Constitution, seed: int, key: str,
                     tags: Collection[str] | None = None) -> Principle:
    """One principle drawn by weight, determined by (seed, key) alone (and `tags`)."""
    return sample_principles(constitution, seed, key, 1, tags=tags)[0]
