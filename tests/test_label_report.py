"""Label quality report on hand-built labels, and reading pairs from every input kind."""

from __future__ import annotations

import json
import math

import pytest

from cai.constitution import load_constitution
from cai.data.store import write_preferences
from cai.label import (LabelConfig, build_report, format_report, human_preferences, pair_key, read_pairs,
                       run_info, to_record, verdict)
from cai.label.labeler import Label
from cai.label.inputs import Pair
from cai.records import PreferenceRecord

C = load_constitution("harmless")
RUN = run_info(C, LabelConfig())


def lp(p: float) -> tuple[float, float]:
    """Option log-probs whose softmax gives p(A) = p."""
    return (math.log(p), math.log(1 - p))


def label(first: str, second: str, orders: list[tuple[float, float]], source: str = "human",
          prompt: str = "q") -> Label:
    msgs = [{"role": "user", "content": prompt}]
    pair = Pair(key=pair_key(msgs, first, second), prompt=msgs, first=first, second=second,
                input={"source": source})
    vs = [verdict(f"p{i}", lp(a), lp(b)) for i, (a, b) in enumerate(orders)]
    return Label(pair=pair, p_first=sum(v.p_first for v in vs) / len(vs), verdicts=vs)


def test_report_metrics_by_hand():
    labels = [
        # consistent both principles; P(first) = mean(0.9 .. 0.8, 0.7 .. 0.6) = (0.85 + 0.55)/2 = 0.7
        label("rev1", "orig1", [(0.9, 0.2), (0.7, 0.6)], source="ai-revision", prompt="a"),
        # (A) wins both orders -> inconsistent; P(first) = (0.8 + 0.2)/2 = 0.5 (a tie)
        label("rev2", "orig2", [(0.8, 0.8)], source="ai-revision", prompt="b"),
        # second wins both orders: P(first) = (0.1 + 0.3)/2 = 0.2
        label("rev3", "orig3", [(0.1, 0.7)], source="ai-revision", prompt="c"),
        label("x", "y", [(0.6, 0.3)], source="human", prompt="d"),  # P(first) = 0.65
    ]
    recs = [to_record(l, "judge", RUN) for l in labels]
    assert [r.p_chosen for r in recs] == pytest.approx([0.7, 0.5, 0.8, 0.65])
    assert [r.chosen[0].content for r in recs] == ["rev1", "rev2", "orig3", "x"]
    human = {pair_key([{"role": "user", "content": "d"}], "x", "y"): "y",      # labeler disagrees
             pair_key([{"role": "user", "content": "a"}], "rev1", "orig1"): "rev1"}  # agrees
    rep = build_report(recs, human)
    assert rep.pairs == 4 and rep.comparisons == 5
    # consistent: (0.9,0.2) yes, (0.7,0.6) no, (0.8,0.8) no, (0.1,0.7) yes, (0.6,0.3) yes
    assert rep.position_consistency == pytest.approx(3 / 5)
    # (A) picked in: 0.9, 0.7, 0.6, 0.8, 0.8, 0.7, 0.6 -> 7 of 10 orders
    assert rep.a_rate == pytest.approx(0.7)
    assert rep.by_principle["p0"].comparisons == 4
    assert rep.by_principle["p0"].position_consistency == pytest.approx(3 / 4)
    assert rep.by_principle["p1"].position_consistency == 0.0
    h = lambda p: -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert rep.mean_entropy_bits == pytest.approx((h(0.7) + 1.0 + h(0.8) + h(0.65)) / 4)
    assert rep.mean_p_chosen == pytest.approx((0.7 + 0.5 + 0.8 + 0.65) / 4)
    # revision direction: agrees on 1, ties on 2 (half), disagrees on 3
    ra = rep.revision_agreement
    assert ra.pairs == 3 and ra.rate == pytest.approx(0.5)
    assert ra.mean_p == pytest.approx((0.7 + 0.5 + 0.2) / 3)
    ha = rep.human_accuracy
    assert ha.pairs == 2 and ha.rate == pytest.approx(0.5)
    assert ha.mean_p == pytest.approx((0.7 + 0.35) / 2)
    assert build_report(recs).human_accuracy is None
    # length: chosen is rev1 (4 chars) < orig1 (5), rev2 < orig2, orig3 > rev3, x == y
    assert rep.longer_chosen_rate == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    assert ra.longer_baseline == 0.0  # every revision is shorter than its original
    assert ha.longer_baseline == pytest.approx((0.5 + 0.0) / 2)  # y == x in length; rev1 < orig1


def test_report_survives_a_store_round_trip(tmp_path):
    from cai.data.store import read_preferences

    recs = [to_record(label("a", "b", [(0.9, 0.2)], prompt="z"), "judge", RUN)]
    write_preferences(recs, tmp_path / "s")
    assert build_report(read_preferences(tmp_path / "s")) == build_report(recs)


def _rec(prompt: str, chosen: str, rejected: str, source: str, p: float = 1.0) -> PreferenceRecord:
    from cai.records import stable_id

    return PreferenceRecord(id=stable_id(prompt, chosen, rejected), source=source, p_chosen=p,
                            prompt=[{"role": "user", "content": prompt}],
                            chosen=[{"role": "assistant", "content": chosen}],
                            rejected=[{"role": "assistant", "content": rejected}])


