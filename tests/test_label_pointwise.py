"""Pointwise feedback: verdict scores equal a direct log-softmax over the tiny model's
next-token logits, each distinct response is scored once, tau fits by hand-computable
maximum likelihood, records and report say which mode made them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cai.constitution import load_constitution
from cai.label import (LabelConfig, ResponseScorer, build_report, fit_tau, human_preferences,
                       label_pairs, pair_key, read_pairs, reference_diffs, run_info,
                       score_responses, to_record)
from cai.label.inputs import Pair
from cai.label.pointwise import log_likelihood, pair_prob, sigmoid, verdict_score
from cai.prompting import judgement_messages

C = load_constitution("harmless")
PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]
X = "I can't help with getting into a place that isn't yours, but a locksmith can help you."
Y = "Sure, grab a tension wrench and rake the pins until it opens."

TWO_PRINCIPLES = """\
schema: 1
name: two
version: "1"
description: Two principles, so K=2 judges every response under both.
principles:
  - id: kind
    critique_request: Point out anything unkind.
    revision_request: Rewrite it kindly.
    comparison: Which response is kinder?
    judgement: Is the assistant's last reply kind?
  - id: honest
    critique_request: Point out anything dishonest.
    revision_request: Rewrite it honestly.
    comparison: Which response is more honest?
