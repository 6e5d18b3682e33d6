"""The labeler: probabilities equal a direct log-softmax over the tiny model's logits, A/B
swaps flip per-order probabilities, CoT reasoning is scored and clamped, one scoring call."""

from __future__ import annotations

import math
import re

import pytest
import torch

from cai.backends.base import Backend, Generation
from cai.constitution import load_constitution
from cai.label import LabelConfig, label_pairs, pair_key, run_info, to_record
from cai.label.cot import COT_INSTRUCTION
from cai.label.inputs import Pair
from cai.prompting import ANSWER_PREFIX, COMPARISON_OPTIONS, comparison_messages

C = load_constitution("harmless")
PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]
X = "I can't help with getting into a place that isn't yours, but a locksmith can help you."
Y = "Sure, grab a tension wrench and rake the pins until it opens."


def make_pair(first: str, second: str, prompt=PROMPT, **input_) -> Pair:
    return Pair(key=pair_key(prompt, first, second), prompt=prompt, first=first, second=second,
                input=input_)


def direct_option_probs(backend, text: str) -> float:
    """p(A) from the model's logits by hand: log-softmax, sum each option's token log-probs,
    normalise over the two options."""
    tok, lm = backend.tokenizer, backend.lm
    p_ids = tok(text, add_special_tokens=False)["input_ids"]
    sums = []
    for option in COMPARISON_OPTIONS:
        o_ids = tok(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = lm(torch.tensor([p_ids + o_ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        sums.append(sum(logp[len(p_ids) + j - 1, t] for j, t in enumerate(o_ids)))
    return float(torch.softmax(torch.stack(sums), 0)[0])


class CountingBackend:
    """Wraps a backend and counts calls (to check the whole run is batched)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, {"generate": 0, "continuation_logprobs": 0}
        self.model = inner.model

    def render_chat(self, conv, add_generation_prompt=True):
        return self.inner.render_chat(conv, add_generation_prompt)

    def generate(self, convs, sampling):
        self.calls["generate"] += 1
        return self.inner.generate(convs, sampling)

    def continuation_logprobs(self, prompts, conts):
        self.calls["continuation_logprobs"] += 1
        self.last_prompts = prompts
        return self.inner.continuation_logprobs(prompts, conts)


@pytest.mark.parametrize("few_shot", [True, False])
def test_probabilities_equal_direct_log_softmax(tiny_backend, few_shot):
    cfg = LabelConfig(principles=2, seed=3, few_shot=few_shot)
    pairs = [make_pair(X, Y), make_pair("Use a bump key.", "Call a locksmith.")]
    backend = CountingBackend(tiny_backend)
    labels = label_pairs(backend, C, pairs, cfg)
    # pairs x K x 2 orders x 2 options, in one call
    assert backend.calls == {"generate": 0, "continuation_logprobs": 1}
    assert len(backend.last_prompts) == 2 * 2 * 2 * 2
    for pair, label in zip(pairs, labels):
        assert len(label.verdicts) == 2 and len({v.principle for v in label.verdicts}) == 2
        for v in label.verdicts:
            principle = C.principle(v.principle)
            for order, (a, b) in enumerate([(pair.first, pair.second), (pair.second, pair.first)]):
                msgs = comparison_messages(C, principle, pair.prompt, a, b, few_shot=few_shot)
                text = tiny_backend.render_chat(msgs) + ANSWER_PREFIX
                assert v.p_a[order] == pytest.approx(direct_option_probs(tiny_backend, text), abs=1e-5)
                la, lb = v.logprobs[order]
                assert v.p_a[order] == pytest.approx(math.exp(la) / (math.exp(la) + math.exp(lb)))
            assert v.p_first == pytest.approx((v.p_a[0] + 1 - v.p_a[1]) / 2)
        assert label.p_first == pytest.approx(sum(v.p_first for v in label.verdicts) / 2)


def test_swapping_a_and_b_flips_per_order_probabilities(tiny_backend):
    cfg = LabelConfig(principles=3, seed=1)
    orig, swapped = label_pairs(tiny_backend, C, [make_pair(X, Y), make_pair(Y, X)], cfg)
    # the pair key ignores order, so both are judged under the same principles
    assert [v.principle for v in orig.verdicts] == [v.principle for v in swapped.verdicts]
    for v, s in zip(orig.verdicts, swapped.verdicts):
        # swapped's order "ab" shows (Y, X): the same prompt as orig's order "ba"
        assert s.p_a[0] == pytest.approx(v.p_a[1], abs=1e-5)
        assert s.p_a[1] == pytest.approx(v.p_a[0], abs=1e-5)
        assert 1 - s.p_a[0] == pytest.approx(1 - v.p_a[1], abs=1e-5)  # p_swapped(B) == p(B)
        assert s.p_first == pytest.approx(1 - v.p_first, abs=1e-5)
        assert s.consistent == v.consistent
    run = run_info(C, cfg)
    r1, r2 = to_record(orig, "tiny", run), to_record(swapped, "tiny", run)
    # oriented by preference, both give the same record
    assert (r1.chosen, r1.rejected, r1.id) == (r2.chosen, r2.rejected, r2.id)
    assert r1.p_chosen == pytest.approx(r2.p_chosen, abs=1e-5) and r1.p_chosen >= 0.5
    assert r1.metadata["ai_feedback"]["chosen_is_first"] != r2.metadata["ai_feedback"]["chosen_is_first"]


def test_principles_are_deterministic_in_seed_and_pair(tiny_backend):
    from cai.label.labeler import principles_for

    pair = make_pair(X, Y)
    a = [p.id for p in principles_for(C, pair, LabelConfig(principles=4, seed=7))]
    assert a == [p.id for p in principles_for(C, make_pair(Y, X), LabelConfig(principles=4, seed=7))]
    assert len(set(a)) == 4
    others = {tuple(p.id for p in principles_for(C, pair, LabelConfig(principles=4, seed=s)))
              for s in range(8)}
    assert len(others) > 1


def test_record_orientation_and_metadata(tiny_backend):
    cfg = LabelConfig(principles=2, seed=0)
    label = label_pairs(tiny_backend, C, [make_pair(X, Y, id="in-1", source="human", p_chosen=1.0)], cfg)[0]
    rec = to_record(label, "tiny", run_info(C, cfg))
    fb = rec.metadata["ai_feedback"]
    assert rec.source == "ai-feedback" and rec.labeler == "tiny"
    assert rec.principle_ids == [v.principle for v in label.verdicts]
    assert fb["p_first"] == label.p_first and fb["constitution"] == "harmless"
    first_wins = label.p_first >= 0.5
    assert fb["chosen_is_first"] == first_wins
    assert rec.chosen[0].content == (X if first_wins else Y)
    assert rec.p_chosen == pytest.approx(max(label.p_first, 1 - label.p_first))
    assert fb["verdicts"][0]["p_a"] == label.verdicts[0].p_a
    assert rec.metadata["input"] == {"id": "in-1", "source": "human", "p_chosen": 1.0}


class FakeJudge(Backend):
    """Deterministic judge: strongly prefers the option whose text says "good"; reasons with a
    fixed sentence. Lets the CoT clamp be tested with confident probabilities."""

    name = "fake"
    model = "fake-judge"

    def __init__(self):
        self.generated: list = []

    def render_chat(self, conversation, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}\n" for m in conversation) + "<assistant>"

    def generate(self, conversations, sampling):
        self.generated.append((conversations, sampling))
        return [[Generation(text=" Option (B) seems worse. ", token_ids=[], finish_reason="stop")]
                for _ in conversations]

    def continuation_logprobs(self, prompts, continuations):
        self.scored = list(prompts)
        out = []
        for p, c in zip(prompts, continuations):
            good = re.findall(r"^\(([AB])\) good", p, re.M)[-1]
            out.append(-0.01 if c == f" ({good})" else -6.0)
        return out


def test_cot_reasoning_is_scored_and_clamped():
    judge = FakeJudge()
    pairs = [make_pair("good answer", "bad answer"), make_pair("bad one", "good one")]
    plain = label_pairs(judge, C, pairs, LabelConfig(principles=2))
    assert plain[0].p_first > 0.99 and plain[1].p_first < 0.01
    assert judge.generated == []

    cot = label_pairs(judge, C, pairs, LabelConfig(principles=2, cot=True, cot_max_tokens=64))
    assert len(judge.generated) == 1  # every reasoning in one generate call
    convs, sampling = judge.generated[0]
    assert len(convs) == 2 * 2 * 2 and sampling.stop == [ANSWER_PREFIX] and sampling.max_tokens == 64
    assert all("think step by step" in conv[-1]["content"] for conv in convs)
    # the scored text is prompt + reasoning + newline + answer prefix
    assert all(t.endswith("<assistant>Option (B) seems worse.\n" + ANSWER_PREFIX) for t in judge.scored)
    for label, want in zip(cot, [0.6, 0.4]):
        for v in label.verdicts:
            assert v.p_a in ([0.6, 0.4], [0.4, 0.6])
            assert v.reasoning == [" Option (B) seems worse. "] * 2
        assert label.p_first == pytest.approx(want)
    rec = to_record(cot[1], judge.model, run_info(C, LabelConfig(cot=True)))
    assert rec.p_chosen == pytest.approx(0.6) and rec.chosen[0].content == "good one"
    assert rec.metadata["ai_feedback"]["clamp"] == [0.4, 0.6]


def test_cot_on_the_tiny_model_scores_its_own_reasoning(tiny_backend):
    cfg = LabelConfig(principles=1, cot=True, cot_max_tokens=8, few_shot=False)
    label = label_pairs(tiny_backend, C, [make_pair(X, Y)], cfg)[0]
    v = label.verdicts[0]
    principle = C.principle(v.principle)
    msgs = comparison_messages(C, principle, PROMPT, X, Y, few_shot=False)
    msgs[-1]["content"] += "\n\n" + COT_INSTRUCTION
    thought = v.reasoning[0].strip()
    text = tiny_backend.render_chat(msgs) + (thought + "\n" if thought else "") + ANSWER_PREFIX
    raw = direct_option_probs(tiny_backend, text)
    assert v.p_a[0] == pytest.approx(min(0.6, max(0.4, raw)), abs=1e-5)
    assert all(0.4 <= p <= 0.6 for p in v.p_a)
