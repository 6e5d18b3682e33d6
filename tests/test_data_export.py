"""cai.data.export: the HH round trip (byte-exact), TRL output, hard-label orientation."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cai.cli.data import app
from cai.data.export import export_records
from cai.data.importers import import_file
from cai.data.store import read_preferences
from cai.records import PreferenceRecord

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def rec(p: float, prompt=None) -> PreferenceRecord:
    return PreferenceRecord(id=f"r{p}", prompt=prompt or [{"role": "user", "content": "Q"}],
                            chosen=[{"role": "assistant", "content": "A"}],
                            rejected=[{"role": "assistant", "content": "B"}],
                            p_chosen=p, source="ai-feedback")


def test_hh_import_export_roundtrip_is_byte_exact(tmp_path):
    src = DATA / "hh_roundtrip.jsonl"
    res = runner.invoke(app, ["import", str(src), "-f", "hh", "-o", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tmp_path / "store"), "-f", "hh", "-o", str(tmp_path / "back.jsonl")])
    assert res.exit_code == 0, res.output
    assert "4 records" in res.output
    assert (tmp_path / "back.jsonl").read_bytes() == src.read_bytes()
    # And the transcripts themselves, in case someone reformats the fixture's JSON.
    original = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
    back = [json.loads(x) for x in (tmp_path / "back.jsonl").read_text(encoding="utf-8").splitlines()]
    assert back == original


def test_trl_export_reimports_to_the_same_records(tmp_path):
    import_file(DATA / "hh_roundtrip.jsonl", tmp_path / "store")
    recs = read_preferences(tmp_path / "store")
    report = export_records(recs, "trl", tmp_path / "trl.jsonl")
    assert report.written == 4
    first = json.loads((tmp_path / "trl.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
                     "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
                     "rejected": [{"role": "assistant", "content": "I don't know."}]}
    import_file(tmp_path / "trl.jsonl", tmp_path / "again", fmt="trl")
    again = read_preferences(tmp_path / "again")
    assert [(r.id, r.prompt, r.chosen, r.rejected) for r in again] == [
        (r.id, r.prompt, r.chosen, r.rejected) for r in recs]


def test_jsonl_export_keeps_full_records(tmp_path):
    recs = [rec(0.3), rec(0.5)]
    export_records(recs, "jsonl", tmp_path / "full.jsonl")
    assert read_preferences(tmp_path / "full.jsonl") == recs


def test_soft_labels_are_oriented_and_ties_skipped(tmp_path):
    report = export_records([rec(0.9), rec(0.2), rec(0.5)], "trl", tmp_path / "t.jsonl")
    assert (report.written, report.swapped, report.skipped_ties) == (2, 1, 1)
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["chosen"][0]["content"] for r in rows] == ["A", "B"]


def test_hh_system_turns(tmp_path):
    leading = rec(1.0, [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Q"}])
    middle = rec(1.0, [{"role": "user", "content": "Q0"}, {"role": "system", "content": "late"},
                       {"role": "user", "content": "Q"}])
    report = export_records([leading, middle], "hh", tmp_path / "h.jsonl")
    assert (report.written, report.skipped_system) == (1, 1)
    assert json.loads((tmp_path / "h.jsonl").read_text()) == {
        "chosen": "Sys.\n\nHuman: Q\n\nAssistant: A", "rejected": "Sys.\n\nHuman: Q\n\nAssistant: B"}
