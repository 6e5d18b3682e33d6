"""File I/O shared by every stage: atomic writes, and reading rows from any common data file.

Atomic writes go to a temp file in the target's directory, are fsynced, then `os.replace`d,
so a crash never leaves a half-written output under the real name.

`iter_rows` turns JSONL / JSON / CSV / Parquet / TXT files, `datasets.save_to_disk`
directories and directories of shards into `Row`s. A bad row becomes a `Row` with an
`error` (and the raw text, so a rejects file can keep it); it never stops the iteration.
Locations name the file and where in it:
  `name:N`        JSONL (and JSON lines under a .json name): line N, 1-based as an editor
                  shows it
  `name:line N`   CSV (the line the record starts on) and plain text, 1-based
  `name:row N`    Parquet, JSON arrays and `datasets` directories, 0-based as `ds[N]`
                  indexes it; a split of a DatasetDict reads `name[split]:row N`
In a directory of shards, `name` is `dir/shard-path`.
Every row is held to `cai.limits` (nesting depth, bytes per row): a row over a bound is a
`Row` with `code` `too-deep` or `too-large`, checked before parsing where the format allows.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator

from cai.limits import (MAX_DEPTH, MAX_ROW_BYTES, LimitError, check_json_text, check_value,
                        json_array_items, json_depth)

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "manifest.json"  # a preference store's manifest (see cai.data.store)
_SHARD_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")


class DataError(ValueError):
    """A data file that cannot be read at all (missing, unknown format, corrupt container)."""


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; outputs should look like any file
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open `path` for writing ("w" or "wb"); the file appears under its name only on success."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    with _atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """One JSON value per line (a pydantic model as its JSON dump), written atomically;
    returns the number of lines. An empty `rows` still writes the (empty) file."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            if hasattr(row, "model_dump"):
                row = row.model_dump(mode="json")
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def write_parquet_atomic(table: "pa.Table", path: str | os.PathLike) -> None:
    import pyarrow.parquet as pq

    with _atomic_path(path) as tmp:
        if table.num_rows:
            pq.write_table(table, tmp)
        else:
            # No row group at all: `pq.write_table` would write one empty row group, and
            # `datasets.load_dataset("parquet", ...)` takes its batch size from the first
            # row group's length ("BatchSize must be greater than 0"). Without one, it
            # reads the schema and yields zero rows.
            pq.ParquetWriter(tmp, table.schema).close()


# --------------------------------------------------------------------------- reading rows


@dataclass(frozen=True)
class Row:
    """One input row: `data` when it parsed, else `error` (and `raw`, the unparsed text)."""

    location: str
    data: dict[str, Any] | None = None
    error: str | None = None
    raw: str | None = None
    code: str | None = None  # why, for rejects: `too-deep`/`too-large` (cai.limits); else None


    @property
    def ok(self) -> bool:
        return self.error is None


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _json_object(obj: Any) -> str | None:
    return None if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


_RAW_HEAD = 200  # characters of an over-limit row kept in the rejects file


def _head(text: str) -> str:
    return text if len(text) <= _RAW_HEAD else text[:_RAW_HEAD] + "..."


