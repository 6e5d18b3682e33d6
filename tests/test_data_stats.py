"""cai.data.stats on a four-record set whose numbers are worked out by hand below."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cai.cli.data import app
from cai.data.stats import compute_stats, format_stats
from cai.data.store import write_preferences
from cai.records import PreferenceRecord


def rec(i, prompt, chosen, rejected, p, source, principles=(), labeler=None):
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return PreferenceRecord(id=f"r{i}", prompt=msgs, chosen=[{"role": "assistant", "content": chosen}],
                            rejected=[{"role": "assistant", "content": rejected}], p_chosen=p,
                            source=source, principle_ids=list(principles), labeler=labeler)


RECORDS = [
    # prompt chars/words/turns | chosen chars/words | rejected chars/words
    rec(1, "a b c", "hello world", "no", 1.0, "human"),                     # 5/3/1 | 11/2 | 2/1
    rec(2, [{"role": "system", "content": "be nice"}, {"role": "user", "content": "why"}],
        "because", "dunno really", 0.75, "ai-feedback", ["h1", "h2"], "m"),  # 10/3/2 | 7/1 | 12/2
    rec(3, "a  b c", "yes", "nope nope nope", 0.5, "ai-feedback", ["h1"], "m"),  # 6/3/1 | 3/1 | 14/3
    rec(4, "q", "x y", "z", 0.0, "human"),                                   # 1/1/1 | 3/2 | 1/1
]


def test_stats_numbers_by_hand():
    s = compute_stats(RECORDS)
    assert s["count"] == 4
    assert s["unique_prompts"] == 3  # "a b c" and "a  b c" are one prompt (whitespace-normalised)
    assert s["unique_ids"] == 4
    assert s["sources"] == {"human": 2, "ai-feedback": 2}
    assert s["principle_ids"] == {"h1": 2, "h2": 1}
    assert s["labelers"] == {"m": 2}
    p = s["p_chosen"]
    assert (p["mean"], p["min"], p["max"]) == (0.5625, 0.0, 1.0)  # (1 + .75 + .5 + 0) / 4
    assert (p["hard"], p["soft"], p["ties"]) == (2, 2, 1)
    assert p["histogram"] == {"0.0-0.1": 1, "0.1-0.2": 0, "0.2-0.3": 0, "0.3-0.4": 0, "0.4-0.5": 0,
                              "0.5-0.6": 1, "0.6-0.7": 0, "0.7-0.8": 1, "0.8-0.9": 0, "0.9-1.0": 1}
    L = s["lengths"]
    assert L["prompt"]["chars"] == {"min": 1, "mean": 5.5, "median": 5.5, "max": 10}   # 5 10 6 1
    assert L["prompt"]["words"] == {"min": 1, "mean": 2.5, "median": 3, "max": 3}      # 3 3 3 1
    assert L["prompt"]["turns"] == {"min": 1, "mean": 1.25, "median": 1, "max": 2}     # 1 2 1 1
    assert L["chosen"]["chars"] == {"min": 3, "mean": 6.0, "median": 5.0, "max": 11}  # 11 7 3 3
    assert L["chosen"]["words"] == {"min": 1, "mean": 1.5, "median": 1.5, "max": 2}    # 2 1 1 2
    assert L["rejected"]["chars"] == {"min": 1, "mean": 7.25, "median": 7.0, "max": 14}  # 2 12 14 1
    assert L["rejected"]["words"] == {"min": 1, "mean": 1.75, "median": 1.5, "max": 3}   # 1 2 3 1


def test_histogram_edges():
    recs = [rec(i, f"q{i}", "a", "b", p, "ai-feedback") for i, p in enumerate([0.1, 0.3, 0.7, 0.9999, 0.2])]
    h = compute_stats(recs)["p_chosen"]["histogram"]
    assert (h["0.1-0.2"], h["0.2-0.3"], h["0.3-0.4"], h["0.7-0.8"], h["0.9-1.0"]) == (1, 1, 1, 1, 1)


def test_empty_set():
    s = compute_stats([])
    assert s["count"] == 0 and s["p_chosen"]["mean"] is None and s["lengths"]["prompt"]["chars"] is None
    assert "records         0" in format_stats(s)


def test_cli_stats_json_and_text(tmp_path):
    write_preferences(RECORDS, tmp_path / "s")
    runner = CliRunner()
    res = runner.invoke(app, ["stats", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == json.loads(json.dumps(compute_stats(RECORDS)))
    res = runner.invoke(app, ["stats", str(tmp_path / "s")])
    assert res.exit_code == 0
    assert "sources         human=2, ai-feedback=2" in res.output
    assert "hard 2  soft 2  ties 1" in res.output
