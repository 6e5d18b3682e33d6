"""YAML to a tree of values that remember where they were written.

We compose with `yaml.SafeLoader` (bounded: `cai.limits.BoundedSafeLoader`) and build values with its safe constructors, so the
semantics are exactly `yaml.safe_load`'s (no Python tags), except that a key repeated in
one mapping is an error rather than silently keeping the last value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from cai.constitution.errors import LocatedError
from cai.limits import BoundedSafeLoader, YAMLLimitError


@dataclass(frozen=True)
class Pos:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def error(self, message: str) -> LocatedError:
        return LocatedError(self.file, self.line, self.column, message)


@dataclass
class Node:
    """A value plus its position. Mappings hold dict[str, Node], sequences list[Node]."""

    value: Any
    pos: Pos
    key_pos: Pos | None = None  # where this value's key is written, inside a mapping
    tag: str = field(default="")
    broken: bool = False  # already reported (e.g. a bad tag); don't report it again as a type error

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.value, list)


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _tag_message(tag: str) -> str:
    short = tag.replace("tag:yaml.org,2002:", "!!")
    return f"unsupported YAML tag {short!r} (only plain YAML is read, as by yaml.safe_load)"


def plain(node: Node) -> Any:
    """The ordinary Python value, as yaml.safe_load would give it."""
    if node.is_map:
        return {k: plain(v) for k, v in node.value.items()}
    if node.is_seq:
        return [plain(v) for v in node.value]
    return node.value


def _pos(file: str, mark) -> Pos:
    return Pos(file, mark.line + 1, mark.column + 1)


def parse(text: str, file: str) -> tuple[Node | None, list[LocatedError]]:
    """Parse one YAML document; syntax errors come back located (the parser stops at the first)."""
    errors: list[LocatedError] = []
    loader = BoundedSafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, [LocatedError(file, 1, 1, "the file is empty")]
        return _build(loader, root, file, errors, set()), errors
    except YAMLLimitError as e:  # an alias bomb, or nesting too deep: refused where it starts
        return None, errors + [_pos(file, e.problem_mark).error(e.problem)]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context_mark and "end of stream" in (e.problem or ""):
            mark = e.context_mark  # an unclosed quote or bracket: point at where it opened
        where = _pos(file, mark) if mark else Pos(file, 1, 1)
        problem = " ".join(x for x in (e.context, e.problem) if x) or str(e)
        return None, errors + [where.error(f"YAML syntax error: {problem}")]
    except yaml.YAMLError as e:  # e.g. reader errors on bad bytes
        return None, [LocatedError(file, 1, 1, f"YAML error: {e}")]
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, file: str, errors: list, active: set) -> Node:
    pos = _pos(file, node.start_mark)
    if id(node) in active:  # an alias that refers to its own ancestor
        errors.append(pos.error("recursive YAML alias"))
        return Node(None, pos)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        errors.append(pos.error(_tag_message(node.tag)))
        return Node(None, pos, broken=True)
    if isinstance(node, yaml.MappingNode):
        active = active | {id(node)}
        loader.flatten_mapping(node)  # resolve `<<:` merge keys the way safe_load does
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_pos = _pos(file, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                errors.append(key_pos.error("mapping keys must be plain text"))
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                errors.append(key_pos.error(f"key {key!r} must be text (quote it)"))
                continue
            if key in out:
                first = out[key].key_pos
                errors.append(key_pos.error(f"duplicate key {key!r} (first written at line {first.line})"))
                continue
            child = _build(loader, value_node, file, errors, active)
            child.key_pos = key_pos
            out[key] = child
        return Node(out, pos, tag=node.tag)
    if isinstance(node, yaml.SequenceNode):
        active = active | {id(node)}
        return Node([_build(loader, n, file, errors, active) for n in node.value], pos, tag=node.tag)
    try:
        value = loader.construct_object(node)
    except yaml.MarkedYAMLError:  # an unknown or Python-only tag
        errors.append(pos.error(_tag_message(node.tag)))
        return Node(None, pos, broken=True)
    return Node(value, pos, tag=node.tag)
