"""Check a resolved constitution tree and turn every problem into a located error.

Pydantic does the type and shape checks (and reports all of them in one pass); we map
each error's `loc` back to the YAML position it came from, add "did you mean" for unknown
keys, and run the checks pydantic cannot see: placeholders, few-shot references, weights.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from cai.constitution.errors import LocatedError, did_you_mean
from cai.constitution.schema import (EXTENSION_PREFIX, FILE_DIRECTIVES, PLACEHOLDER, TEMPLATE_FIELDS,
                                     Constitution)
from cai.constitution.yamlnodes import Node, plain

_YAML_TYPE = {str: "text", int: "an integer", float: "a number", bool: "a boolean",
              type(None): "null", list: "a list", dict: "a mapping"}


def check(root: Node, *, partial: bool = False) -> tuple[Constitution | None, list[LocatedError]]:
    """Validate a merged tree. `partial`: a parent failed to load, so don't report what it
    would have supplied (missing keys, references to its principles)."""
    errors: list[LocatedError] = []
    constitution = None
    data = plain(root)
    for key in [k for k in data if k.startswith(EXTENSION_PREFIX)]:
        del data[key]  # free space for YAML anchors, as docker-compose allows
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as e:
        found = e.errors()
        # A misspelt key also shows up as the real key missing; say it once, as the typo.
        typos = {(tuple(err["loc"][:-1]), _suggest(root, err)) for err in found
                 if err["type"] == "extra_forbidden"}
        for err in found:
            loc = tuple(err["loc"])
            if err["type"] == "missing" and (partial or (loc[:-1], loc[-1]) in typos):
                continue
            if _walk(root, loc)[0].broken:
                continue
            errors.append(_locate(root, err))
    errors += _check_placeholders(root)
    if not partial:
        errors += _check_references(root)
        errors += _check_weights(root)
    return (None if errors else constitution), errors


def _allowed_keys(followed: tuple) -> list[str]:
    model = _model_at(followed)
    allowed = list(model.model_fields) if model else []
    return allowed + list(FILE_DIRECTIVES) if not followed else allowed


def _suggest(root: Node, err: dict) -> str | None:
    loc = tuple(err["loc"])
    _, followed = _walk(root, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(followed), n=1, cutoff=0.6)
    return close[0] if close else None


def _path_text(loc: tuple) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def _walk(root: Node, loc: tuple) -> tuple[Node, tuple]:
    """The deepest node along `loc`, and the loc segments that were actually followed.
    Segments pydantic adds for validator/union branches match no key and are skipped."""
    node, followed = root, []
    for seg in loc:
        if node.is_map and isinstance(seg, str) and seg in node.value:
            node = node.value[seg]
        elif node.is_seq and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
        else:
            continue
        followed.append(seg)
    return node, tuple(followed)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that describes the mapping at `loc` (for "did you mean")."""
    model: Any = Constitution
    for seg in loc:
        if isinstance(seg, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or seg not in model.model_fields:
            return None
        model = _find_model(model.model_fields[seg].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found:
            return found
    return None


def _describe(value: Any) -> str:
    kind = _YAML_TYPE.get(type(value), type(value).__name__)
    if isinstance(value, (list, dict)) or value is None:
        return kind
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _locate(root: Node, err: dict) -> LocatedError:
    loc = tuple(err["loc"])
    node, followed = _walk(root, loc)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(followed[:-1])
        where = _path_text(followed[:-1])
        return (node.key_pos or node.pos).error(
            f"unknown key {key!r}{' in ' + where if where else ''}{did_you_mean(key, allowed)}")
    if kind == "missing":
        where = _path_text(followed)
        return node.pos.error(f"missing required key {str(loc[-1])!r}{' in ' + where if where else ''}")
    path = _path_text(followed)
    if kind.endswith("_type") or kind in ("model_type", "list_type", "dict_type"):
        msg = f"{msg}, got {_describe(err.get('input'))}"
    elif kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",")]
        msg = f"{msg}, got {_describe(err.get('input'))}{did_you_mean(err.get('input'), choices)}"
    elif kind == "string_pattern_mismatch":
        msg = f"must be lowercase letters, digits, '-', '_' or '.', starting with a letter or digit " \
              f"(got {err.get('input')!r})"
    return node.pos.error(f"{path}: {msg}" if path else msg)


def _principle_nodes(root: Node) -> list[Node]:
    principles = root.value.get("principles") if root.is_map else None
    return [p for p in principles.value if p.is_map] if principles and principles.is_seq else []


def _check_placeholders(root: Node) -> list[LocatedError]:
    targets: list[tuple[str, Node]] = []
    if root.is_map and "system_prompt" in root.value:
        targets.append(("system_prompt", root.value["system_prompt"]))
    for i, p in enumerate(_principle_nodes(root)):
        for f in TEMPLATE_FIELDS:
            if f in p.value:
                targets.append((f"principles[{i}].{f}", p.value[f]))
    errors = []
    for where, node in targets:
        if not isinstance(node.value, str):
            continue
        for m in PLACEHOLDER.finditer(node.value):
            errors.append(node.pos.error(
                f"{where}: unknown placeholder {m.group(0)}: these texts take no placeholders "
                "(the conversation and response already reach the model as chat turns)"))
    return errors


def _check_references(root: Node) -> list[LocatedError]:
    ids = [p.value["id"].value for p in _principle_nodes(root)
           if "id" in p.value and isinstance(p.value["id"].value, str)]
    errors = []
    for section in ("few_shot", "feedback_few_shot"):
        examples = root.value.get(section) if root.is_map else None
        if not examples or not examples.is_seq:
            continue
        for i, ex in enumerate(examples.value):
            ref = ex.value.get("principle") if ex.is_map else None
            if ref is not None and isinstance(ref.value, str) and ref.value not in ids:
                errors.append(ref.pos.error(f"{section}[{i}].principle: no principle with id "
                                            f"{ref.value!r}{did_you_mean(ref.value, ids)}"))
    return errors


def _check_weights(root: Node) -> list[LocatedError]:
    weights = [p.value["weight"].value if "weight" in p.value else 1.0 for p in _principle_nodes(root)]
    numeric = [w for w in weights if isinstance(w, (int, float)) and not isinstance(w, bool)]
    if weights and len(numeric) == len(weights) and all(w == 0 for w in numeric):
        node = root.value["principles"]
        return [(node.key_pos or node.pos).error("principles: every weight is 0, so none can be sampled")]
    return []
