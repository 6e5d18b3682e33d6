"""Export preference records to other tools' formats (one JSON object per line).

- `trl`: {"prompt", "chosen", "rejected"} message lists, TRL's conversational preference
  format, and nothing else (extra columns can trip TRL's collators).
- `hh`: {"chosen", "rejected"} HH-RLHF transcripts. A leading system turn is written as
  text before the first "\\n\\nHuman:" (Anthropic's text-completion convention; `cai data
  import` reads it back as a system turn). A system turn anywhere else has no HH form:
  that record is skipped and counted.
- `jsonl`: full records (`model_dump`, metadata as an object); `read_preferences` and
  `cai data import` read it back.

trl and hh carry hard labels only: a record with p_chosen < 0.5 is written with chosen
and rejected swapped (so "chosen" is always the preferred answer), and a tie (0.5) is
skipped and counted. jsonl keeps p_chosen as is.
"""

from __future__ import annotations

import os
from typing import Iterable, Literal

from pydantic import BaseModel

from cai.data.importers import to_transcript
from cai.io import atomic_write_jsonl
from cai.records import PreferenceRecord

ExportFormat = Literal["trl", "hh", "jsonl"]
EXPORT_FORMATS: tuple[str, ...] = ("trl", "hh", "jsonl")


class ExportReport(BaseModel):
    path: str
    format: str
    written: int = 0
    swapped: int = 0  # p_chosen < 0.5: written with chosen/rejected exchanged
    skipped_ties: int = 0  # p_chosen == 0.5: no preferred answer
    skipped_system: int = 0  # hh only: a system turn that is not the first turn


def export_row(record: PreferenceRecord, fmt: str) -> dict:
    """One output row for `record`, hard-label orientation already applied by the caller."""
    if fmt == "jsonl":
        return record.model_dump(mode="json")
    prompt = [m.model_dump() for m in record.prompt]
    chosen = [m.model_dump() for m in record.chosen]
    rejected = [m.model_dump() for m in record.rejected]
    if fmt == "trl":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if fmt == "hh":
        return {"chosen": to_transcript(prompt + chosen),
                "rejected": to_transcript(prompt + rejected)}
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")


def export_records(
    records: Iterable[PreferenceRecord], fmt: str, path: str | os.PathLike
) -> ExportReport:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    report = ExportReport(path=str(path), format=fmt)

    def rows():
        for rec in records:
            if fmt != "jsonl":
                if rec.p_chosen == 0.5:
                    report.skipped_ties += 1
                    continue
                if rec.p_chosen < 0.5:
                    rec = rec.model_copy(update={"chosen": rec.rejected, "rejected": rec.chosen,
                                                 "p_chosen": 1.0 - rec.p_chosen})
                    report.swapped += 1
            try:
                row = export_row(rec, fmt)
            except ValueError:  # only to_transcript raises here: a non-leading system turn
                report.skipped_system += 1
                continue
            yield row

    report.written = atomic_write_jsonl(path, rows())
    return report
