"""`cai score`: add a `reward` column to prompt/response rows (JSONL, Parquet, any format
`cai.io.iter_rows` reads). `prompt` is text (one user turn) or a message list; `response`
is the answer text. Rows that are not usable fail the run with their location, before
any scoring, so nothing is written half-done. Output is JSONL or Parquet by -o's suffix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="reward model directory (from `cai train rm`)")
    data: str = Field(description="rows with a prompt and a response")
    out: str = Field(description="output file (.jsonl or .parquet)")
    prompt_field: str = "prompt"
    response_field: str = "response"
    max_length: int = Field(1024, ge=8)
    batch_size: int = Field(16, ge=1)


def _prompt_messages(value: Any, location: str, field: str) -> list[dict[str, str]]:
    from cai.io import DataError

    from cai.schema import BadRow, check_conversation

    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        try:
            return check_conversation(value, where=field)
        except BadRow as e:
            raise DataError(f"{location}: {e.reason}") from None
    raise DataError(f"{location}: `{field}` must be text or a list of {{role, content}} messages")


def run_score(config: ScoreConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    from cai.eval.rm import load_scoring_model
    from cai.io import DataError, atomic_write_jsonl, iter_rows, write_parquet_atomic
    from cai.train.reward import score

    out = Path(config.out)
    if not out.name.endswith((".jsonl", ".parquet")):
        raise DataError(f"{out}: output must end in .jsonl or .parquet")
    rows, items = [], []
    for row in iter_rows(config.data):
        if not row.ok:
            raise DataError(f"{row.location}: {row.error}")
        data = row.data or {}
        response = data.get(config.response_field)
        if not isinstance(response, str):
            raise DataError(f"{row.location}: no text `{config.response_field}` field")
        items.append((_prompt_messages(data.get(config.prompt_field), row.location,
                                       config.prompt_field), response))
        rows.append(data)
    if not rows:
        raise DataError(f"{config.data}: empty dataset (no rows)")
    t0 = time.perf_counter()
    model, tokenizer = load_scoring_model(config.model)
    rewards = score(model, tokenizer, items, max_length=config.max_length,
                    batch_size=config.batch_size)
    for data, r in zip(rows, rewards):
        data["reward"] = r
    if out.name.endswith(".parquet"):
        import pyarrow as pa

        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
            raise DataError(f"{config.data}: a column mixes types, which Parquet cannot hold "
                            f"({e}); write .jsonl instead") from None
        write_parquet_atomic(table, out)
    else:
        atomic_write_jsonl(out, rows)
    return {"rows": len(rows), "out": str(out), "seconds": round(time.perf_counter() - t0, 2),
            "mean_reward": sum(rewards) / len(rewards)}
