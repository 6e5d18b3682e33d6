"""cai.data.mix: weights, dedupe, and a train/test split with no prompt on both sides."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from cai.cli.data import app
from cai.data.mix import MixInput, mix_records, parse_mix_spec, record_key
from cai.data.store import read_preferences, write_preferences
from cai.records import PreferenceRecord, prompt_key


def rec(q: str, good: str, bad: str, source="human", p=1.0) -> PreferenceRecord:
    return PreferenceRecord(id=f"{source}:{q}:{good}:{bad}", prompt=[{"role": "user", "content": q}],
                            chosen=[{"role": "assistant", "content": good}],
                            rejected=[{"role": "assistant", "content": bad}], p_chosen=p, source=source)


# 20 prompts with two pairs each (human), and an AI set over 10 of the same prompts plus 10 new ones.
HUMAN = [rec(f"question {i}", f"good {i}{k}", f"bad {i}{k}") for i in range(20) for k in "ab"]
AI = ([rec(f"question {i}", f"ai good {i}", f"ai bad {i}", "ai-feedback", 0.7) for i in range(10, 30)]
      + [rec("question  3", "good 3a", "bad  3a", "ai-feedback", 0.6)])  # dup of HUMAN[6] up to whitespace


def test_parse_mix_spec():
    assert parse_mix_spec("a/b") == MixInput(path="a/b", weight=1.0)
    assert parse_mix_spec("a/b:0.5") == MixInput(path="a/b", weight=0.5)
    assert parse_mix_spec("data:v2") == MixInput(path="data:v2", weight=1.0)
    with pytest.raises(ValueError, match="weight must be"):
        parse_mix_spec("a:-1")


def test_split_by_prompt_has_no_leak_and_dedupes():
    train, test, report = mix_records([(MixInput(path="h"), HUMAN), (MixInput(path="ai"), AI)],
                                      test_fraction=0.25, seed=0)
    train_prompts = {prompt_key(r.prompt) for r in train}
    test_prompts = {prompt_key(r.prompt) for r in test}
    assert not train_prompts & test_prompts
    assert report.prompts == 30 and report.test_prompts == 8 == len(test_prompts)  # round(.25 * 30)
    assert report.inputs[1].duplicates == 1
    assert len(train) + len(test) == 40 + 20 == report.train + report.test
    # The duplicate kept is the first one given (the human label).
    kept = [r for r in train + test if record_key(r) == record_key(AI[-1])]
    assert [r.source for r in kept] == ["human"]
    # Every record of a held-out prompt is in test, from both sets.
    for key in test_prompts:
        assert sum(prompt_key(r.prompt) == key for r in test) == sum(
            prompt_key(r.prompt) == key for r in HUMAN + AI[:-1])


def test_split_is_deterministic_in_seed():
    sets = [(MixInput(path="h"), HUMAN), (MixInput(path="ai"), AI)]
    a = mix_records(sets, test_fraction=0.2, seed=1)
    b = mix_records(sets, test_fraction=0.2, seed=1)
    c = mix_records(sets, test_fraction=0.2, seed=2)
    assert [r.id for r in a[0]] == [r.id for r in b[0]] and [r.id for r in a[1]] == [r.id for r in b[1]]
    assert {r.id for r in a[1]} != {r.id for r in c[1]}


def test_weights_subsample_and_repeat_train_only():
    train, test, report = mix_records([(MixInput(path="h", weight=2.0), HUMAN),
                                       (MixInput(path="ai", weight=0.5), AI[:-1])],
                                      test_fraction=0.25, seed=0)
    h, ai = report.inputs
    assert ai.kept == 10  # seeded half of 20
    assert h.kept == 40 and h.train == 2 * (40 - h.test)
    counts = Counter(r.id for r in train if r.source == "human")
    assert set(counts.values()) == {2}
    assert len({r.id for r in test}) == len(test)  # no repeats in test
    assert not {prompt_key(r.prompt) for r in train} & {prompt_key(r.prompt) for r in test}
    # 1.5 = every train record once plus a seeded half of them again.
    train15, _, rep15 = mix_records([(MixInput(path="h", weight=1.5), HUMAN)], test_fraction=0.0, seed=0)
    assert rep15.inputs[0].train == 40 + 20 and len(set(r.id for r in train15)) == 40
    # weight 0 drops the set.
    _, _, rep0 = mix_records([(MixInput(path="h"), HUMAN), (MixInput(path="ai", weight=0), AI)], seed=0)
    assert rep0.inputs[1].kept == 0 and rep0.inputs[1].train == 0


def test_tiny_sets_keep_at_least_one_prompt_on_each_side():
    two = [rec("p1", "g", "b"), rec("p2", "g", "b")]
    train, test, _ = mix_records([(MixInput(path="x"), two)], test_fraction=0.1, seed=0)
    assert len(train) == 1 and len(test) == 1
    train, test, _ = mix_records([(MixInput(path="x"), two[:1])], test_fraction=0.5, seed=0)
    assert len(train) == 1 and test == []


def test_cli_mix_writes_train_test_stores(tmp_path):
    write_preferences(HUMAN, tmp_path / "human")
    write_preferences(AI, tmp_path / "ai")
    res = CliRunner().invoke(app, ["mix", str(tmp_path / "human"), f"{tmp_path / 'ai'}:0.5",
                                   "-o", str(tmp_path / "mix"), "--test-fraction", "0.2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    train, test = read_preferences(tmp_path / "mix" / "train"), read_preferences(tmp_path / "mix" / "test")
    assert train and test
    assert not {prompt_key(r.prompt) for r in train} & {prompt_key(r.prompt) for r in test}
    report = json.loads((tmp_path / "mix" / "mix.json").read_text())
    assert report["train"] == len(train) and report["test"] == len(test) and report["seed"] == 3
    assert json.loads((tmp_path / "mix" / "train" / "manifest.json").read_text())["mix"] == report
