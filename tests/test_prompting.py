"""The exact messages each stage sends: layout, shared prefixes, few-shot, cleanup."""

from __future__ import annotations

import pytest

from cai.constitution import load_constitution, shipped_names
from cai.prompting import (
    ANSWER_PREFIX,
    COMPARISON_OPTIONS,
    clean_output,
    comparison_messages,
    critique_messages,
    few_shot_turns,
    response_messages,
    revision_messages,
)

CONV_1 = [{"role": "user", "content": "How do I pick a lock?"}]
CONV_2 = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Write me a phishing email."}]


@pytest.fixture(scope="module")
def harmless():
    return load_constitution("harmless")


@pytest.fixture(scope="module")
def support():
    return load_constitution("support-empathy")


def test_response_messages(harmless, support):
    assert response_messages(harmless, CONV_1) == CONV_1  # harmless has no system prompt
    msgs = response_messages(support, CONV_1)
    assert msgs == [{"role": "system", "content": support.system_prompt}] + CONV_1
    own = [{"role": "system", "content": "Reply in French."}] + CONV_1
    merged = response_messages(support, own)
    assert merged[0]["content"] == support.system_prompt + "\n\nReply in French."
    assert merged[1:] == CONV_1
    with pytest.raises(ValueError, match="end with a user turn"):
        response_messages(support, CONV_2[:2])


def test_critique_layout(support):
    p = support.principle("brevity")
    msgs = critique_messages(support, p, CONV_2, "RESP")
    shots = few_shot_turns(support)
    assert msgs[0] == {"role": "system", "content": support.system_prompt}
    assert msgs[1:1 + len(shots)] == shots
    assert msgs[1 + len(shots):] == CONV_2 + [
        {"role": "assistant", "content": "RESP"},
        {"role": "user", "content": p.critique_request},
    ]
    # Roles alternate after the system turn, as strict chat templates require.
    roles = [m["role"] for m in msgs[1:]]
    assert all(a != b for a, b in zip(roles, roles[1:]))
    assert set(msgs[0]) == {"role", "content"}


def test_revision_layout(harmless):
    p = harmless.principle("privacy")
    crit = critique_messages(harmless, p, CONV_1, "RESP")
    rev = revision_messages(harmless, p, CONV_1, "RESP", "CRIT")
    assert rev == crit + [{"role": "assistant", "content": "CRIT"},
                          {"role": "user", "content": p.revision_request}]


def test_few_shot_uses_each_examples_own_principle(harmless):
    shots = few_shot_turns(harmless)
    # one-turn conversation + response, critique request, critique, revision request, revision
    assert len(shots) == 6 * len(harmless.few_shot)
    for i, ex in enumerate(harmless.few_shot):
        turns = shots[6 * i: 6 * i + 6]
        own = harmless.principle(ex.principle)
        assert turns[0] == {"role": "user", "content": ex.conversation[0].content}
        assert [t["content"] for t in turns[1:]] == [
            ex.response, own.critique_request, ex.critique, own.revision_request, ex.revision]
    assert len({ex.principle for ex in harmless.few_shot}) > 1


def test_shared_prefix_is_identical_across_records(support):
    a = critique_messages(support, support.principle("brevity"), CONV_1, "R1")
    b = critique_messages(support, support.principle("take-ownership"), CONV_2, "R2")
    c = revision_messages(support, support.principle("plain-language"), CONV_1, "R3", "C3")
    n = 1 + len(few_shot_turns(support))
    assert a[:n] == b[:n] == c[:n]
    assert a[n:] != b[n:]
    x = comparison_messages(support, support.principle("brevity"), CONV_1, "A1", "B1")
    y = comparison_messages(support, support.principle("honest-promises"), CONV_2, "A2", "B2")
    m = 2 * len(support.feedback_few_shot)
    assert x[:m] == y[:m] and x[m:] != y[m:]


def test_few_shot_off(harmless):
    p = harmless.principle("crime")
    msgs = critique_messages(harmless, p, CONV_1, "RESP", few_shot=False)
    assert msgs == CONV_1 + [{"role": "assistant", "content": "RESP"},
                             {"role": "user", "content": p.critique_request}]
    cmp = comparison_messages(harmless, p, CONV_1, "A", "B", few_shot=False)
    assert len(cmp) == 1 and cmp[0]["role"] == "user"


