"""Deterministic, weighted principle draws.

A draw depends only on (seed, key) and the constitution, never on what was drawn before
or on processing order, so a resumed or re-sharded run picks the same principle for the
same record. Generation uses key = f"{record_id}/round{r}".
"""

from __future__ import annotations

import hashlib
import random
from typing import Collection

from cai.constitution.schema import Constitution, Principle


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _draw(rng: random.Random, pool: list[Principle]) -> int:
    total = sum(p.weight for p in pool)
    x = rng.random() * total
    for i, p in enumerate(pool):
        if p.weight <= 0:
            continue
        x -= p.weight
        if x < 0:
            return i
    return max(i for i, p in enumerate(pool) if p.weight > 0)  # float round-off at the top end


def tagged(constitution: Constitution, tags: Collection[str] | None) -> list[Principle]:
    """The drawable principles (weight > 0) sharing a tag with `tags`; all drawable ones
    when `tags` is empty or None, or when none shares a tag."""
    pool = [p for p in constitution.principles if p.weight > 0]
    wanted = set(tags or ())
    return [p for p in pool if wanted.intersection(p.tags)] or pool


def sample_principles(constitution: Constitution, seed: int, key: str, k: int,
                      distinct: bool = True, tags: Collection[str] | None = None) -> list[Principle]:
    """`k` principles drawn by weight; `distinct` draws without replacement. Weight-0
    principles are never drawn. With `tags`, only principles sharing one are drawn (all of
    them if none does: see `tagged`)."""
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
    rng = _rng(seed, key)
    out: list[Principle] = []
    for _ in range(k):
        i = _draw(rng, pool)
        out.append(pool.pop(i) if distinct else pool[i])
    return out


def sample_principle(constitution: Constitution, seed: int, key: str,
                     tags: Collection[str] | None = None) -> Principle:
    """One principle drawn by weight, determined by (seed, key) alone (and `tags`)."""
    return sample_principles(constitution, seed, key, 1, tags=tags)[0]
