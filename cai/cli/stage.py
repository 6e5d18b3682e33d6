"""Stage commands built from their config classes: one flag per field, `--config FILE.yaml`.

    @stage_command(app, "sample", [SampleRunConfig], section="sample",
                   positional=("prompts",), short={"out": "-o"})
    def sample_cmd(args: StageArgs) -> None:
        config = args.config()          # the file's section, flags on top, validated
        ...

Per field: `--field-name` (snake -> kebab), help = the field's description with the default
printed here (never in the description), bools as `--x/--no-x`, lists repeatable, Literals as
choices, `backend_options` as repeatable `--backend-option KEY=VALUE` (VALUE read as YAML),
anything else (unions, tuples, nested settings) as one YAML value; `text` fields as given.
Commands with `backend_options` also get the remote-engine shorthands (BACKEND_FLAGS:
`--base-url`, `--api-key`, `--tokenizer`, `--retry-for`, ...). A flag not given is None,
so the file (or the class default) wins. Old spellings (`cai.config.RENAMED`) are usage
errors that name the new flag. A small per-command table keeps positional arguments and short
flags; `extras` are options that are not config fields (`--json`, `--judge`).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional

import typer
from pydantic import BaseModel
from typer.core import TyperCommand

from cai.cli.common import EXIT_USAGE, fail
from cai.config import RENAMED

BACKEND_OPTION = "--backend-option"

# Shorthand flags for the backend options a remote engine needs (`--backend openai`), on every
# command with `backend_options`: flag field -> (type, help). A flag given wins over the same
# key in `--backend-option` and in the file.
BACKEND_FLAGS: dict[str, tuple[type, str]] = {
    "base_url": (str, "--backend openai: the server's URL, e.g. http://host:8000/v1"),
    "api_key": (str, "--backend openai: the server's API key (default: $OPENAI_API_KEY)"),
    "tokenizer": (str, "--backend openai: the served model's tokenizer (registry name, directory "
                       "or hub id), for servers without vLLM's /tokenize"),
    "retry_for": (float, "--backend openai: seconds to keep retrying while the server gives no "
                         "answer at all (refused, reset, 5xx) (default: 300)"),
    "request_timeout": (float, "--backend openai: seconds one request waits for its answer; a "
                               "busy server is waited for (default: 600)"),
    "max_concurrency": (int, "--backend openai: requests in flight at once (default: 16)"),
}


def backend_flag_params() -> list[inspect.Parameter]:
    """The BACKEND_FLAGS as keyword parameters of a typer command (each None when not given)."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                              default=typer.Option(None, flag(name), help=text, show_default=False))
            for name, (kind, text) in BACKEND_FLAGS.items()]


def pop_backend_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The BACKEND_FLAGS given, removed from `kwargs`, as backend options."""
    given = {name: kwargs.pop(name, None) for name in BACKEND_FLAGS}
    return {name: value for name, value in given.items() if value is not None}


# Ray flags, on every command whose config has `ray` (EngineConfig): flag field -> (type, help).
# `--ray` alone is Ray at $RAY_ADDRESS (set by `ray job submit`) or a local one; any of them
# turns Ray on, and each given one overrides the same key of the file's `ray:`.
RAY_FLAGS: dict[str, tuple[type, str]] = {
    "ray": (str, "run the engine work on Ray: --ray alone ($RAY_ADDRESS, else a local Ray) or "
                 "--ray ADDRESS (host:port, ray://host:port, auto)"),
    "replicas": (int, "Ray: engine replicas, one actor and one engine each (default: 1)"),
    "gpus_per_replica": (float, "Ray: GPUs each replica reserves (default: 0)"),
    "cpus_per_replica": (float, "Ray: CPUs each replica reserves (default: 1)"),
}


def ray_flag_params() -> list[inspect.Parameter]:
    """The RAY_FLAGS as keyword parameters (`--ray`'s value is optional: _RefuseOldFlags)."""
    out = []
    for name, (kind, text) in RAY_FLAGS.items():
        out.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
            default=typer.Option(None, flag(name), help=text, show_default=False)))
    return out


