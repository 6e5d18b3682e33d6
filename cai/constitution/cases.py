"""Constitution tests: cases written beside the principles, loaded with located errors.

In the constitution file itself, under `tests:`, or in a sibling `NAME.tests.yaml` (a
mapping with `tests:`, or the list alone). Three kinds, told apart by their keys:

    behaviour   prompt, expect: decline | answer        the policy answers; cai's refusal
                                                        and relevance classifiers decide
    critique    principle, prompt, response,            the feedback model judges the
                expect: flagged | passes                response under that principle
    preference  principle, prompt, chosen, rejected     the labeler must prefer `chosen`
                                                        in both orders

Every case may carry a `name`; a behaviour case may name the `principle` it tests (it is
counted under "(behaviour)" otherwise). Tests are not part of the constitution's content
(its hash, and so generation, ignores them) and are not inherited through `extends`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.constitution.errors import ConstitutionError, LocatedError, did_you_mean
from cai.constitution.loader import _display, find, load_constitution
from cai.constitution.schema import Constitution, Text
from cai.constitution.yamlnodes import Node, parse, plain

NO_PRINCIPLE = "(behaviour)"


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    location: str = Field("", exclude=True)  # FILE:LINE, filled in by the loader


class BehaviourCase(_Case):
    kind: Literal["behaviour"] = "behaviour"
    principle: str | None = None
    prompt: Text
    expect: Literal["decline", "answer"]


class CritiqueCase(_Case):
    kind: Literal["critique"] = "critique"
    principle: str
    prompt: Text
    response: Text
    expect: Literal["flagged", "passes"]


class PreferenceCase(_Case):
    kind: Literal["preference"] = "preference"
    principle: str
    prompt: Text
    chosen: Text
    rejected: Text


Case = Union[BehaviourCase, CritiqueCase, PreferenceCase]
KINDS: dict[str, type[_Case]] = {"behaviour": BehaviourCase, "critique": CritiqueCase,
                                 "preference": PreferenceCase}


def case_kind(keys: set[str]) -> str:
    """The kind a case's keys say it is: `chosen`/`rejected` -> preference, `response` ->
    critique, else behaviour."""
    if keys & {"chosen", "rejected"}:
        return "preference"
    return "critique" if "response" in keys else "behaviour"


def tests_file(constitution_file: Path) -> Path:
    """The sibling tests file of `constitution_file`: NAME.tests.yaml."""
    return constitution_file.with_name(constitution_file.stem + ".tests.yaml")


def _case_nodes(path: Path, errors: list[LocatedError], *, sibling: bool) -> list[Node]:
    file = _display(path)
    root, found = parse(path.read_text(encoding="utf-8"), file)
    errors += found
    if root is None:
        return []
    node = root.value.get("tests") if root.is_map else (root if sibling else None)
    if node is None:
        if sibling:
            errors.append(root.pos.error("a tests file holds `tests:` with a list of cases"))
        return []
    if not node.is_seq:
        errors.append(node.pos.error("tests: must be a list of cases"))
        return []
    return node.value


def _check_case(node: Node, index: int, c: Constitution, errors: list[LocatedError]) -> Case | None:
    where = f"tests[{index}]"
    if not node.is_map:
        errors.append(node.pos.error(f"{where}: a case is a mapping (prompt:, expect:, ...)"))
        return None
    kind = case_kind(set(node.value))
    model = KINDS[kind]
    fields = [f for f in model.model_fields if f not in ("kind", "location")]
    found = []
    try:
        case = model.model_validate({**plain(node), "location": f"{node.pos.file}:{node.pos.line}"})
    except ValidationError as e:
        case = None
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            at = node.value.get(key)
            if err["type"] == "extra_forbidden":
                found.append((at.key_pos or at.pos).error(
                    f"{where}: unknown key {key!r} in a {kind} case{did_you_mean(key, fields)}"))
            elif err["type"] == "missing":
                found.append(node.pos.error(f"{where}: a {kind} case needs {key!r}"))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                found.append((at.pos if at else node.pos).error(f"{where}.{key}: {msg}"))
    ref = node.value.get("principle")
    ids = [p.id for p in c.principles]
    if ref is not None and isinstance(ref.value, str) and ref.value not in ids:
        found.append(ref.pos.error(f"{where}.principle: no principle with id {ref.value!r}"
                                   f"{did_you_mean(ref.value, ids)}"))
        case = None
    errors += found
    return None if found else case


def load_cases(path_or_name: str | Path) -> tuple[Constitution, list[Case], list[str]]:
    """(constitution, its cases, the files they came from); ConstitutionError listing every
    problem (FILE:LINE:COL) otherwise. Cases come from the file's `tests:` and its sibling
    NAME.tests.yaml, in that order."""
    c = load_constitution(path_or_name)
    path = find(path_or_name)
    assert path is not None  # load_constitution found it
    errors: list[LocatedError] = []
    nodes, files = _case_nodes(path, errors, sibling=False), []
    if nodes:
        files.append(_display(path))
    sibling = tests_file(path)
    if sibling.is_file():
        nodes += _case_nodes(sibling, errors, sibling=True)
        files.append(_display(sibling))
    cases = [_check_case(n, i, c, errors) for i, n in enumerate(nodes)]
    if errors:
        raise ConstitutionError(errors)
    return c, [x for x in cases if x is not None], files
