"""Stage configs from a pipeline YAML section, with CLI flags on top.

Every stage has one pydantic config class (`GenerateConfig`, `LabelConfig`, `SFTConfig`, ...).
The class is the single source of its YAML keys and of what its flags may set:
`load_section(path, "generate", GenerateConfig, overrides)` reads the `generate:` section of a
pipeline file (or a file that is only that section), lays the non-None `overrides` over it
(nested dicts merge key by key) and validates the result, with every error named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cai.schema import validation_errors as format_validation_error  # the one formatter

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A stage config that cannot be used (bad YAML, unknown key, bad value)."""


def read_section(path: str | os.PathLike, section: str, *,
                 marker_key: str | None = None) -> dict[str, Any]:
    """The `section:` mapping of a YAML file. A file that is only that section is accepted
    when it has `marker_key` at the top level (e.g. `prompts` for generate). Read with
    `yaml.safe_load` semantics within `cai.limits` (no alias bombs, no runaway nesting)."""
    import yaml

    from cai.limits import YAMLLimitError, load_yaml

    try:
        doc = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except YAMLLimitError as e:
        m = e.problem_mark
        raise ConfigError(f"{path}:{m.line + 1}:{m.column + 1}: {e.problem}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with a `{section}:` section")
    found = doc.get(section, doc if marker_key and marker_key in doc else None)
    if not isinstance(found, dict):
        raise ConfigError(f"{path}: no `{section}:` section")
    return dict(found)


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` (CLI flags) over `data`; None means "flag not given"."""
    out = dict(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_section(path: str | os.PathLike | None, section: str, cls: type[T],
                 overrides: dict[str, Any] | None = None, *,
                 marker_key: str | None = None) -> T:
    """Validate `cls` from the file's `section:` (if a path is given) plus `overrides`."""
    data = read_section(path, section, marker_key=marker_key) if path is not None else {}
    data = merge_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        lines = format_validation_error(e)
        raise ConfigError(f"{where}invalid {section} config\n  " + "\n  ".join(lines)) from None