def pop_ray_flags(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The RAY_FLAGS given, removed from `kwargs`, as a `ray:` mapping (None: none given)."""
    given = {name: kwargs.pop(name, None) for name in RAY_FLAGS}
    if all(v is None for v in given.values()):
        return None
    address = given.pop("ray")
    out = {k: v for k, v in given.items() if v is not None}
    if address:
        out["address"] = address
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_kind(annotation: Any) -> tuple[str, Any]:
    """(kind, python type for typer): kind is bool | plain | choice | list | dict | yaml."""
    t = _strip_optional(annotation)
    origin = typing.get_origin(t)
    if t is bool:
        return "bool", Optional[bool]
    if t in (int, float, str):
        return "plain", Optional[t]
    if origin is Literal and all(isinstance(a, str) for a in typing.get_args(t)):
        return "choice", Optional[t]  # typer offers a Literal's values as choices
    if origin is list and typing.get_args(t) in ((str,), ()):
        return "list", Optional[List[str]]
    if origin is dict or t is dict:
        return "dict", Optional[List[str]]
    return "yaml", Optional[str]  # unions, tuples, nested settings: one YAML value


def shown_default(info: Any) -> str | bool:
    """The default as help prints it, or False when there is nothing to show."""
    if info.is_required():
        return False
    value = info.get_default(call_default_factory=True)
    if value is None or value == {} or value == []:
        return False
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return False
    return str(value)


def with_default(help_text: str, info: Any) -> str | None:
    """The field's help: its description, then the default as the generator prints it."""
    default = shown_default(info)
    text = f"{help_text} (default: {default})" if default is not False else help_text
    return text.strip() or None


def _fields(classes: list[type[BaseModel]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in classes:
        for name, info in cls.model_fields.items():
            out.setdefault(name, info)
    return out


def _option(name: str, info: Any, kind: str, decls: tuple[str, ...], positional: bool) -> Any:
    help_text = info.description or ""
    if positional:
        return typer.Argument(None, help=with_default(help_text, info), show_default=False)
    if kind == "bool":
        names = (f"{flag(name)}/--no-{name.replace('_', '-')}",)
    elif kind == "dict":
        names = (BACKEND_OPTION,) if name == "backend_options" else (flag(name.rstrip("s")),)
        help_text = (help_text or name) + " (KEY=VALUE, repeatable; VALUE read as YAML)"
    else:
        names = (flag(name),)
    return typer.Option(None, *names, *decls, help=with_default(help_text, info),
                        show_default=False)


def _parse_pairs(values: list[str], name: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{name} {item!r}: write KEY=VALUE", EXIT_USAGE)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            fail(f"{name} {item!r}: VALUE is not YAML ({e})", EXIT_USAGE)
    return out


def _parse_yaml(value: str, name: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        fail(f"{flag(name)} {value!r}: not a YAML value ({e})", EXIT_USAGE)


def renamed_flags(fields: dict[str, Any], taken: set[str]) -> dict[str, str]:
    """Old flag -> what to write now, for the old spellings this command does not use."""
    out = {}
    for old, new in RENAMED.items():
        if old in fields or flag(old) in taken:
            continue
        if "." in new:
            parent, child = new.split(".", 1)
            now = f"{BACKEND_OPTION} {child}=VALUE" if parent == "backend_options" else flag(new)
        else:
            now = flag(new)
        out[flag(old)] = now
    return out


class _RefuseOldFlags(TyperCommand):
    renamed: dict[str, str] = {}
    optional_value: tuple[str, ...] = ()  # flags that may come without a value (`--ray`)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            old = arg.split("=", 1)[0]
            if old in self.renamed:
                ctx.fail(f"{old} is now {self.renamed[old]}")  # a usage error: exit 2
            # click has no optional option values: a bare one becomes `--flag=` (empty)
            if arg in self.optional_value and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = arg + "="
        return super().parse_args(ctx, args)


@dataclass
class StageArgs:
    """What a generated command hands its body: the --config file, the field flags given,
    the extras, and how to build the validated config."""

    path: Path | None
    section: str
    overrides: dict[str, Any]
    extras: dict[str, Any]
    marker_key: str | None = None
    backend_flags: tuple[str, ...] = ()  # the BACKEND_FLAGS given (each is for --backend openai)
    text: tuple[str, ...] = ()  # fields passed as given: their own validator reads words ("off")

    def config(self, cls: type[BaseModel]) -> Any:
        """`cls` from the file's section with the flags on top; a bad config exits 1."""
        from cai.config import ConfigError, load_section

        self._check_flags(cls)
        try:
            config = load_section(self.path, self.section, cls, self.overrides,
                                  marker_key=self.marker_key)
        except ConfigError as e:
            fail(str(e))
        self._check_backend_flags(config)
        return config

    def _check_backend_flags(self, config: Any) -> None:
        """The remote-engine shorthands only mean something to `--backend openai`; another
        engine would get them as keyword arguments it does not take."""
        backend = getattr(config, "backend", None)
        if self.backend_flags and backend != "openai":
            names = " ".join(flag(name) for name in self.backend_flags)
            fail(f"{names}: only for --backend openai (this run's backend: "
                 f"{backend or 'the default'}); add --backend openai", EXIT_USAGE)

    def _check_flags(self, cls: type[BaseModel]) -> None:
        """A flag's value that its field refuses is a usage error (exit 2) naming the flag;
        what only the file or a combination of fields gets wrong stays bad input (exit 1)."""
        from typing import Annotated

        from pydantic import TypeAdapter, ValidationError

        for name, value in self.overrides.items():
            info = cls.model_fields.get(name)
            if value is None or info is None or isinstance(value, dict) or name in self.text:
                continue
            try:
                annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
                TypeAdapter(annotation).validate_python(value)
            except ValidationError as e:
                reason = e.errors()[-1]["msg"]
                fail(f"{flag(name)} {value!r}: {reason}", EXIT_USAGE)


def stage_command(app: typer.Typer, name: str, classes: list[type[BaseModel]], *, section: str,
                  marker_key: str | None = None, positional: tuple[str, ...] = (),
                  short: dict[str, str] | None = None, text: tuple[str, ...] = (),
                  skip: tuple[str, ...] = (), extras: dict[str, tuple[Any, Any]] | None = None
                  ) -> Callable[[Callable[[StageArgs], None]], Callable[[StageArgs], None]]:
    """Register `body(args)` as `cai ... NAME` with flags generated from `classes` (their
    union; the body picks the class). `short`: field (or "config") -> short flag;
    `positional`: fields taken as arguments; `text`: fields passed as given (their validator
    reads words like "off"); `skip`: fields with no flag; `extras`: name -> (annotation,
    typer.Option) for options that are not config fields."""
    short = short or {}
    extras = extras or {}
    fields = {k: v for k, v in _fields(classes).items() if k not in skip}
    with_ray = fields.pop("ray", None) is not None  # its own flags: RAY_FLAGS

    def register(body: Callable[[StageArgs], None]) -> Callable[[StageArgs], None]:
        kinds: dict[str, str] = {}
        params = []
        for fname in positional:
            info = fields[fname]
            kinds[fname] = "plain"
            params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY,
                                            default=_option(fname, info, "plain", (), True),
                                            annotation=Optional[str]))
        for fname, info in fields.items():
            if fname in positional:
                continue
            kind, annotation = ("text", Optional[str]) if fname in text else field_kind(info.annotation)
            kinds[fname] = kind
            decls = (short[fname],) if fname in short else ()
            params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY,
                                            default=_option(fname, info, kind, decls, False),
                                            annotation=annotation))
        config_decls = ("--config", *((short["config"],) if "config" in short else ()))
        params.append(inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(None, *config_decls, show_default=False,
                                 help=f"YAML: a pipeline file's `{section}:` section, or a file "
                                      "that is only that section; flags override it")))
        for ename, (annotation, option) in extras.items():
            params.append(inspect.Parameter(ename, inspect.Parameter.KEYWORD_ONLY,
                                            default=option, annotation=annotation))
        with_backend = "backend_options" in fields
        if with_backend:
            params.extend(backend_flag_params())
        if with_ray:
            params.extend(ray_flag_params())

        @functools.wraps(body)
        def command(**kwargs: Any) -> None:
            path = kwargs.pop("config")
            given = {k: kwargs.pop(k) for k in extras}
            shorthand = pop_backend_flags(kwargs) if with_backend else {}
            ray = pop_ray_flags(kwargs) if with_ray else None
            overrides: dict[str, Any] = {}
            for fname, value in kwargs.items():
                kind = kinds[fname]
                if value is None or (kind in ("list", "dict") and not value):
                    continue
                if kind == "dict":
                    value = _parse_pairs(list(value), BACKEND_OPTION)
                elif kind == "list":
                    value = list(value)
                elif kind == "yaml":
                    value = _parse_yaml(value, fname)
                overrides[fname] = value
            if ray is not None:
                overrides["ray"] = ray
            if shorthand:
                overrides["backend_options"] = {**overrides.get("backend_options", {}), **shorthand}
            body(StageArgs(path, section, overrides, given, marker_key, tuple(shorthand), text))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        taken = {flag(e) for e in extras} | ({flag(b) for b in BACKEND_FLAGS} if with_backend else set()) \
            | ({flag(r) for r in RAY_FLAGS} if with_ray else set())
        cls = type(f"{name.title()}Command", (_RefuseOldFlags,),
                   {"renamed": renamed_flags(fields, taken),
                    "optional_value": (flag("ray"),) if with_ray else ()})
        app.command(name, cls=cls)(command)
        return body

    return register
