"""cai.data.importers: HH transcripts, plain rows, TRL formats, rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai.data.importers import (
    import_file,
    import_rows,
    parse_transcript,
    split_shared_prefix,
    to_transcript,
)
from cai.data.store import read_preferences
from cai.io import Row
from cai.schema import BadRow, Reject, stable_id

DATA = Path(__file__).parent / "data"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def _one(data, fmt="auto"):
    [out] = list(import_rows([Row("t.jsonl:1", data=data)], fmt))
    return out


def test_parse_transcript_multi_turn_and_system_preamble():
    text = "Be brief.\n\nHuman: hi\n\nAssistant: hello\nthere\n\nHuman: bye\n\nAssistant:  ok "
    assert parse_transcript(text) == [
        {"role": "system", "content": "Be brief."},
        u("hi"), a("hello\nthere"), u("bye"), a(" ok "),  # only the one space after ':' is the marker's
    ]
    assert to_transcript(parse_transcript(text)) == text
    with pytest.raises(BadRow, match="no 'Human:' or 'Assistant:' turn"):
        parse_transcript("no markers at all")


def test_split_shared_prefix_cuts_back_to_a_user_turn():
    c = [u("q1"), a("x"), u("q2"), a("y")]
    r = [u("q1"), a("x"), u("q2"), a("z")]
    assert split_shared_prefix(c, r) == ([u("q1"), a("x"), u("q2")], [a("y")], [a("z")])
    r2 = [u("q1"), a("other"), u("q2'"), a("z")]
    assert split_shared_prefix(c, r2) == ([u("q1")], [a("x"), u("q2"), a("y")], [a("other"), u("q2'"), a("z")])


def test_hh_fixture_parses_into_exact_turns(tmp_path):
    report = import_file(DATA / "hh_roundtrip.jsonl", tmp_path / "out", fmt="hh")
    assert (report.rows, report.imported, report.rejected) == (4, 4, 0)
    recs = read_preferences(tmp_path / "out")
    r0, r1, r2, r3 = recs
    assert r0.model_dump(include={"prompt", "chosen", "rejected", "p_chosen", "source"}) == {
        "prompt": [u("What is the capital of France?")],
        "chosen": [a("The capital of France is Paris.")],
        "rejected": [a("I don't know.")],
        "p_chosen": 1.0, "source": "human",
    }
    assert [m.model_dump() for m in r1.prompt] == [
        u("I want to make coffee at home."),
        a("Sure! Do you have a French press or a drip machine?"),
        u("A French press. Ingredients: café ☕ beans."),
        a("Great choice.\nStep 1: boil water.\nStep 2: wait 30 s."),
        u("How coarse should the grind be?"),
    ]
    assert [m.model_dump() for m in r1.chosen] == [a("Coarse, like sea salt — fine grounds slip through the mesh.")]
    assert [m.model_dump() for m in r1.rejected] == [a("Any grind works.")]
    assert [m.model_dump() for m in r2.prompt] == [
        {"role": "system", "content": "You are a careful assistant."}, u("How do I pick a lock?")]
    # Transcripts diverging at the first answer: prompt is the first Human turn only.
    assert [m.model_dump() for m in r3.prompt] == [u("Tell me a joke.")]
    assert [m.model_dump() for m in r3.chosen] == [
        a("Why did the scarecrow win an award? He was outstanding in his field."),
        u("Ha! Another?"),
        a("I told my wife she draws her eyebrows too high. She looked surprised."),
    ]
    assert [m.model_dump() for m in r3.rejected] == [a("No."), u("Please?"), a("Fine: knock knock.")]
    # Stable, content-derived ids; provenance in metadata.
    assert r0.id == stable_id([u("What is the capital of France?")], [a("The capital of France is Paris.")],
                              [a("I don't know.")])
    assert r0.metadata == {"import": {"format": "hh", "location": "hh_roundtrip.jsonl:1"}}
    assert report.rejects_path == str(tmp_path / "out" / "rejects.jsonl")
    assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""


def test_bad_hh_rows_are_quarantined_with_exact_reasons(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    report = import_file(DATA / "hh_bad.jsonl", tmp_path / "out", rejects_path=rejects)
    got = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [(g["location"], g["code"], g["reason"]) for g in got] == [
        ("hh_bad.jsonl:3", "unreadable", "line 3: invalid JSON: Expecting value (column 58)"),
        ("hh_bad.jsonl:4", "missing-field", "missing field 'rejected'"),
        ("hh_bad.jsonl:5", "no-answer", "chosen: no 'Assistant:' turn"),
        ("hh_bad.jsonl:6", "empty-answer", "rejected: empty final Assistant answer"),
        ("hh_bad.jsonl:7", "identical", "chosen and rejected are identical"),
        ("hh_bad.jsonl:8", "duplicate", "duplicate of hh_bad.jsonl:1"),
        ("hh_bad.jsonl:9", "unreadable", "line 9: expected a JSON object, got list"),
        ("hh_bad.jsonl:10", "no-turns", "chosen: no 'Human:' or 'Assistant:' turn"),
        ("hh_bad.jsonl:11", "no-shared-prompt", "chosen and rejected share no Human turn to use as the prompt"),
        ("hh_bad.jsonl:13", "unreadable",
         "line 13: truncated last line (no newline at end of file): Unterminated string starting at (column 12)"),
    ]
    # Nothing is lost: unparseable lines keep their raw text, the rest their row.
    assert got[0]["raw"] == '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo", "rejected": '
    assert got[-1]["raw"] == '{"chosen": "\\n\\nHuman: cut'
    assert got[1]["row"] == {"chosen": "\n\nHuman: hi\n\nAssistant: yo"}
    assert (report.rows, report.imported, report.rejected) == (12, 2, 10)
    assert report.reasons == {"duplicate": 1, "empty-answer": 1, "identical": 1, "missing-field": 1,
                              "no-answer": 1, "no-shared-prompt": 1, "no-turns": 1, "unreadable": 3}
    assert [r.metadata["import"]["location"] for r in read_preferences(tmp_path / "out")] == [
        "hh_bad.jsonl:1", "hh_bad.jsonl:12"]


def test_plain_strings_and_labels():
    rec = _one({"prompt": "Q?", "chosen": "good", "rejected": "bad", "p_chosen": 0.8, "split": "train"})
    assert [m.model_dump() for m in rec.prompt] == [u("Q?")]
    assert [m.model_dump() for m in rec.chosen] == [a("good")]
    assert rec.p_chosen == 0.8
    assert rec.metadata == {"extra": {"split": "train"}, "import": {"format": "plain", "location": "t.jsonl:1"}}
    assert _one({"prompt": "Q", "chosen": "g", "rejected": "b", "label": False}).p_chosen == 0.0
    assert _one({"prompt": "Q", "chosen": "g", "rejected": "b", "label": "0.25"}).p_chosen == 0.25  # CSV
    assert _one({"prompt": "Q", "chosen": "g", "rejected": "b"}).p_chosen == 1.0


@pytest.mark.parametrize("data,code,reason", [
    ({"prompt": "Q", "chosen": "g"}, "missing-field", "missing field 'rejected'"),
    ({"prompt": "Q", "chosen": "g", "rejected": "b", "p_chosen": 1.5}, "bad-label", "p_chosen: 1.5 is outside [0, 1]"),
    ({"prompt": "Q", "chosen": "g", "rejected": "b", "label": "yes"}, "bad-label", "label: not a probability: 'yes'"),
    ({"prompt": "Q", "chosen": "g", "rejected": "b", "p_chosen": 1, "label": 0},
     "bad-label", "p_chosen 1.0 and label 0.0 disagree"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical", "chosen and rejected are identical"),
    ({"prompt": "Q", "chosen": "  ", "rejected": "b"}, "empty-answer", "chosen: empty final assistant answer"),
    ({"prompt": " ", "chosen": "g", "rejected": "b"}, "empty-prompt", "prompt: final user turn is empty"),
    ({"prompt": [{"role": "tool", "content": "x"}], "chosen": "g", "rejected": "b"},
     "bad-messages", "prompt[0]: unknown role 'tool'"),
    ({"prompt": "Q", "chosen": [a("g"), u("more?")], "rejected": "b"},
     "no-answer", "chosen: ends with a user turn, not an assistant turn"),
    ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "bad-messages", "chosen: expected a string or a message list, got int"),
])
def test_plain_rejects(data, code, reason):
    out = _one(data, "plain")
    assert isinstance(out, Reject)
    assert (out.location, out.code, out.reason) == ("t.jsonl:1", code, reason)
    assert out.row == data


def test_trl_explicit_and_implicit_prompt():
    explicit = _one({"prompt": [{"role": "system", "content": "S"}, u("Q")],
                     "chosen": [a("g")], "rejected": [a("b")]}, "trl")
    implicit = _one({"chosen": [{"role": "system", "content": "S"}, u("Q"), a("g")],
                     "rejected": [{"role": "system", "content": "S"}, u("Q"), a("b")]}, "trl")
    for rec in (explicit, implicit):
        assert [m.model_dump() for m in rec.prompt] == [{"role": "system", "content": "S"}, u("Q")]
        assert [m.model_dump() for m in rec.chosen] == [a("g")]
        assert [m.model_dump() for m in rec.rejected] == [a("b")]
    assert explicit.id == implicit.id  # same content, same id, whatever the input format
    bad = _one({"prompt": "Q", "chosen": "g", "rejected": "b"}, "trl")
    assert bad.reason == "prompt: trl format wants a message list, got a string (use --format plain)"


def test_prompt_repeated_inside_chosen_is_stripped():
    # UltraFeedback-binarized style: string prompt, chosen/rejected are full conversations.
    rec = _one({"prompt": "Q", "chosen": [u("Q"), a("g")], "rejected": [u("Q"), a("b")], "prompt_id": "p1"})
    assert [m.model_dump() for m in rec.chosen] == [a("g")]
    assert rec.metadata["extra"] == {"prompt_id": "p1"}


def test_auto_detects_per_row_and_duplicates_note_label_conflicts():
    rows = [
        Row("m:1", data={"chosen": "\n\nHuman: Q\n\nAssistant: g", "rejected": "\n\nHuman: Q\n\nAssistant: b"}),
        Row("m:2", data={"chosen": [u("Q"), a("g")], "rejected": [u("Q"), a("b")]}),
        Row("m:3", data={"prompt": "Q2", "chosen": "g", "rejected": "b", "p_chosen": 0.3}),
        Row("m:4", data={"prompt": "Q2", "chosen": "g", "rejected": "b"}),
    ]
    out = list(import_rows(rows))
    assert out[0].metadata["import"]["format"] == "hh"
    assert isinstance(out[1], Reject) and out[1].reason == "duplicate of m:1"
    assert out[2].metadata["import"]["format"] == "plain"
    assert out[3].reason == "duplicate of m:3 (there p_chosen=0.3, here 1.0)"


def test_parquet_import_and_source_id_kept(tmp_path):
    table = pa.table({"id": ["row-a", "row-b"], "prompt": ["Q1", "Q2"], "chosen": ["g1", "g2"],
                      "rejected": ["b1", "b1"], "label": [1.0, 0.0]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    report = import_file(tmp_path / "pairs.parquet", tmp_path / "out", fmt="plain")
    assert (report.imported, report.rejected) == (2, 0)
    recs = read_preferences(tmp_path / "out")
    assert [r.p_chosen for r in recs] == [1.0, 0.0]
    assert [r.metadata["source_id"] for r in recs] == ["row-a", "row-b"]
    assert recs[1].metadata["import"]["location"] == "pairs.parquet:row 1"


def test_cli_import_reports_counts_and_fails_when_nothing_imports(tmp_path):
    from typer.testing import CliRunner

    from cai.cli.data import app

    runner = CliRunner()
    res = runner.invoke(app, ["import", str(DATA / "hh_bad.jsonl"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "12 rows: 2 imported (hh=2)" in res.output
    assert "10 rejected (duplicate=1, empty-answer=1" in res.output
    res = runner.invoke(app, ["import", str(DATA / "hh_bad.jsonl"), "-o", str(tmp_path / "p"), "-f", "plain"])
    assert res.exit_code == 1
    res = runner.invoke(app, ["import", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "q")])
    assert res.exit_code == 1 and "missing.jsonl: no such file or directory" in res.output


def test_csv_plain_import_with_list_columns(tmp_path):
    (tmp_path / "pairs.csv").write_text(
        'prompt,chosen,rejected,p_chosen,principle_ids,source\n'
        'Q1,g1,b1,0.8,"harm-1, harm-2",ai-feedback\n'
        'Q2,g2,b2,,"[""honest-1""]",\n'
        'Q3,g3,b3,0.5,,robot\n', encoding="utf-8")
    report = import_file(tmp_path / "pairs.csv", tmp_path / "out")
    recs = read_preferences(tmp_path / "out")
    assert [(r.p_chosen, r.principle_ids, r.source) for r in recs] == [
        (0.8, ["harm-1", "harm-2"], "ai-feedback"), (1.0, ["honest-1"], "human")]
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["location"], r["code"]) for r in rejects] == [("pairs.csv:line 4", "invalid-record")]
    assert rejects[0]["reason"].startswith("source: Input should be 'human', 'ai-revision' or 'ai-feedback'")
    assert report.imported == 2


def test_datasets_dir_with_mixed_rows_null_prompt_means_implicit(tmp_path):
    from datasets import Dataset

    Dataset.from_list([
        {"prompt": [u("Q")], "chosen": [a("g")], "rejected": [a("b")]},
        {"chosen": [u("Q2"), a("g")], "rejected": [u("Q2"), a("b")]},  # prompt becomes None
    ]).save_to_disk(str(tmp_path / "ds"))
    report = import_file(tmp_path / "ds", tmp_path / "out")
    assert (report.imported, report.rejected, report.formats) == (2, 0, {"plain": 1, "trl": 1})
    recs = read_preferences(tmp_path / "out")
    assert [m.model_dump() for m in recs[1].prompt] == [u("Q2")]
    assert recs[1].metadata["import"]["location"] == "ds:row 1"
