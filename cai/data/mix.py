"""Combine preference sets with weights, dedupe, and split train/test by prompt.

Steps, all deterministic in `seed`:
1. Dedupe: records with the same prompt, chosen and rejected (whitespace-normalised) are
   one record; the first occurrence wins, in the order the inputs are given (so list the
   set whose labels you trust most first). A reversed pair (chosen and rejected swapped) is
   a different record.
2. Weights < 1 subsample: weight 0.5 keeps a seeded round(0.5 * n) of that set's unique
   records (weight 0 drops the set). This applies before the split, to train and test alike.
3. Split by prompt (`prompt_key`): prompts are ranked by a seeded hash and the first
   round(test_fraction * prompts) go to test (at least one, and never all, when there are
   two or more prompts and test_fraction > 0). Every record of a prompt lands on the same
   side, so no prompt leaks. A ranking by hash keeps the split stable as sets grow.
4. Weights > 1 repeat, in train only: weight 2.0 writes each train record twice, 1.5 once
   plus a seeded half again. Test never holds repeats, so evaluation counts each pair once.
5. Train is shuffled (seeded) so the sets interleave; test keeps input order.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, Field

from cai.records import PreferenceRecord
from cai.schema import prompt_key, stable_id


class MixInput(BaseModel):
    path: str
    weight: float = Field(1.0, ge=0.0)


class MixInputReport(BaseModel):
    path: str
    weight: float
    read: int = 0
    duplicates: int = 0  # dropped because an earlier record (this set or an earlier one) matched
    kept: int = 0  # after dedupe and subsampling
    train: int = 0  # including repeats
    test: int = 0


class MixReport(BaseModel):
    seed: int
    test_fraction: float
    inputs: list[MixInputReport]
    prompts: int = 0
    test_prompts: int = 0
    train: int = 0
    test: int = 0


def parse_mix_spec(spec: str) -> MixInput:
    """"path[:weight]"; a suffix that is not a number is part of the path."""
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            w = float(weight)
        except ValueError:
            pass
        else:
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"{spec}: weight must be a finite number >= 0")
            return MixInput(path=path, weight=w)
    return MixInput(path=spec)


def record_key(record: PreferenceRecord) -> str:
    """Identity for dedupe: whitespace-normalised prompt, chosen and rejected, in that order
    (a swapped pair is a different record)."""
    return stable_id(prompt_key(record.prompt), prompt_key(record.chosen), prompt_key(record.rejected))


def _sample(items: list[Any], k: int, rng: random.Random) -> list[Any]:
    """k items without replacement, kept in their original order."""
    picked = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in picked]


def _n_test(prompts: int, fraction: float) -> int:
    if fraction <= 0 or prompts < 2:
        return 0
    return min(max(round(fraction * prompts), 1), prompts - 1)


def mix_records(
    sets: Sequence[tuple[MixInput, Sequence[PreferenceRecord]]],
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[PreferenceRecord], list[PreferenceRecord], MixReport]:
    """(train, test, report) for weighted input sets; see the module docstring."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    reports = [MixInputReport(path=inp.path, weight=inp.weight) for inp, _ in sets]

    seen: set[str] = set()
    kept: list[list[PreferenceRecord]] = []
    for i, (inp, records) in enumerate(sets):
        unique = []
        for rec in records:
            key = record_key(rec)
            if key in seen:
                reports[i].duplicates += 1
            else:
                seen.add(key)
                unique.append(rec)
        reports[i].read = len(records)
        if inp.weight < 1.0:
            unique = _sample(unique, round(inp.weight * len(unique)), random.Random(f"{seed}:sub:{i}"))
        reports[i].kept = len(unique)
        kept.append(unique)

    prompts = sorted({prompt_key(r.prompt) for recs in kept for r in recs},
                     key=lambda k: (stable_id(seed, k), k))
    test_prompts = set(prompts[: _n_test(len(prompts), test_fraction)])

    train: list[PreferenceRecord] = []
    test: list[PreferenceRecord] = []
    for i, ((inp, _), recs) in enumerate(zip(sets, kept)):
        held = [r for r in recs if prompt_key(r.prompt) in test_prompts]
        rest = [r for r in recs if prompt_key(r.prompt) not in test_prompts]
        copies = rest * int(inp.weight) if inp.weight >= 1.0 else list(rest)
        frac = inp.weight - int(inp.weight) if inp.weight >= 1.0 else 0.0
        if frac:
            copies += _sample(rest, round(frac * len(rest)), random.Random(f"{seed}:rep:{i}"))
        reports[i].train, reports[i].test = len(copies), len(held)
        train += copies
        test += held
    random.Random(f"{seed}:shuffle").shuffle(train)

    report = MixReport(seed=seed, test_fraction=test_fraction, inputs=reports, prompts=len(prompts),
                       test_prompts=len(test_prompts), train=len(train), test=len(test))
    return train, test, report


def mix_files(
    specs: Sequence[str | MixInput],
    out_dir: str | os.PathLike,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    shard_size: int = 1000,
) -> MixReport:
    """Read the inputs, mix them, write `out_dir/train` and `out_dir/test` stores and
    `out_dir/mix.json` (the report)."""
    from cai.data.store import read_preferences, write_preferences
    from cai.io import atomic_write_json

    inputs = [parse_mix_spec(s) if isinstance(s, str) else s for s in specs]
    sets = [(inp, read_preferences(inp.path)) for inp in inputs]
    train, test, report = mix_records(sets, test_fraction=test_fraction, seed=seed)
    out = Path(out_dir)
    extra = {"mix": report.model_dump()}
    write_preferences(train, out / "train", shard_size=shard_size, extra=extra)
    write_preferences(test, out / "test", shard_size=shard_size, extra=extra)
    atomic_write_json(out / "mix.json", report.model_dump())
    return report
