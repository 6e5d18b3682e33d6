"""Find, read and resolve constitution files: `extends` chains are merged before validation.

Merge rules (child over parent):
- scalar keys (name, version, description, system_prompt) and few-shot lists replace;
- `defaults` merge key by key;
- `principles` merge by id: an entry whose id the parent has overrides only the keys it
  writes (so `- {id: privacy, weight: 2}` reweights one principle), a new id is appended.
Each value keeps the position it was written at, so an error in a parent names the parent.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from cai.constitution.errors import ConstitutionError, LocatedError, did_you_mean
from cai.constitution.schema import SCHEMA_VERSION, Constitution
from cai.constitution.validate import check
from cai.constitution.yamlnodes import Node, parse

_SUFFIXES = (".yaml", ".yml")


def _shipped_dir() -> Path:
    """The top-level constitutions/ folder: in a checkout (and an editable install) beside the
    package; in a wheel mapped to cai/constitutions (pyproject's hatch force-include)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "constitutions").is_dir():
        return root / "constitutions"
    # a wheel installs as plain files, so the traversable is a real directory
    return Path(str(resources.files("cai") / "constitutions"))


SHIPPED_DIR = _shipped_dir()


def shipped_names() -> list[str]:
    """Names of the constitutions that ship with cai (the top-level constitutions/ folder)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.stem for p in SHIPPED_DIR.iterdir()
                  if p.suffix in _SUFFIXES and not p.stem.endswith(".tests"))  # cases.py's files


def find(ref: str | os.PathLike, base_dir: Path | None = None) -> Path | None:
    """A path (relative to `base_dir`, else the working directory) or a shipped name -> file."""
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_file():
        return path
    name = str(ref)
    if "/" not in name and os.sep not in name:
        for suffix in ("",) + _SUFFIXES:
            shipped = SHIPPED_DIR / f"{name}{suffix}"
            if shipped.is_file() and shipped.suffix in _SUFFIXES:
                return shipped
    return None


def _display(path: Path) -> str:
    """Relative to the working directory when below it, else absolute: clickable either way."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path.resolve())
    return str(path.resolve()) if rel.startswith("..") else rel


def load_constitution(path_or_name: str | os.PathLike) -> Constitution:
    """Load, resolve `extends`, and validate; raise ConstitutionError listing every problem."""
    path = find(path_or_name)
    if path is None:
        names = shipped_names()
        raise ConstitutionError([LocatedError(
            str(path_or_name), 0, 0,
            f"no such file, and not a shipped constitution ({', '.join(names) or 'none'})"
            f"{did_you_mean(path_or_name, names)}")])
    errors: list[LocatedError] = []
    sources: list[str] = []
    root, complete = _resolve(path, [], errors, sources)
    constitution = None
    if root is not None:
        constitution, found = check(root, partial=not complete)
        errors += found
    if errors or constitution is None:
        raise ConstitutionError(errors)
    constitution._sources = tuple(sources)
    return constitution


def _resolve(path: Path, chain: list[Path], errors: list[LocatedError],
             sources: list[str]) -> tuple[Node | None, bool]:
    """The file merged over its parents, and whether every parent could be loaded."""
    chain = chain + [path.resolve()]
    file = _display(path)
    sources.append(file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        errors.append(LocatedError(file, 0, 0, f"cannot read: {e}"))
        return None, False
    root, found = parse(text, file)
    errors += found
    if root is None:
        return None, False
    if not root.is_map:
        errors.append(root.pos.error("the top level must be a mapping (name:, version:, principles: ...)"))
        return None, False

    _check_schema_version(root, errors)
    _check_duplicate_ids(root, errors)
    root.value.pop("tests", None)  # the file's own cases (cases.py), not constitution content
    extends = root.value.pop("extends", None)
    if extends is None:
        return root, True
    if not isinstance(extends.value, str) or not extends.value.strip():
        errors.append(extends.pos.error("extends: must be a file path or a shipped constitution name"))
        return root, False
    parent_path = find(extends.value, path.parent)
    if parent_path is None:
        names = shipped_names()
        errors.append(extends.pos.error(
            f"extends: cannot find {extends.value!r} (not a file next to {file}, nor a shipped "
            f"constitution: {', '.join(names) or 'none'}){did_you_mean(extends.value, names)}"))
        return root, False
    if parent_path.resolve() in chain:
        loop = " -> ".join(_display(p) for p in chain + [parent_path.resolve()])
        errors.append(extends.pos.error(f"extends: cycle {loop}"))
        return root, False
    parent, complete = _resolve(parent_path, chain, errors, sources)
    if parent is None:
        return root, False
    return _merge(parent, root), complete


def _check_schema_version(root: Node, errors: list[LocatedError]) -> None:
    schema = root.value.pop("schema", None)
    if schema is None:
        errors.append(root.pos.error(f"missing 'schema: {SCHEMA_VERSION}' (the format version)"))
    elif schema.value != SCHEMA_VERSION or isinstance(schema.value, bool):
        errors.append(schema.pos.error(
            f"schema: this version of cai reads schema {SCHEMA_VERSION}, got {schema.value!r}"))


def _check_duplicate_ids(root: Node, errors: list[LocatedError]) -> None:
    # Within one file a repeated id is a mistake; across `extends` it is an override.
    principles = root.value.get("principles")
    if principles is None or not principles.is_seq:
        return
    seen: dict[str, Node] = {}
    for item in principles.value:
        pid = item.value.get("id") if item.is_map else None
        if pid is None or not isinstance(pid.value, str):
            continue
        if pid.value in seen:
            errors.append(pid.pos.error(
                f"duplicate principle id {pid.value!r} (first defined at line {seen[pid.value].pos.line})"))
        else:
            seen[pid.value] = pid


def _merge(parent: Node, child: Node) -> Node:
    out = dict(parent.value)
    for key, node in child.value.items():
        old = out.get(key)
        if key == "principles" and old is not None and old.is_seq and node.is_seq:
            out[key] = Node(_merge_principles(old.value, node.value), node.pos, node.key_pos)
        elif key == "defaults" and old is not None and old.is_map and node.is_map:
            out[key] = Node({**old.value, **node.value}, node.pos, node.key_pos)
        else:
            out[key] = node
    return Node(out, child.pos)


def _merge_principles(parent: list[Node], child: list[Node]) -> list[Node]:
    merged = list(parent)
    index = {_id(p): i for i, p in enumerate(merged) if _id(p) is not None}
    for item in child:
        pid = _id(item)
        if pid is not None and pid in index:
            base = merged[index[pid]]
            merged[index[pid]] = Node({**base.value, **item.value}, base.pos, base.key_pos)
        else:
            if pid is not None:
                index[pid] = len(merged)
            merged.append(item)
    return merged


def _id(node: Node) -> str | None:
    pid = node.value.get("id") if node.is_map else None
    return pid.value if pid is not None and isinstance(pid.value, str) else None