def _lines(f: IO[bytes]) -> Iterator[tuple[bytes, int | None]]:
    """(line, None), or (its first bytes, its size) for a line over MAX_ROW_BYTES, which is
    skipped without ever being held whole in memory."""
    while True:
        line = f.readline(MAX_ROW_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_ROW_BYTES or line.endswith(b"\n"):
            yield line, None
            continue
        size = len(line)
        while True:
            more = f.readline(1 << 20)
            size += len(more)
            if not more or more.endswith(b"\n"):
                break
        yield line[:_RAW_HEAD], size


def _limit_row(loc: str, prefix: str, e: LimitError, raw: str | None) -> Row:
    return Row(loc, error=f"{prefix}{e}", raw=_head(raw) if raw is not None else None, code=e.code)


def _iter_jsonl(path: Path, name: str) -> Iterator[Row]:
    with _open_binary(path) as f:
        # Read ahead one line so the last line is known (a missing final newline plus bad JSON
        # means the writer was cut off, which is worth saying).
        lines = _lines(f)
        prev = next(lines, None)
        lineno = 0
        while prev is not None:
            lineno += 1
            (line, oversize), prev = prev, next(lines, None)
            loc = f"{name}:{lineno}"
            if oversize is not None:
                yield Row(loc, error=f"line {lineno}: the row is {oversize:,} bytes, over the "
                                     f"limit of {MAX_ROW_BYTES:,} (cai.limits.MAX_ROW_BYTES)",
                          raw=_head(line.decode("utf-8", errors="replace")), code="too-large")
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Row(loc, error=f"line {lineno}: not UTF-8 ({e.reason} at byte {e.start})",
                          raw=line.decode("utf-8", errors="replace"))
                continue
            if not text.strip():
                continue
            body = text.rstrip("\r\n")  # so error columns count within this line
            try:
                check_json_text(body, "the row", size=len(line))
                obj = json.loads(body)
            except LimitError as e:
                yield _limit_row(loc, f"line {lineno}: ", e, body)
                continue
            except json.JSONDecodeError as e:
                truncated = prev is None and body == text  # last line, no final newline
                what = "truncated last line (no newline at end of file)" if truncated else "invalid JSON"
                yield Row(loc, error=f"line {lineno}: {what}: {e.msg} (column {e.colno})", raw=body)
                continue
            problem = _json_object(obj)
            if problem:
                yield Row(loc, error=f"line {lineno}: {problem}", raw=body)
            else:
                yield Row(loc, data=obj)


def _iter_json(path: Path, name: str) -> Iterator[Row]:
    """`.json`: a JSON array of objects, or JSON lines under a .json name."""
    with _open_binary(path) as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        return _iter_jsonl(path, name)
    try:  # an array cannot be split into rows without parsing all of it
        with _open_binary(path) as f:
            text = f.read().decode("utf-8")
        deep = json_depth(text) > MAX_DEPTH + 1  # the array itself is one level
        items: list[Any] = json_array_items(text) if deep else json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid JSON array ({e})") from e

    def rows() -> Iterator[Row]:
        for i, obj in enumerate(items):
            loc = f"{name}:row {i}"
            raw = text[obj[0]:obj[1]] if deep else None  # only spans so far when too deep
            try:
                if raw is not None:
                    check_json_text(raw, "the row")
                    obj = json.loads(raw)
                check_value(obj, "the row")
            except LimitError as e:
                yield _limit_row(loc, f"row {i}: ", e, raw)
                continue
            except json.JSONDecodeError as e:
                yield Row(loc, error=f"row {i}: invalid JSON: {e.msg}", raw=_head(raw or ""))
                continue
            problem = _json_object(obj)
            if problem:
                yield Row(loc, error=f"row {i}: {problem}", raw=json.dumps(obj, ensure_ascii=False))
            else:
                yield Row(loc, data=obj)

    return rows()


def _iter_csv(path: Path, name: str) -> Iterator[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}: unreadable CSV header ({e})") from e
        last_line = reader.line_num
        while True:
            start = last_line + 1  # a quoted field may span lines; name where the record starts
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield Row(f"{name}:line {start}", error=f"line {start}: bad CSV ({e})")
                last_line = reader.line_num
                continue
            last_line = reader.line_num
            if not fields:
                continue  # blank line
            loc = f"{name}:line {start}"
            size = sum(len(x) for x in fields)
            if size > MAX_ROW_BYTES:
                yield Row(loc, error=f"line {start}: the record is {size:,} characters, over the "
                                     f"limit of {MAX_ROW_BYTES:,} (cai.limits.MAX_ROW_BYTES)",
                          code="too-large")
            elif len(fields) != len(header):
                yield Row(loc, error=f"line {start}: {len(fields)} fields, header has {len(header)}",
                          raw=json.dumps(fields, ensure_ascii=False))
            else:
                yield Row(loc, data=dict(zip(header, fields)))


def _checked(loc: str, prefix: str, data: dict[str, Any]) -> Row:
    try:
        check_value(data, "the row")
    except LimitError as e:
        return _limit_row(loc, prefix, e, None)
    return Row(loc, data=data)


def _iter_parquet(path: Path, name: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:  # opened here, not in the generator, so a corrupt file fails at iter_rows()
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e

    def rows() -> Iterator[Row]:
        i = 0
        for batch in pf.iter_batches(batch_size=1024):
            for data in batch.to_pylist():
                yield _checked(f"{name}:row {i}", f"row {i}: ", data)
                i += 1

    return rows()


def _iter_txt(path: Path, name: str, text_field: str) -> Iterator[Row]:
    with _open_binary(path) as f:
        for lineno, (line, oversize) in enumerate(_lines(f), start=1):
            loc = f"{name}:line {lineno}"
            if oversize is not None:
                yield Row(loc, error=f"line {lineno}: {oversize:,} bytes, over the limit of "
                                     f"{MAX_ROW_BYTES:,} (cai.limits.MAX_ROW_BYTES)",
                          raw=_head(line.decode("utf-8", errors="replace")), code="too-large")
                continue
            try:
                text = line.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                yield Row(loc, error=f"line {lineno}: not UTF-8 ({e.reason} at byte {e.start})",
                          raw=line.decode("utf-8", errors="replace"))
                continue
            if text:
                yield Row(loc, data={text_field: text})


def _iter_dataset_dir(path: Path, name: str) -> Iterator[Row]:
    from datasets import DatasetDict, load_from_disk  # heavy; only when such a dir is read

    try:
        ds = load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a readable `datasets` directory ({e})") from e
    splits = list(ds.items()) if isinstance(ds, DatasetDict) else [(None, ds)]

    def rows() -> Iterator[Row]:
        for split, part in splits:
            label = name if split is None else f"{name}[{split}]"
            for i, data in enumerate(part):
                yield _checked(f"{label}:row {i}", f"row {i}: ", dict(data))

    return rows()


def _shards(path: Path) -> list[Path]:
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("shards")
        except (json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"{manifest}: unreadable manifest ({e})") from e
        if isinstance(listed, list):
            return [path / (s["file"] if isinstance(s, dict) else s) for s in listed]
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.name.endswith(_SHARD_SUFFIXES)
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def _iter_file(path: Path, name: str, text_field: str) -> Iterator[Row]:
    lower = path.name.lower()
    if lower.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return _iter_jsonl(path, name)
    if lower.endswith((".json", ".json.gz")):
        return _iter_json(path, name)
    if lower.endswith(".csv"):
        return _iter_csv(path, name)
    if lower.endswith(".parquet"):
        return _iter_parquet(path, name)
    if lower.endswith((".txt", ".txt.gz")):
        return _iter_txt(path, name, text_field)
    raise DataError(
        f"{path}: unknown data format (expected .jsonl, .json, .csv, .parquet, .txt, "
        "or a directory saved by `datasets` or holding .parquet/.jsonl shards)"
    )


def iter_rows(path: str | os.PathLike, *, text_field: str = "prompt") -> Iterator[Row]:
    """Yield every row of a data file or directory, bad rows as `Row(error=...)`.

    Raises `DataError` (before yielding anything) when `path` is missing or not a data format.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return _iter_dataset_dir(p, p.name)
        shards = _shards(p)
        if not shards:
            raise DataError(f"{p}: directory holds no dataset (no `datasets` files, no "
                            ".parquet/.jsonl shards)")
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise DataError(f"{p}: manifest lists missing shard {missing[0].name}")
        iters = [_iter_file(s, f"{p.name}/{s.relative_to(p).as_posix()}", text_field) for s in shards]
        return (row for it in iters for row in it)
    return _iter_file(p, p.name, text_field)


__all__ = [
    "DataError", "Row", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_jsonl",
    "atomic_write_text", "iter_rows", "write_parquet_atomic", "MANIFEST_NAME",
]
