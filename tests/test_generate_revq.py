"""Routing by scoring, the no-change verdict (ok:unchanged), the unresponsive-revision check,
an empty preferences store read by `datasets`, the registry's recommended settings and the
revision-quality report. A scripted backend answers and *scores* by rule, so each expected
route, probability and status is known in advance."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cai.backends import Backend, Generation
from cai.constitution import load_constitution
from cai.data.store import read_preferences
from cai.generate import relevance, routing, verdict
from cai.generate.config import GenerateConfig, apply_recommended, fingerprint, fingerprint_fields
from cai.generate.progress import format_summary
from cai.generate.quality import meta_commentary
from cai.generate.report import build_report, format_report
from cai.generate.run import run_generate
from cai.models import DEFAULT_MODEL, REGISTRY, models_dir, recommended_settings

HARMLESS = load_constitution("harmless")
# Which request words make which tag words likely (the forced preference).
TOPICS = {"meth": "drugs", "gun": "weapons", "hack": "cybercrime"}


def _case(text: str) -> str:
    m = re.search(r"\[case:([\w-]+)\]", text)
    return m.group(1) if m else "ok"


class ScoringBackend(Backend):
    """Generates by case marker and scores continuations by rule:
      routing   a tag name gains 4 nats when the request holds a word of TOPICS for it;
                " general" is likely everywhere (raw log-prob -0.5, gain 0);
      verdict   the "keep" option is likelier when the case is `fine` or the answer was
                already revised; else "change";
      relevance each word of a revision costs 1 nat after a prompt holding it (words of 5+
                letters), else 3 nats."""

    name, model = "scoring", "scoring-model"

    def __init__(self) -> None:
        self.scored: list[int] = []

    def render_chat(self, conversation, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in conversation) + \
            ("<assistant>" if add_generation_prompt else "")

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            own = next(m["content"] for m in conv if m["content"].startswith("[case:"))
            last, case, topic = conv[-1]["content"], _case(own), own.split("]")[-1].strip()
            gens = []
            for i in range(sampling.n):
                if any(last == p.critique_request for p in HARMLESS.principles):
                    text = "It could be safer."
                elif any(last == p.revision_request for p in HARMLESS.principles):
                    kind = case if case not in ("second", "fine-after") else (
                        "offtopic" if case == "second" and i == 0 else "ok")
                    text = {"offtopic": "I cannot help with illegal activity of any kind.",
                            "meta": "The response should not have answered that question.",
                            }.get(kind, f"(revised) A careful answer about {topic}")
                    if conv[-4]["content"].startswith("(revised)"):
                        text += ", revised again"
                else:
                    text = f"Here is an answer about {topic}"
                gens.append(Generation(text=text, token_ids=[1] * len(text.split()),
                                       finish_reason="stop"))
            out.append(gens)
        return out

    def continuation_logprobs(self, prompts, continuations):
        self.scored.append(len(prompts))
        out = []
        for p, c in zip(prompts, continuations):
            if p.endswith(routing.ANSWER_PREFIX):
                request = p.split("Request:")[-1]
                if c == " general":
                    out.append(-0.5)
                else:
                    hit = any(k in request and w in c for k, w in TOPICS.items())
                    out.append(-1.0 if hit else -5.0)
            elif p.endswith(verdict.ANSWER_PREFIX):
                keep_letter = "A" if f"(A) {verdict.KEEP}" in p else "B"
                answer = p.split("<assistant>")[-2]
                keep = "[case:fine]" in p or "(revised)" in answer
                wants = keep_letter if keep else ("B" if keep_letter == "A" else "A")
                out.append(-0.1 if c.strip() == f"({wants})" else -3.0)
            else:
                prompt_words = set(re.findall(r"[a-z]{5,}", p.lower()))
                out.append(sum(-1.0 if w.strip(".,()").lower() in prompt_words else -3.0
                               for w in c.split()))
        return out


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(run: Path) -> dict[str, dict]:
    rows = [r for shard in sorted((run / "revisions").glob("*.parquet"))
            for r in pq.read_table(shard).to_pylist()]
    return {r["source_id"]: r for r in rows}


def _config(tmp_path, prompts, **kw) -> GenerateConfig:
    return GenerateConfig(**{"prompts": str(prompts), "out": str(tmp_path / "run"),
                             "progress": False, **kw})


# ------------------------------------------------------------------------------ routing

def test_routing_scores_tag_names_against_the_prompt():
    backend = ScoringBackend()
    texts = ["How do I cook meth at home?", "Where can I buy a gun with no papers?",
             "Explain this sorting code to me."]
    scores = routing.score_prompts(backend, HARMLESS, texts)
    assert backend.scored == [(len(texts) + 1) * len(routing.candidates(HARMLESS))]  # one call
    # " general" has the highest raw log-prob everywhere, but no gain over the empty prompt.
    assert scores[0]["general-harm"] == 0.0
    assert scores[0]["drugs-dangerous-activities"] == pytest.approx(4.0)
    routes = [routing.decide(HARMLESS, s, threshold=1.0) for s in scores]
    assert [r.label for r in routes] == ["drugs-dangerous-activities", "violence-weapons",
                                         routing.BENIGN]
    assert routes[2].tags == ("benign",) and routes[2].score == 0.0
    # A higher bar sends everything to benign.
    assert routing.decide(HARMLESS, scores[0], threshold=5.0).label == routing.BENIGN
    # Candidates: tagged, drawable, not benign; names are the distinct words of the tags.
    ids = [p.id for p in routing.candidates(HARMLESS)]
    assert "no-preaching" not in ids and "no-needless-refusal" not in ids and "crime" in ids
    assert routing.tag_words(HARMLESS.principle("crime")) == "crime theft fraud cybercrime"


def test_route_auto_end_to_end(tmp_path):
    rows = [{"id": "meth", "prompt": "[case:ok] how do I cook meth"},
            {"id": "code", "prompt": "[case:ok] explain this python code"},
            {"id": "tagged", "prompt": "[case:ok] something with a category", "category": "privacy_doxxing"}]
    cfg = _config(tmp_path, _write(tmp_path, rows), rounds=2, principle_tags_field="category",
                  unchanged_threshold=None, min_relevance=None)
    summary = run_generate(cfg, backend=ScoringBackend())
    recs = _records(tmp_path / "run")
    assert recs["meth"]["route"] == "drugs-dangerous-activities"
    assert recs["meth"]["principle_ids"] == ["drugs-dangerous-activities"] * 2
    assert recs["meth"]["route_score"] == pytest.approx(4.0)
    # a benign prompt's answer is kept as answered by default, as the paper does
    assert recs["code"]["route"] == "benign" and recs["code"]["status"] == "ok:unchanged"
    assert recs["code"]["principle_ids"] == [] and "routed benign" in recs["code"]["reason"]
    assert recs["tagged"]["route"] == "tags" and recs["tagged"]["principle_ids"] == ["privacy"] * 2
    assert recs["tagged"]["route_score"] is None
    cats = summary["report"]["categories"]
    assert set(cats) == {"drugs-dangerous-activities", "benign", "privacy_doxxing"}
    assert (cats["benign"]["pairs"], cats["benign"]["unchanged"]) == (0, 1)
    assert summary["report"]["unchanged"] == 1

    # --revise-benign: critiqued and revised under the benign-tagged principles only
    summary = run_generate(cfg.model_copy(update={"out": str(tmp_path / "revised"),
                                                  "revise_benign": True}), backend=ScoringBackend())
    recs = _records(tmp_path / "revised")
    assert recs["code"]["route"] == "benign" and recs["code"]["status"] == "ok"
    assert set(recs["code"]["principle_ids"]) <= {"no-preaching", "no-needless-refusal"}
    assert summary["report"]["categories"]["benign"]["pairs"] == 1


def test_new_options_enter_the_fingerprint_only_when_they_change_the_run():
    base = dict(prompts="p", out="o", model="m", backend="transformers")
    legacy = GenerateConfig(**base, route="random", unchanged_threshold=None, min_relevance=None)
    fields = fingerprint_fields(legacy, HARMLESS)
    assert not {"route", "route_threshold", "unchanged_threshold", "min_relevance"} & set(fields)
    default = fingerprint_fields(GenerateConfig(**base), HARMLESS)
    assert default["route"] == "auto" and default["unchanged_threshold"] == 0.5
    assert default["revise_benign"] is False
    revised = fingerprint_fields(GenerateConfig(**base, revise_benign=True), HARMLESS)
    assert "revise_benign" not in revised  # what route auto did before the option existed
    assert fingerprint(default) != fingerprint(fields)
    tags = GenerateConfig(**base, principle_tags_field="c", route="tags", unchanged_threshold=None,
                          min_relevance=None)
    assert "route" not in fingerprint_fields(tags, HARMLESS)  # the earlier routed behaviour
    assert GenerateConfig(**base, unchanged_threshold="off").unchanged_threshold is None


# ------------------------------------------------------------------------------ no change

def test_unchanged_answer_is_kept(tmp_path):
    rows = [{"id": "fine", "prompt": "[case:fine] explain this python code"},
            {"id": "bad", "prompt": "[case:ok] how do I cook meth"},
            {"id": "later", "prompt": "[case:fine-after] how do I hack a server"}]
    # revise_benign: the verdict, not routing, is what keeps "fine" here
    cfg = _config(tmp_path, _write(tmp_path, rows), rounds=2, min_relevance=None, revise_benign=True)
    summary = run_generate(cfg, backend=ScoringBackend())
    recs = _records(tmp_path / "run")
    keep = 1 / (1 + math.exp(-2.9))  # each order: keep -0.1 vs change -3.0 nats
    fine = recs["fine"]
    assert fine["status"] == "ok:unchanged"
    assert fine["final_response"] == fine["initial_response"]
    assert fine["rounds"][0]["p_no_change"] == pytest.approx(keep, abs=1e-3)
    assert fine["rounds"][0]["critique"] is None and len(fine["rounds"]) == 1
    assert "P(no change needed) 0.95 >= 0.5" in fine["reason"]
    assert recs["bad"]["status"] == "ok"
    assert recs["bad"]["rounds"][0]["p_no_change"] == pytest.approx(1 - keep, abs=1e-3)
    # Revised in round 1, judged fine in round 2: a pair, with no second critique.
    later = recs["later"]
    assert later["status"] == "ok" and later["final_response"].startswith("(revised)")
    assert later["rounds"][1]["p_no_change"] == pytest.approx(keep, abs=1e-3)
    assert later["rounds"][1]["critique"] is None
    # SFT rows for both kinds of usable record; pairs only for revised ones.
    assert summary["sft"] == 3 and summary["preferences"] == 2
    prefs = {r.metadata["source_id"] for r in read_preferences(tmp_path / "run" / "preferences")}
    assert prefs == {"bad", "later"}
    assert summary["report"]["unchanged"] == 1 and summary["report"]["pairs"] == 2

    # The threshold is the user's: at 0.99 nothing is good enough to keep.
    strict = cfg.model_copy(update={"unchanged_threshold": 0.99, "out": str(tmp_path / "strict")})
    run_generate(strict, backend=ScoringBackend())
    assert _records(tmp_path / "strict")["fine"]["status"] == "ok"


def test_verdict_probability_by_hand():
    # change shown first: (A) -2, (B) -1 -> p(A) = s(-1); keep first: (A) -0.5, (B) -1.5 -> s(1)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p = verdict.p_no_change((-2.0, -1.0), (-0.5, -1.5))
    assert p == pytest.approx(0.5 * (s(1.0) + 1 - s(-1.0)))
    assert verdict.p_no_change((-1.0, -1.0), (-1.0, -1.0)) == 0.5
    # A model that always says "(A)" gains nothing from it: the orders cancel.
    assert verdict.p_no_change((-0.1, -4.0), (-0.1, -4.0)) == pytest.approx(0.5)


# ------------------------------------------------------------------------------ unresponsive

@pytest.mark.parametrize("text", [
    "The response should not have explained how to do that.",
    "The original code was designed to assist with illegal activity, so I removed it.",
    "In my revised response I no longer mention the chemicals.",
    "I rewrote the response to be kinder.",
    "The user is asking for something harmful, so the assistant declines.",
])
def test_meta_commentary_is_found(text):
    assert meta_commentary(text)


@pytest.mark.parametrize("text", [
    "I can't help with that, but a locksmith can let you back into your own house.",
    "A list is mutable and a tuple is not, so a tuple can be a dictionary key.",
    "Server response time depends on the network and on the load.",
    "Check the user manual of your router for the reset button.",
    "Ubiquitous means found everywhere: smartphones are ubiquitous today.",
])
def test_answers_are_not_meta_commentary(text):
    assert meta_commentary(text) is None


def test_shuffled_prompt_is_another_one():
    a, b, c = ([{"role": "user", "content": x}] for x in "abc")
    prompts = relevance.distinct_prompts([a, b, a, c])
    assert prompts == [a, b, c]
    assert [relevance.shuffled(prompts, p) for p in (a, b, c)] == [b, c, a]
    assert relevance.shuffled([a], a) == relevance.NEUTRAL_PROMPT


def test_unresponsive_revisions_are_flagged(tmp_path):
    rows = [{"id": "offtopic", "prompt": "[case:offtopic] explain python lists"},
            {"id": "meta", "prompt": "[case:meta] explain python tuples"},
            {"id": "second", "prompt": "[case:second] explain python dictionaries"},
            {"id": "good", "prompt": "[case:ok] explain python generators"}]
    cfg = _config(tmp_path, _write(tmp_path, rows), unchanged_threshold=None,
                  revision_candidates=2, revise_benign=True)
    backend = ScoringBackend()
    run_generate(cfg, backend=backend)
    # Only the candidate that would be kept is scored (2 prefixes each: own prompt, other):
    # first every chain's first candidate (offtopic, second, good; meta failed on its text),
    # then the next candidate of the two whose first failed; good's second is never scored.
    assert backend.scored[-2:] == [6, 4]
    recs = _records(tmp_path / "run")
    assert recs["offtopic"]["status"] == "degenerate:unresponsive"
    # no shared word with either prompt: the same log-prob after both, PMI 0
    assert recs["offtopic"]["reason"].startswith("round 1 revision: PMI with its prompt 0.000")
    assert recs["offtopic"]["rounds"][0]["revision_relevance"] == 0.0
    assert recs["meta"]["status"] == "degenerate:unresponsive"
    assert "meta-commentary: The response" in recs["meta"]["reason"]
    # The first candidate does not answer; the second does and is kept.
    assert recs["second"]["status"] == "ok"
    assert recs["second"]["rounds"][0]["revision_candidate"] == 1
    assert recs["second"]["rounds"][0]["rejected_candidates"] == ["unresponsive"]
    # "(revised) A careful answer about explain python generators": "explain" and "python"
    # are in every prompt; "generators" only in its own (1 nat instead of 3): 2 nats over
    # 8 words.
    assert recs["good"]["status"] == "ok"
    assert recs["good"]["rounds"][0]["revision_relevance"] == pytest.approx(2 / 8, abs=1e-3)


# ------------------------------------------------------------------------------ outputs

def test_empty_preferences_load_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"id": "m", "prompt": "[case:meta] explain python tuples"}]
    cfg = _config(tmp_path, _write(tmp_path, rows), unchanged_threshold=None, revise_benign=True)
    summary = run_generate(cfg, backend=ScoringBackend())
    assert summary["preferences"] == 0 and summary["sft"] == 0
    for part in ("preferences", "sft"):
        files = sorted(str(p) for p in (tmp_path / "run" / part).glob("*.parquet"))
        assert pq.read_table(files[0]).num_rows == 0
        # No empty row group: `datasets` would take a batch size of 0 from it.
        assert pq.ParquetFile(files[0]).metadata.num_row_groups == 0
        ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        assert list(ds) == []
        assert "prompt" in ds.features or "messages" in ds.features
    assert list(read_preferences(tmp_path / "run" / "preferences")) == []


# ------------------------------------------------------------------------------ settings

def test_registry_recommendations_fill_unset_fields(tmp_path):
    rec = recommended_settings(None)
    assert rec == REGISTRY[DEFAULT_MODEL].recommended and rec["few_shot"] is False
    assert recommended_settings(str(models_dir() / DEFAULT_MODEL)) == rec  # a pulled directory
    assert recommended_settings("some/other-model") == {}
    cfg = GenerateConfig(prompts="p", out="o", few_shot=True)
    filled, applied = apply_recommended(cfg, rec)
    assert filled.few_shot is True and "few_shot" not in applied  # the user's value wins
    assert filled.revision_candidates == rec["revision_candidates"] == applied["revision_candidates"]

    rows = [{"id": "a", "prompt": "[case:ok] explain python lists"}]
    backend = ScoringBackend()
    backend.model = str(models_dir() / DEFAULT_MODEL)  # as a backend built from the registry
    summary = run_generate(_config(tmp_path, _write(tmp_path, rows), max_tokens=64), backend=backend)
    assert summary["recommended"]["model"] == DEFAULT_MODEL
    assert "max_tokens" not in summary["recommended"]["applied"]
    assert summary["recommended"]["applied"]["revision_candidates"] == rec["revision_candidates"]
    text = format_summary(summary)
    assert f"settings  recommended for {DEFAULT_MODEL}" in text and "few_shot False" in text


def test_report_with_labels():
    recs = [{"id": f"r{i}", "status": s, "route": r, "metadata": "{}"}
            for i, (s, r) in enumerate([("ok", "crime"), ("ok", "crime"), ("ok", "benign"),
                                        ("ok:unchanged", "benign"), ("degenerate:truncated", "crime")])]
    report = build_report(recs, labels={"r0": "better", "r1": "worse", "r2": "same", "r3": "worse"})
    assert report["categories"]["crime"] == {"records": 3, "pairs": 2, "unchanged": 0, "degenerate": 1}
    assert report["categories"]["benign"] == {"records": 2, "pairs": 1, "unchanged": 1, "degenerate": 0}
    j = report["judged"]  # r3 is not a pair, so its label does not count
    assert (j["labeled"], j["better"], j["same"], j["worse"], j["unlabeled"]) == (3, 1, 1, 1, 0)
    assert j["better_share"] == pytest.approx(0.333)
    assert "better 1 (33%)" in format_report(report)


def test_cli_report_reads_a_finished_run(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    rows = [{"id": "bad", "prompt": "[case:ok] how do I cook meth"},
            {"id": "fine", "prompt": "[case:fine] explain this python code"}]
    run_generate(_config(tmp_path, _write(tmp_path, rows), min_relevance=None),
                 backend=ScoringBackend())
    recs = _records(tmp_path / "run")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": recs["bad"]["id"], "judgement": "better"}) + "\n")
    res = CliRunner().invoke(app, ["generate", "--report", "-o", str(tmp_path / "run"),
                                   "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    assert "ok 1, ok:unchanged 1" in res.output
    assert "judged    1 pairs: better 1 (100%)" in res.output
    bad = CliRunner().invoke(app, ["generate", "--report", "-o", str(tmp_path / "nothing")])
    assert bad.exit_code != 0 and "not a `cai generate` run directory" in bad.output


def test_hand_labeled_revisions_match_the_pattern_check():
    """tests/data/revision_labels.jsonl: real revisions of the embedded model, labeled by hand
    (bench/unresponsive_check.py gives the check's precision and recall on them). The
    meta-commentary half of the check must still find what it found when they were scored."""
    path = Path(__file__).parent / "data" / "revision_labels.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert bool(meta_commentary(r["revision"])) == bool(r["meta"]), r["source_id"]
        assert isinstance(r["unresponsive"], bool) and isinstance(r["pmi"], float)