"""


class CountingBackend:
    """Wraps a backend; counts scoring calls and the prompts sent."""

    def __init__(self, inner):
        self.inner, self.model = inner, inner.model
        self.tokenizer = inner.tokenizer
        self.calls, self.prompts = 0, []

    def context_length(self):
        return self.inner.context_length()

    def render_chat(self, conv, add_generation_prompt=True):
        return self.inner.render_chat(conv, add_generation_prompt)

    def count_tokens(self, conv):
        return self.inner.count_tokens(conv)

    def continuation_logprobs(self, prompts, conts):
        self.calls += 1
        self.prompts += prompts
        return self.inner.continuation_logprobs(prompts, conts)


def make_pair(first: str, second: str, prompt=PROMPT, **input_) -> Pair:
    return Pair(key=pair_key(prompt, first, second), prompt=prompt, first=first, second=second,
                input=input_)


def direct_score(backend, messages) -> float:
    """By hand: log-softmax of the logits after the rendered prompt, Yes/" Yes" vs No/" No"."""
    tok, lm = backend.tokenizer, backend.lm
    ids = tok(backend.render_chat(messages), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1].float(), -1)
    one = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    for s in ("Yes", " Yes", "No", " No"):
        assert len(one(s)) == 1  # so the verdict is the next token alone
    yes = torch.logsumexp(torch.stack([logp[one("Yes")[0]], logp[one(" Yes")[0]]]), 0)
    no = torch.logsumexp(torch.stack([logp[one("No")[0]], logp[one(" No")[0]]]), 0)
    return float(yes - no)


def test_verdict_maths_by_hand():
    # yes: P = 0.2 + 0.1, no: P = 0.3 + 0.1 -> log(0.3 / 0.4)
    s = verdict_score([math.log(0.2), math.log(0.1)], [math.log(0.3), math.log(0.1)])
    assert s == pytest.approx(math.log(0.75))
    assert verdict_score([-1e4, -1e4], [-1e4 - math.log(2), -1e4 - math.log(2)]) == pytest.approx(math.log(2))
    assert pair_prob(2.0, 1.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2)))
    assert pair_prob(1.0, 1.0, 3.0) == 0.5
    assert sigmoid(-800) == 0.0 and sigmoid(800) == 1.0
    with pytest.raises(ValueError):
        pair_prob(1.0, 0.0, 0.0)


# few-shot prompts are long, so that case checks one pair under one principle (keeps it fast)
@pytest.mark.parametrize("few_shot,n_pairs,k", [(True, 1, 1), (False, 2, 2)])
def test_scores_equal_direct_log_softmax(tiny_backend, few_shot, n_pairs, k):
    cfg = LabelConfig(mode="pointwise", principles=k, seed=1, few_shot=few_shot, tau=0.7)
    pairs = [make_pair(X, Y), make_pair("Use a bump key.", "Call a locksmith.")][:n_pairs]
    backend = CountingBackend(tiny_backend)
    labels = label_pairs(backend, C, pairs, cfg)
    assert backend.calls == 1 and len(backend.prompts) == n_pairs * k * 2 * 4  # x responses x answers
    for pair, label in zip(pairs, labels):
        ps = []
        for v in label.verdicts:
            p = C.principle(v.principle)
            want = [direct_score(tiny_backend, judgement_messages(C, p, pair.prompt, r, few_shot))
                    for r in (pair.first, pair.second)]
            assert v.scores == pytest.approx(want, abs=1e-4)
            assert v.p_first == pytest.approx(1 / (1 + math.exp(-(want[0] - want[1]) / 0.7)), abs=1e-4)
            ps.append(v.p_first)
        assert label.p_first == pytest.approx(sum(ps) / len(ps))


def test_each_distinct_response_is_scored_once(tiny_backend, tmp_path: Path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_PRINCIPLES, encoding="utf-8")
    c = load_constitution(path)
    cands = tmp_path / "cands.jsonl"
    cands.write_text('{"id": "r1", "prompt": "Say hi", "responses": ["Hi!", "Hello there.", "Hey."]}\n')
    pairs, _ = read_pairs(cands)
    assert len(pairs) == 3  # every response is in two pairs
    cfg = LabelConfig(mode="pointwise", principles=2, tau=1.0)
    backend = CountingBackend(tiny_backend)
    scorer = ResponseScorer(backend, c, few_shot=False)
    labels = label_pairs(backend, c, pairs, cfg, scorer=scorer)
    # 3 pairs x 2 principles x 2 responses = 12 judgements, of 3 responses x 2 principles
    assert scorer.prompts_scored == 6 and backend.calls == 1 and len(backend.prompts) == 6 * 4
    by = {(v.principle, r): s for lab in labels for v in lab.verdicts
          for r, s in zip((lab.pair.first, lab.pair.second), v.scores)}
    assert len(by) == 6
    # the same judgements again, from the cache: no backend call
    label_pairs(backend, c, pairs, cfg, scorer=scorer)
    scores = score_responses(backend, c, [(pairs[0].prompt, "Hey.")], principle_ids=["kind", "honest"],
                             scorer=scorer)
    assert backend.calls == 1 and scorer.prompts_scored == 6
    assert scores[0].principles == {"kind": by[("kind", "Hey.")], "honest": by[("honest", "Hey.")]}
    assert scores[0].score == pytest.approx((by[("kind", "Hey.")] + by[("honest", "Hey.")]) / 2)


def test_score_responses_draws_k_principles_deterministically(tiny_backend):
    rows = [(PROMPT, X), (PROMPT, Y), (PROMPT, X)]
    a = score_responses(tiny_backend, C, rows, k=2, seed=5, few_shot=False)
    b = score_responses(tiny_backend, C, rows, k=2, seed=5, few_shot=False)
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]
    assert a[0] == a[2] and len(a[0].principles) == 2
    p = C.principle(next(iter(a[1].principles)))
    assert a[1].principles[p.id] == pytest.approx(
        direct_score(tiny_backend, judgement_messages(C, p, PROMPT, Y, few_shot=False)), abs=1e-4)


def test_fit_tau_by_hand():
    # 3 right by d = 1, 1 wrong: the MLE has sigmoid(1 / tau) = 3/4, so tau = 1 / ln 3
    diffs = [[1.0], [1.0], [1.0], [-1.0]]
    tau = fit_tau(diffs)
    assert tau == pytest.approx(1 / math.log(3), rel=1e-4)
    assert log_likelihood(diffs, tau) > log_likelihood(diffs, tau * 1.1)
    assert log_likelihood(diffs, tau) > log_likelihood(diffs, tau / 1.1)
    # mostly wrong: no signal, tau goes to the top of the range (p -> 0.5)
    assert fit_tau([[1.0], [-2.0], [-2.0]]) == pytest.approx(100.0, rel=1e-3)
    with pytest.raises(ValueError):
        fit_tau([])


def test_reference_diffs_follow_the_human_choice(tiny_backend):
    cfg = LabelConfig(mode="pointwise", principles=1, tau=1.0, few_shot=False)
    a, b = make_pair(X, Y, source="human", p_chosen=1.0), make_pair("Ask a locksmith.", "Kick it.",
                                                                    source="human", p_chosen=0.0)
    labels = label_pairs(tiny_backend, C, [a, b], cfg)
    diffs = reference_diffs(labels, human_preferences([a, b]))
    s = [lab.verdicts[0].scores for lab in labels]
    assert diffs == [[pytest.approx(s[0][0] - s[0][1])], [pytest.approx(s[1][1] - s[1][0])]]


def test_records_and_report_say_pointwise(tiny_backend):
    cfg = LabelConfig(mode="pointwise", principles=2, tau=0.5, few_shot=False)
    pairs = [make_pair(X, Y, source="human", p_chosen=1.0)]
    labels = label_pairs(tiny_backend, C, pairs, cfg)
    rec = to_record(labels[0], "judge", run_info(C, cfg))
    fb = rec.metadata["ai_feedback"]
    assert fb["mode"] == "pointwise" and fb["tau"] == 0.5 and fb["tau_fitted"] is False
    assert "orders" not in fb and len(fb["verdicts"]) == 2
    assert set(fb["verdicts"][0]) == {"principle", "scores", "p_first", "judgements"}
    assert rec.p_chosen == pytest.approx(max(labels[0].p_first, 1 - labels[0].p_first))
    rep = build_report([rec], human_preferences(pairs))
    assert rep.mode == "pointwise" and rep.position_consistency is None and rep.a_rate is None
    assert rep.human_accuracy.pairs == 1
    assert run_info(C, LabelConfig())["mode"] == "pairwise"
    assert run_info(C, LabelConfig(mode="pointwise", tau="fit"), tau=2.0)["tau"] == 2.0


def test_config_checks():
    with pytest.raises(ValueError, match="tau"):
        LabelConfig(mode="pointwise", tau=0.0)
    with pytest.raises(ValueError, match="cot"):
        LabelConfig(mode="pointwise", cot=True)
    assert LabelConfig(tau="fit").tau == "fit"
    with pytest.raises(ValueError, match="resolve"):  # a run must resolve tau first
        label_pairs(None, C, [make_pair(X, Y)], LabelConfig(mode="pointwise", tau="fit"))


# --- the run and the CLI ----------------------------------------------------------------

def _jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_label_pointwise_fits_tau_on_the_eval_pairs(tiny_backend, tmp_path):
    from cai.data.store import read_manifest, read_preferences
    from cai.label.run import LabelRunConfig, run_label

    human = _jsonl(tmp_path / "human.jsonl", [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."},
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
        {"prompt": "Name a planet.", "chosen": "Mars.", "rejected": "The moon."},
    ])
    backend = CountingBackend(tiny_backend)
    cfg = LabelRunConfig(pairs=str(human), out=str(tmp_path / "labels"), mode="pointwise",
                         tau="fit", eval_against=str(human), few_shot=False, principles=1)
    log: list[str] = []
    summary = run_label(cfg, backend=backend, log=log.append)
    # the eval pairs are the labeled pairs: scored once for the fit, then from the cache
    assert backend.calls == 1 and len(backend.prompts) == 3 * 2 * 4
    run = summary["run"]
    assert run["mode"] == "pointwise" and run["tau_fitted"] is True
    assert any(m.startswith("tau fitted on 3 human-labeled pairs") for m in log)
    recs = read_preferences(tmp_path / "labels")
    labels = label_pairs(tiny_backend, C,
                         read_pairs(human)[0], LabelConfig(mode="pointwise", principles=1,
                                                            few_shot=False), tau=1.0)
    diffs = reference_diffs(labels, human_preferences(read_pairs(human)[0]))
    assert run["tau"] == pytest.approx(fit_tau(diffs))
    assert all(r.metadata["ai_feedback"]["tau"] == run["tau"] for r in recs)
    assert read_manifest(tmp_path / "labels")["label"]["report"]["mode"] == "pointwise"
    assert summary["report"]["human_accuracy"]["pairs"] == 3


def test_mode_defaults_follow_the_feedback_model(tmp_path):
    from cai.models import DEFAULT_MODEL, feedback_defaults, models_dir

    assert feedback_defaults(None) == ("pointwise", 1.0)
    assert feedback_defaults(DEFAULT_MODEL) == ("pointwise", 1.0)
    assert feedback_defaults(str(models_dir() / DEFAULT_MODEL)) == ("pointwise", 1.0)
    assert feedback_defaults(str(tmp_path)) == ("pairwise", None)
    assert feedback_defaults("org/big-judge") == ("pairwise", None)


def test_cli_label_mode_and_score_judge(tiny_model_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from cai.cli import app

    runner = CliRunner()
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A carrot."}])
    common = ["--model", str(tiny_model_dir), "--backend", "transformers"]
    r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(tmp_path / "l.jsonl"),
                            "--mode", "pointwise", "--tau", "0.5", "--no-few-shot",
                            "--eval-against", str(pairs), *common])
    assert r.exit_code == 0, r.output
    from cai.records import PreferenceRecord

    feedback = lambda name: PreferenceRecord.from_row(
        json.loads((tmp_path / name).read_text())).metadata["ai_feedback"]
    assert feedback("l.jsonl")["mode"] == "pointwise" and feedback("l.jsonl")["tau"] == 0.5
    assert "[pointwise]" in r.output and "length-balanced" in r.output
    assert "position consistency" not in r.output
    r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(tmp_path / "p.jsonl"),
                            "--mode", "pairwise", "--no-few-shot", *common])
    assert r.exit_code == 0, r.output
    assert feedback("p.jsonl")["mode"] == "pairwise"
    for bad in (["--mode", "both"], ["--tau", "warm"]):
        r = runner.invoke(app, ["label", "--pairs", str(pairs), "-o", str(tmp_path / "x.jsonl"), *bad])
        assert r.exit_code == 2, r.output

    rows = _jsonl(tmp_path / "rows.jsonl", [
        {"prompt": "Name a fruit.", "response": "An apple.", "keep": 1},
        {"prompt": [{"role": "user", "content": "Name a fruit."}], "response": "A carrot."}])
    r = runner.invoke(app, ["score", "--judge", "--data", str(rows), "-o", str(tmp_path / "s.jsonl"),
                            "-p", "general-harm", "-p", "toxicity", "--no-few-shot", *common])
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert out[0]["keep"] == 1 and set(out[0]["judge_principles"]) == {"general-harm", "toxicity"}
    from cai.backends.hf_backend import TransformersBackend
    c = load_constitution("harmless")
    want = score_responses(TransformersBackend(str(tiny_model_dir)), c,
                           [([{"role": "user", "content": "Name a fruit."}], "A carrot.")],
                           principle_ids=["general-harm", "toxicity"], few_shot=False)[0]
    assert out[1]["judge_score"] == pytest.approx(want.score, abs=1e-5)
    r = runner.invoke(app, ["score", "--data", str(rows), "-o", str(tmp_path / "t.jsonl")])
    assert r.exit_code == 2 and "--judge" in r.output


@pytest.mark.vllm
def test_vllm_scores_like_transformers_on_the_embedded_model(vllm_backend, embedded_hf_backend):
    pairs, _ = read_pairs("pipelines/prompts/human_prefs.jsonl")
    cfg = LabelConfig(mode="pointwise", principles=1, seed=0)
    v = label_pairs(vllm_backend, C, pairs[:3], cfg, tau=1.0)
    h = label_pairs(embedded_hf_backend, C, pairs[:3], cfg, tau=1.0)
    for lv, lh in zip(v, h):
        assert [x.principle for x in lv.verdicts] == [x.principle for x in lh.verdicts]
        for xv, xh in zip(lv.verdicts, lh.verdicts):
            assert xv.scores == pytest.approx(xh.scores, abs=0.05)
        assert lv.p_first == pytest.approx(lh.p_first, abs=0.02)
