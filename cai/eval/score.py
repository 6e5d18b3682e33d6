"""`cai score`: add a `reward` column to prompt/response rows (JSONL, Parquet, any format
`cai.io.iter_rows` reads). `prompt` is text (one user turn) or a message list; `response`
is the answer text. Rows that are not usable fail the run with their location, before
any scoring, so nothing is written half-done. Output is JSONL or Parquet by -o's suffix.

`cai score --judge` (`JudgeScoreConfig`, `run_judge_score`) writes the feedback model's
pointwise verdict instead: `judge_score`, the log-odds of Yes over No to the constitution's
judgement question (`cai.label.pointwise`), the same judge that `cai label --mode
pointwise` uses, so "does this response need revising?" and evaluation can share it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from cai.config import EngineConfig, StageConfig, progress_bar, say
from cai.progress import loading


class ScoreConfig(StageConfig):
    """Reward-model scoring: `model` is the reward model directory, `out` the output file
    (.jsonl or .parquet)."""

    model: str = Field(description="reward model directory (from `cai train rm`)")
    data: str = Field(description="rows with a prompt and a response")
    prompt_field: str = Field("prompt", description="text or message-list column")
    response_field: str = Field("response", description="response text column")
    max_length: int = Field(1024, ge=8, description="tokens per prompt+response")
    batch_size: int = Field(16, ge=1, description="rows per scoring batch")


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


class JudgeScoreConfig(EngineConfig):
    """Judge scoring (`cai score --judge`): `model` is the feedback model, `out` the output
    file (.jsonl or .parquet)."""

    data: str = Field(description="rows with a prompt and a response")
    constitution: str = Field("harmless", description="shipped name or file")
    principles: list[str] = Field(default_factory=list, description="judge under these principle "
                                  "ids (mean score); empty: `k` drawn per response")
    k: int = Field(1, ge=1, description="principles drawn per response when none are named")
    few_shot: bool = Field(True, description="show the constitution's feedback examples first")
    response_field: str = Field("response", description="response text column")


def _read_items(data_path: str, prompt_field: str, response_field: str
                ) -> tuple[list[dict], list[tuple[list[dict[str, str]], str]]]:
    from cai.io import DataError, iter_rows

    rows, items = [], []
    for row in iter_rows(data_path):
        if not row.ok:
            raise DataError(f"{row.location}: {row.error}")
        data = row.data or {}
        response = data.get(response_field)
        if not isinstance(response, str):
            raise DataError(f"{row.location}: no text `{response_field}` field")
        items.append((_prompt_messages(data.get(prompt_field), row.location, prompt_field),
                      response))
        rows.append(data)
    if not rows:
        raise DataError(f"{data_path}: empty dataset (no rows)")
    return rows, items


def _check_out(out: Path) -> None:
    from cai.io import DataError

    if not out.name.endswith((".jsonl", ".parquet")):
        raise DataError(f"{out}: output must end in .jsonl or .parquet")


def _write_rows(rows: list[dict], out: Path, data_path: str) -> None:
    from cai.io import DataError, atomic_write_jsonl, write_parquet_atomic

    if out.name.endswith(".parquet"):
        import pyarrow as pa

        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
            raise DataError(f"{data_path}: a column mixes types, which Parquet cannot hold "
                            f"({e}); write .jsonl instead") from None
        write_parquet_atomic(table, out)
    else:
        atomic_write_jsonl(out, rows)


JUDGE_CHUNK = 16  # rows per engine call: one progress step, small enough to move often


def _judge_in_chunks(backend: Any, c: Any, items: list, config: JudgeScoreConfig,
                     log: Callable[[str], None], progress: Callable[..., Any]) -> list[Any]:
    """`score_responses` over `items`, JUDGE_CHUNK rows per call, with a progress bar. A
    row's principles are drawn from (seed, its prompt, its response), not its position,
    and one scorer keeps the cache across chunks, so the scores are those of one call."""
    from cai.label.pointwise import ResponseScorer, score_responses

    scorer = ResponseScorer(backend, c, few_shot=config.few_shot)
    log(f"judging {len(items)} responses under {len(config.principles) or config.k} "
        f"principle(s) each")
    bar = progress(total=len(items), desc="judge", unit="row", disable=not config.progress)
    scores: list[Any] = []
    try:
        for start in range(0, len(items), JUDGE_CHUNK):
            chunk = items[start:start + JUDGE_CHUNK]
            scores += score_responses(backend, c, chunk, principle_ids=config.principles or None,
                                      k=config.k, seed=config.seed, scorer=scorer)
            bar.update(len(chunk))
    finally:
        bar.close()
    return scores


def run_judge_score(config: JudgeScoreConfig, *, backend: Any = None,
                    log: Callable[[str], None] = say,
                    progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """Each row's verdict score from the feedback model; adds `judge_score` (mean over the
    principles) and `judge_principles` ({principle id: score}) to every row."""
    from cai.constitution import load_constitution
    from cai.io import DataError

    out = Path(config.out)
    _check_out(out)
    c = load_constitution(config.constitution)
    for pid in config.principles:
        try:
            c.principle(pid)
        except KeyError as e:
            raise DataError(str(e.args[0])) from None
    rows, items = _read_items(config.data, config.prompt_field, config.response_field)
    t0 = time.perf_counter()
    owned = None
    if backend is None:
        from cai.cluster.backend import load_engine  # on Ray when config.ray is set

        with loading(progress, f"judge {config.model or 'default model'}",
                     disable=not config.progress):
            backend = owned = load_engine(config)
    try:
        scores = _judge_in_chunks(backend, c, items, config, log, progress)
        judge = backend.model
    finally:
        if owned is not None:
            owned.close()
    for data, s in zip(rows, scores):
        data["judge_score"] = s.score
        data["judge_principles"] = s.principles
    _write_rows(rows, out, config.data)
    return {"rows": len(rows), "out": str(out), "judge": judge, "constitution": c.name,
            "seconds": round(time.perf_counter() - t0, 2),
            "mean_score": sum(s.score for s in scores) / len(scores),
            "yes_rate": sum(s.score > 0 for s in scores) / len(scores)}


def run_score(config: ScoreConfig, *, backend: Any = None, log: Callable[[str], None] = say,
              progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """Each row's reward from the reward model (`backend` is unused: a reward model is not
    an inference engine)."""
    from cai.eval.rm import load_scoring_model
    from cai.train.reward import score

    out = Path(config.out)
    _check_out(out)
    rows, items = _read_items(config.data, config.prompt_field, config.response_field)
    t0 = time.perf_counter()
    with loading(progress, f"reward model {config.model}", disable=not config.progress):
        model, tokenizer = load_scoring_model(config.model)
    bar = progress(total=len(items), desc="reward model", unit="row",
                   disable=not config.progress)
    try:
        rewards = score(model, tokenizer, items, max_length=config.max_length,
                        batch_size=config.batch_size, on_batch=bar.update)
    finally:
        bar.close()
    for data, r in zip(rows, rewards):
        data["reward"] = r
    _write_rows(rows, out, config.data)
    return {"rows": len(rows), "out": str(out), "seconds": round(time.perf_counter() - t0, 2),
            "mean_reward": sum(rewards) / len(rewards)}