def test_read_pairs_from_store_human_rows_and_candidates(tmp_path):
    store = tmp_path / "revisions"
    write_preferences([_rec("p1", "revised", "original", "ai-revision")], store)
    pairs, rejects = read_pairs(store)
    assert rejects == [] and len(pairs) == 1
    assert (pairs[0].first, pairs[0].second) == ("revised", "original")
    assert pairs[0].input["source"] == "ai-revision" and pairs[0].input["p_chosen"] == 1.0

    rows = [
        {"prompt": "hi", "chosen": "hello", "rejected": "go away", "category": "x"},  # plain human
        {"id": "c1", "prompt": [{"role": "user", "content": "q"}], "responses": ["r1", "r2", "r3 "]},
        {"id": "c2", "prompt": "q2", "responses": ["same", " same", "other"]},  # one identical pair
        {"prompt": "hi", "chosen": "go away", "rejected": "hello"},  # same pair, swapped
        {"prompt": "x", "chosen": "a"},  # not a pair
        {"id": "c3", "prompt": "q3", "responses": ["only one"]},
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    pairs, rejects = read_pairs(f)
    got = [(p.first, p.second, p.input.get("indices")) for p in pairs]
    assert got == [("hello", "go away", None), ("r1", "r2", [0, 1]), ("r1", "r3 ", [0, 2]),
                   ("r2", "r3 ", [1, 2]), ("same", "other", [0, 2])]
    assert pairs[0].input["source"] == "human" and pairs[1].input["id"] == "c1"
    assert pairs[4].prompt == [{"role": "user", "content": "q2"}]
    codes = [(r.location, r.code) for r in rejects]
    assert codes[0] == ("mixed.jsonl:3[0,1]", "identical")
    assert codes[1] == ("mixed.jsonl:3", "duplicate")  # " same" vs "other" repeats "same" vs "other"
    assert codes[2] == ("mixed.jsonl:4", "duplicate")
    assert codes[3][0] == "mixed.jsonl:5" and codes[4] == ("mixed.jsonl:6", "invalid-candidates")
    assert codes[5] == ("mixed.jsonl:7", "unreadable")
    assert len(rejects) == 6

    prefs = human_preferences(pairs)
    assert prefs == {pairs[0].key: "hello"}  # only rows with a label


def test_human_prefs_file_reads_whole():
    pairs, rejects = read_pairs("pipelines/prompts/human_prefs.jsonl")
    assert len(pairs) == 52 and rejects == []
    assert len(human_preferences(pairs)) == 52


def test_length_balanced_accuracy_by_hand():
    """6 human-labeled pairs: in 4 the human's choice is the longer answer, in 2 the
    shorter. A labeler that always picks the longer answer scores 4/6 raw but 50% balanced;
    this one is right on 3 of the 4 'longer' pairs and 1 of the 2 'shorter' ones."""
    cases = [  # (human's choice, other, labeler's P(first = human's choice))
        ("a long good answer", "short", 0.9),
        ("another long answer", "brief", 0.7),
        ("a third longer one", "tiny", 0.6),
        ("the fourth long one", "nope", 0.2),    # wrong
        ("ok", "a long bad answer", 0.8),         # shorter chosen, right
        ("no", "another long bad one", 0.4),      # wrong
    ]
    labels = [label(h, o, [(p, 1 - p)], prompt=f"q{i}") for i, (h, o, p) in enumerate(cases)]
    recs = [to_record(l, "judge", RUN) for l in labels]
    human = {pair_key([{"role": "user", "content": f"q{i}"}], h, o): h for i, (h, o, _) in enumerate(cases)}
    h = build_report(recs, human).human_accuracy
    assert h.pairs == 6 and h.rate == pytest.approx(4 / 6) and h.longer_baseline == pytest.approx(4 / 6)
    assert (h.when_longer.pairs, h.when_longer.rate) == (4, 0.75)
    assert (h.when_shorter.pairs, h.when_shorter.rate) == (2, 0.5)
    assert h.length_balanced.rate == pytest.approx(0.625) and h.length_balanced.pairs == 6
    half = 1.959963984540054 * math.sqrt(0.75 * 0.25 / 4 + 0.5 * 0.5 / 2) / 2
    assert h.length_balanced.ci95 == pytest.approx((0.625 - half, min(1.0, 0.625 + half)))
    from cai.label.report import wilson
    assert h.ci95 == pytest.approx(wilson(4, 6))
    assert h.when_longer.ci95 == pytest.approx(wilson(3, 4))
    text = format_report(build_report(recs, human))
    assert "where it is longer   75.0%" in text and "(n=4)" in text
    assert "length-balanced      62.5%" in text
    # one stratum empty -> no balanced figure
    only_longer = build_report(recs[:4], {k: v for k, v in list(human.items())[:4]}).human_accuracy
    assert only_longer.when_shorter.pairs == 0 and only_longer.length_balanced is None
