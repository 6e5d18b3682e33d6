"""Bounds on what one input may cost, so hostile or broken files are refused, not obeyed.

Every reader goes through here: the row readers of `cai.io` (prompts, pairs, records,
stores), JSON held in a text cell, and every YAML file (constitutions, pipeline configs).

    MAX_DEPTH       64 levels of nested arrays/objects (YAML: sequences/mappings) per row or
                    document. Real rows nest 3-4 deep (a row, a message list, a message);
                    json.loads itself dies with RecursionError near 1,000 levels.
    MAX_ROW_BYTES   1 MiB per row (a JSONL line, a CSV record, a Parquet row's text). Checked
                    on the raw bytes before parsing; a JSONL line is never read whole beyond it.
    MAX_YAML_NODES  100,000 nodes in a YAML document with every alias expanded. Anchors and
                    `<<: *merge` stay usable (a shipped constitution has ~1,000 nodes), but a
                    "billion laughs" alias bomb stops at the alias that crosses the budget.

A breach is a `LimitError` with a `code` (`too-deep`, `too-large`); row readers turn it into
a reject at the row's location, and the YAML loader into an error at the line and column.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 64
MAX_ROW_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


class LimitError(ValueError):
    """An input over one of the bounds above. `code`: `too-deep` or `too-large`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _too_large(size: int, what: str) -> LimitError:
    return LimitError("too-large", f"{what} is {size:,} bytes, over the limit of "
                                   f"{MAX_ROW_BYTES:,} (cai.limits.MAX_ROW_BYTES)")


def _too_deep(what: str) -> LimitError:
    return LimitError("too-deep", f"{what} nests arrays/objects deeper than {MAX_DEPTH} levels "
                                  "(cai.limits.MAX_DEPTH)")


# --------------------------------------------------------------------------- JSON text

# A JSON string literal, escapes included (the unrolled form runs in C without backtracking).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deep arrays/objects nest in JSON `text`, without parsing it (so without
    recursion): strings are cut out, then only brackets are counted. Below MAX_DEPTH it
    may return an upper bound (the bracket count) instead, to skip the scan."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # the common case: cannot be too deep
        return text.count("[") + text.count("{")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def check_json_text(text: str, what: str = "the row", *, size: int | None = None) -> None:
    """Raise `LimitError` when JSON `text` (of `size` bytes, if known) is over a bound."""
    size = len(text.encode("utf-8")) if size is None else size
    if size > MAX_ROW_BYTES:
        raise _too_large(size, what)
    if json_depth(text) > MAX_DEPTH:
        raise _too_deep(what)


def loads(text: str, what: str = "the value") -> Any:
    """`json.loads` for text from an input file (e.g. JSON in a CSV cell), bounds checked."""
    import json

    check_json_text(text, what)
    return json.loads(text)


def check_value(value: Any, what: str = "the row") -> None:
    """The same bounds for a value already parsed (Parquet, `datasets`, JSON array items):
    nesting depth, and the size of its text (strings and bytes) plus 8 bytes a scalar."""
    size = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            stack.extend((x, depth + 1) for x in v.values())
            size += sum(len(str(k)) for k in v)
        elif isinstance(v, (list, tuple)):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, (str, bytes)):
            size += len(v)
        else:
            size += 8
        if size > MAX_ROW_BYTES:
            raise _too_large(size, what)


def json_array_items(text: str) -> list[tuple[int, int, int]]:
    """(start, end, depth) of each top-level item of JSON array `text` (a valid array is
    assumed; used to locate the item that breaks a bound, which a whole-file parse cannot)."""
    items: list[tuple[int, int, int]] = []
    depth = deepest = 0
    start = None
    for m in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]|[^\s\[\]{},"]+', text):
        tok = m.group()
        if tok == "[" or tok == "{":
            depth += 1
            if depth == 2:
                start, deepest = m.start(), 1
            elif depth > 2:
                deepest = max(deepest, depth - 1)
            continue
        if tok == "]" or tok == "}":
            depth -= 1
            if depth == 1 and start is not None:
                items.append((start, m.end(), deepest))
                start = None
            continue
        if depth == 1 and tok != ",":  # a scalar item
            items.append((m.start(), m.end(), 0))
    return items


# --------------------------------------------------------------------------- YAML


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document over a bound; `problem_mark` is where (an alias, or a node)."""


class BoundedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that counts nodes as they are composed, each alias counting as
    the whole subtree it stands for, and stops at MAX_YAML_NODES or MAX_DEPTH. Composition
    itself is linear (an alias is a reference), so the check costs what the file costs;
    the expansion it prevents is what every consumer of the loaded value would pay."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()  # anchors whose node is still being composed

    def _size(self, node: yaml.Node) -> int:
        key = id(node)
        if key not in self._sizes:
            self._sizes[key] = 1  # provisional, so a cycle (a recursive alias) ends here
            if isinstance(node, yaml.SequenceNode):
                n = 1 + sum(self._size(c) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                n = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                n = 1
            self._sizes[key] = n
        return self._sizes[key]

    def _count(self, n: int, mark: Any, what: str) -> None:
        self._expanded += n
        if self._expanded > MAX_YAML_NODES:
            raise YAMLLimitError(
                None, None, f"{what} takes the document past {MAX_YAML_NODES:,} nodes with its "
                f"aliases expanded (cai.limits.MAX_YAML_NODES); an alias bomb?", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            # An alias to a node still open (its own ancestor) is a cycle: count it once.
            size = 1 if event.anchor in self._open else self._size(node)
            self._count(size, event.start_mark, f"alias *{event.anchor}")
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YAMLLimitError(None, None, f"nesting deeper than {MAX_DEPTH} levels "
                                             "(cai.limits.MAX_DEPTH)", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open.discard(anchor)
        self._count(1, event.start_mark, "this node")
        return node


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` within the bounds above (raises `YAMLLimitError`, a YAMLError)."""
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
