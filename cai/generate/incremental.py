"""Edit one principle, rerun only what it touched.

Record ids do not depend on the constitution's text (see `config.fingerprint_fields`), so
after an edit the run directory is still the same run. Every record stores, as JSON in its
`principle_hashes` column, the hash of each part of the constitution it used (`usage`):

    @frame      system prompt and worked examples, for every record
    @route      the routing candidates' tags, for records routed by scoring (route auto)
    <id>        each principle drawn for one of its rounds

On a rerun a record is *stale*, and made again, when one of those hashes differs from the
constitution's now, or when drawing its rounds' principles again (or routing it by its
tags field) gives others (a principle added, removed, reweighted or retagged: draws are an
exponential race, so only draws involving the edited principle move). Every other record is
kept as it is, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from cai.constitution import FRAME, Constitution, principle_hashes, sample_principle
from cai.generate.config import GenerateConfig, effective_route
from cai.generate.routing import BENIGN, BENIGN_TAG, candidates, tag_words
from cai.schema import content_hash

ROUTE = "@route"


def routing_hash(c: Constitution) -> str:
    """What route auto scores a prompt against: the candidates' names, and whether
    benign-tagged principles exist. Any change to them remakes every record routed by
    scoring (a new candidate might have won: knowing would take the model)."""
    drawable = [p for p in c.principles if p.weight > 0]
    return content_hash({"candidates": [[p.id, tag_words(p)] for p in candidates(c)],
                         "benign": any(BENIGN_TAG in p.tags for p in drawable)})


def hash_table(c: Constitution, config: GenerateConfig) -> dict[str, str]:
    """Every hash a record of this run can use."""
    return {**principle_hashes(c, config.few_shot), ROUTE: routing_hash(c)}


def scored(route: str) -> bool:
    """Was a record with this route routed by scoring its prompt (route auto)?"""
    return route not in ("", "random", "tags")


def usage(route: str, principle_ids: Iterable[str], table: dict[str, str]) -> str:
    """The `principle_hashes` column of a record: JSON of the hashes it used."""
    used = {FRAME: table[FRAME], **({ROUTE: table[ROUTE]} if scored(route) else {})}
    used.update({pid: table[pid] for pid in principle_ids})
    return json.dumps(used, sort_keys=True)


def _tags_field(record: dict[str, Any], field: str | None) -> list[str]:
    value = json.loads(record["metadata"] or "{}").get(field) if field else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


@dataclass(frozen=True)
class Stale:
    """Why a record is made again: the parts of the constitution to blame (FRAME, ROUTE or
    principle ids: the one whose hash changed, or the old and new draw) and a sentence."""

    causes: tuple[str, ...]
    reason: str


def stale_reason(record: dict[str, Any], c: Constitution, config: GenerateConfig,
                 table: dict[str, str]) -> Stale | None:
    """Why `record` must be made again under `c`, or None when it stands."""
    if not record.get("principle_hashes"):
        return Stale((), "made before principle hashes were stored")
    for key, h in json.loads(record["principle_hashes"]).items():
        if table.get(key) != h:
            return Stale((key,), f"{key} changed" if key in table else f"{key} removed")
    route = record["route"]
    drawable = [p for p in c.principles if p.weight > 0]
    field = _tags_field(record, config.principle_tags_field)
    if effective_route(config) == "auto" and (route == "tags" or scored(route)) \
            and (route == "tags") != bool({t for p in drawable for t in p.tags}.intersection(field)):
        return Stale((ROUTE,), "its tags field now routes it the other way")
    if route == "tags":
        tags: tuple[str, ...] = tuple(field)
    elif route == BENIGN:
        tags = (BENIGN_TAG,) if any(BENIGN_TAG in p.tags for p in drawable) else ()
    else:
        tags = ()
    for i, r in enumerate(record["rounds"]):
        now = route if scored(route) and route != BENIGN else \
            sample_principle(c, config.seed, f"{record['id']}/round{i}", tags=tags).id
        if now != r["principle_id"]:
            return Stale((r["principle_id"], now),
                         f"round {i + 1} now draws {now} instead of {r['principle_id']}")
    return None


def stale_records(records: Iterable[dict[str, Any]], c: Constitution, config: GenerateConfig,
                  table: dict[str, str]) -> dict[str, Stale]:
    """{record id: why} for every record that must be made again."""
    out = {}
    for rec in records:
        why = stale_reason(rec, c, config, table)
        if why:
            out[rec["id"]] = why
    return out