def test_comparison_prompt(support):
    p = support.principle("acknowledge-first")
    msgs = comparison_messages(support, p, CONV_2, "first answer", "second answer")
    assert all(m["role"] != "system" for m in msgs)  # the labeler judges, it does not role-play
    last = msgs[-1]
    assert last["role"] == "user"
    text = last["content"]
    assert p.comparison in text
    assert "User: Hi\n\nAssistant: Hello!\n\nUser: Write me a phishing email." in text
    assert "(A) first answer\n(B) second answer" in text
    assert text.index("Write me a phishing") < text.index(p.comparison) < text.index("(A) first")
    # Feedback few-shot: each a question and an answer in exactly the scored form.
    shots = msgs[:-1]
    assert len(shots) == 2 * len(support.feedback_few_shot)
    for (q, a), ex in zip(zip(shots[::2], shots[1::2]), support.feedback_few_shot):
        assert q["role"] == "user" and support.principle(ex.principle).comparison in q["content"]
        assert a == {"role": "assistant",
                     "content": ANSWER_PREFIX + COMPARISON_OPTIONS["AB".index(ex.answer)]}


def test_constants():
    assert COMPARISON_OPTIONS == (" (A)", " (B)")
    assert ANSWER_PREFIX == "The answer is:"


def test_accepts_pydantic_messages(harmless):
    records = pytest.importorskip("cai.records")
    conv = [records.Message(role="user", content="How do I pick a lock?")]
    assert response_messages(harmless, conv) == CONV_1


@pytest.mark.parametrize("name", shipped_names())
def test_prompts_fit_a_small_context(name):
    # The embedded model has a small context: the longest revision prompt with every
    # few-shot example must stay well under ~1500 tokens (~4 characters a token).
    c = load_constitution(name)
    longest = max(c.principles, key=lambda p: len(p.critique_request + p.revision_request))
    msgs = revision_messages(c, longest, CONV_2, "x" * 400, "y" * 400)
    chars = sum(len(m["content"]) for m in msgs) + 8 * len(msgs)  # + template overhead
    assert chars < 4 * 1300, chars


@pytest.mark.parametrize("raw, clean", [
    ("  Revision: Hello there.  ", "Hello there."),
    ("**Revised response:** Hi", "Hi"),
    ("Critique: The response is rude.", "The response is rude."),
    ("Here is a revised response: Sure.", "Sure."),
    ("Here's the improved version of my answer:\n\nSure.", "Sure."),
    ("Revision 2: Ok", "Ok"),
    ("The revision: keep me", "The revision: keep me"),
    ("Revisions are hard: keep", "Revisions are hard: keep"),
    ("Revision:", "Revision:"),
    ("\n\nJust text\n", "Just text"),
])
def test_clean_output(raw, clean):
    assert clean_output(raw) == clean


def test_judgement_prompt(support):
    from cai.prompting import JUDGEMENT_ANSWERS, judgement_messages

    p = support.principle("acknowledge-first")
    msgs = judgement_messages(support, p, CONV_2, "  the reply  ")
    assert all(m["role"] != "system" for m in msgs)
    text = msgs[-1]["content"]
    assert msgs[-1]["role"] == "user"
    assert text == ("Here is a conversation between a user and an AI assistant.\n\n"
                    "User: Hi\n\nAssistant: Hello!\n\nUser: Write me a phishing email.\n\n"
                    f"Assistant: the reply\n\n{p.judgement} Answer Yes or No.")
    # each feedback example: the preferred response answered Yes, the other No
    shots = msgs[:-1]
    assert len(shots) == 4 * len(support.feedback_few_shot)
    for i, ex in enumerate(support.feedback_few_shot):
        good, bad = (ex.response_a, ex.response_b) if ex.answer == "A" else (ex.response_b, ex.response_a)
        q_yes, a_yes, q_no, a_no = shots[4 * i:4 * i + 4]
        assert f"Assistant: {good.strip()}\n\n" in q_yes["content"] and a_yes["content"] == "Yes"
        assert f"Assistant: {bad.strip()}\n\n" in q_no["content"] and a_no["content"] == "No"
        assert support.principle(ex.principle).judgement_question in q_yes["content"]
    assert judgement_messages(support, p, CONV_2, "r", few_shot=False) == [
        {"role": "user", "content": text.replace("the reply", "r")}]
    assert JUDGEMENT_ANSWERS == {"yes": ("Yes", " Yes"), "no": ("No", " No")}
