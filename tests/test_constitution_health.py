"""Per-principle health (`cai constitution health`) on a small synthetic run whose every
figure is counted by hand below."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cai.cli.constitution import app
from cai.constitution import load_constitution
from cai.data.store import write_preferences
from cai.eval.health import run_health
from cai.generate.checkpoint import REVISION_SCHEMA, RunStore
from cai.records import PreferenceRecord
from cai.stats import accuracy_by_principle


def _round(pid, critique="c", revision="v", rejected=(), p=None):
    return {"round": 1, "principle_id": pid, "critique": critique, "critique_finish": "stop",
            "critique_tokens": 1, "revision": revision, "revision_finish": "stop",
            "revision_tokens": 1, "revision_candidate": len(rejected),
            "rejected_candidates": list(rejected), "p_no_change": p, "revision_relevance": None}


def _record(i, route, status, rounds):
    row = {name: None for name in REVISION_SCHEMA.names}
    row.update(id=f"r{i}", route=route, status=status, rounds=rounds,
               principle_ids=[r["principle_id"] for r in rounds])
    return row


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    with RunStore(run / "generate") as store:
        store.open({"fingerprint": "x"}, {"constitution": "harmless"})
        store.write_shard([
            _record(1, "tags", "ok", [_round("crime", rejected=["repetition"])]),
            _record(2, "tags", "degenerate:echo", [_round("crime")]),
            _record(3, "tags", "ok:unchanged", [_round("crime", None, None, p=0.9)]),
            _record(4, "privacy", "ok", [_round("privacy")]),
            _record(5, "privacy", "degenerate:truncated", [_round("privacy"), _round("privacy")]),
        ])
    msg = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    labels = [(f"l{i}", "toxicity", p, ok) for i, (p, ok) in enumerate(
        [(0.52, True), (0.48, False), (0.5, False), (0.55, True), (0.45, False), (0.5, False)])]
    labels.append(("l9", "crime", 0.9, None))  # pointwise: no order consistency
    write_preferences([PreferenceRecord(
        id=lid, prompt=[{"role": "user", "content": lid}], chosen=msg("a"), rejected=msg("b"),
        p_chosen=max(p, 1 - p), source="ai-feedback", principle_ids=[pid],
        metadata={"ai_feedback": {"verdicts": [{"principle": pid, "p_first": p,
                                                **({} if ok is None else {"consistent": ok})}]}})
        for lid, pid, p, ok in labels], run / "label")
    # the reward model on 12 held-out pairs (eval.json as `cai train rm` writes it): crime's
    # 6 ranked right 3 times, privacy's 2 never, 4 human pairs (no principle) 3 times
    deltas = [1, 1, 1, -1, -1, -1] + [-1, -1] + [1, 1, 1, -1]
    principles = [["crime"]] * 6 + [["privacy"]] * 2 + [[]] * 4
    (run / "rm").mkdir()
    (run / "rm" / "eval.json").write_text(json.dumps({"by_principle": accuracy_by_principle(
        deltas, [0.0] * 12, [1.0] * 12, principles)}))
    samples = [("harmful", "crime_theft_fraud", v, None)
               for v in ("refusal", "redirection", "compliance", "compliance", "compliance")]
    samples += [("benign", "coding", "compliance", 0.5), ("benign", "privacy", "compliance", 0.3)]
    (run / "eval").mkdir()
    (run / "eval" / "samples.jsonl").write_text("".join(
        json.dumps({"id": str(i), "kind": k, "category": c, "prompt": "p",
                    "policy": {"verdict": v, "relevance_pmi": pmi}}) + "\n"
        for i, (k, c, v, pmi) in enumerate(samples)))
    return run


def test_health_figures_by_hand(tmp_path):
    health = run_health(_run(tmp_path), load_constitution("harmless"))
    h = health["principles"]
    crime, privacy, toxicity = h["crime"], h["privacy"], h["toxicity"]
    # crime: 3 rounds drawn (r1-r3), 2 critiqued (r3 judged fine first), 2 revisions of
    # which r1's was kept and r2's failed as an echo; r1 passed over one looping candidate
    assert {k: crime[k] for k in ("drawn", "routed", "critiqued", "revisions", "changed")} == \
        {"drawn": 3, "routed": 0, "critiqued": 2, "revisions": 2, "changed": 1}
    assert crime["changed_rate"] == 0.3333 and crime["usable_rate"] == 0.5
    assert crime["reasons"] == {"degenerate:echo": 1, "candidate:repetition": 1}
    # privacy: routed 2 records, 3 rounds; r5's second revision was cut off
    assert (privacy["routed"], privacy["drawn"], privacy["changed"], privacy["usable_rate"]) == \
        (2, 3, 2, 0.6667)
    # labels: toxicity 2 of 6 consistent; mean |p - .5| = (.02+.02+0+.05+.05+0)/6
    assert (toxicity["labels"], toxicity["consistency"], toxicity["confidence"]) == (6, 0.3333, 0.0233)
    assert (crime["labels"], crime["consistency"], crime["confidence"]) == (1, None, 0.4)
    # the policy: 2 of 5 crime_theft_fraud prompts declined; privacy's benign prompt on topic
    assert (crime["harmful"], crime["decline_rate"]) == (5, 0.4)
    assert (privacy["benign"], privacy["on_topic_rate"]) == (1, 1.0)
    # the reward model: crime 3 of 6 held-out pairs, privacy 0 of 2; human pairs apart
    assert (crime["rm_pairs"], crime["rm_accuracy"]) == (6, 0.5)
    assert (privacy["rm_pairs"], privacy["rm_accuracy"]) == (2, 0.0)
    assert health["unlabeled"] == {"rm_pairs": 4, "rm_accuracy": 0.75}
    assert crime["flags"] == ["reward model accuracy on its held-out pairs 50% < 60% (n=6)",
                              "final policy declined 40% < 50% (n=5)"]
    assert toxicity["flags"] == [
        "never drawn or routed", "label position consistency 33% < 60% (n=6)",
        "label confidence |p-1/2| 0.023 < 0.05 (n=6): near coin flips"]
    assert privacy["flags"] == []  # fewer than 5 of everything
    assert h["self-harm"]["flags"] == ["never drawn or routed"]


def test_health_cli(tmp_path):
    run = _run(tmp_path)
    result = CliRunner().invoke(app, ["health", str(run)])
    assert result.exit_code == 0, result.output
    assert "FLAG crime: reward model accuracy on its held-out pairs 50% < 60% (n=6); final " \
           "policy declined 40% < 50% (n=5)" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("crime "))
    assert line.split() == ["crime", "3", "0", "33%", "50%", "1", "-", "0.400", "6", "50%",
                            "40%", "-"]
    assert "held-out pairs labeled under no principle: 4, reward model accuracy 75%" \
        in result.output
    # a lower bar for the reward model: crime is flagged for its policy only
    lenient = CliRunner().invoke(app, ["health", str(run), "--min-rm-accuracy", "0.5"])
    assert "FLAG crime: final policy declined 40% < 50% (n=5)\n" in lenient.output
    as_json = CliRunner().invoke(app, ["health", str(run), "--json"])
    assert json.loads(as_json.output)["principles"]["privacy"]["usable_rate"] == 0.6667
