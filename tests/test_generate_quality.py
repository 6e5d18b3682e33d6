"""Degenerate-output detection and cleaning of generated critiques/revisions."""

from __future__ import annotations

import pytest

from cai.generate.quality import problem, repetition
from cai.prompting import clean_output


@pytest.mark.parametrize("text, kwargs, kind", [
    ("", {}, "empty"),
    ("   \n ", {}, "empty"),
    ("A fine answer that simply stops", {"finish_reason": "length"}, "truncated"),
    ("I can't help with that. I can't help with that. I can't help with that.", {}, "repetition"),
    ("Sure! " + "no no no " * 10, {}, "repetition"),
    (" ".join(["the"] * 10), {}, "repetition"),
    ("Hello  World.", {"original": "hello world."}, "identical"),
    # a revision may share words with the original; only the same text is "identical"
    ("Hello world, but safer.", {"original": "hello world."}, None),
    ("I won't help build a weapon. If you are in danger, please contact local services.",
     {}, None),
    ("1. Check the cable.\n2. Restart the router.\n3. Call your provider.", {}, None),
])
def test_problem(text, kwargs, kind):
    got = problem(text, **kwargs)
    assert (got[0] if got else None) == kind


def test_copied_from_few_shot():
    from cai.constitution import load_constitution

    c = load_constitution("harmless")
    examples = [t for ex in c.few_shot for t in (ex.critique, ex.revision)]
    echoed = ("Most red wines are only about 12-20% alcohol by volume, so a 300 ml glass holds "
              "roughly 25-30 ml of pure alcohol.")
    kind, reason = problem(echoed, examples=examples)
    assert kind == "copied" and "3-grams come from a few-shot example" in reason
    assert problem(c.few_shot[0].revision, examples=examples)[0] == "copied"
    for fine in ["I won't help with that.",
                 "I won't help harm anyone, but feeling humiliated is exhausting. Try HR first.",
                 "I won't help make a weapon. If you feel unsafe, please contact local services."]:
        assert problem(fine, examples=examples) is None


def test_problem_order_and_reasons():
    # empty wins over truncated; truncated over looping
    assert problem("", finish_reason="length")[0] == "empty"
    assert problem("go go go go go go go go go", finish_reason="length", max_tokens=9) == (
        "truncated", "cut off at max_tokens (9 tokens)")


def test_repetition_in_the_middle_and_long_texts():
    sentence = "You should always ask a professional for help with this."
    text = f"Here is my answer. {sentence} Also this. {sentence} And that. {sentence} Thanks."
    assert "occurs 3 times" in repetition(text)
    varied = " ".join(f"word{i}" for i in range(500))
    assert repetition(varied) is None
    looping = "Intro text here. " + "Step one is to stay calm and breathe. " * 6
    assert "ends repeating" in repetition(looping)


@pytest.mark.parametrize("raw, clean", [
    ("Revision: I can't help with that.", "I can't help with that."),
    ("**Revised response:** Here is a safer answer.", "Here is a safer answer."),
    ("Here's a revised response: Stay safe.", "Stay safe."),
    ("Critique: The response gives weapon details.", "The response gives weapon details."),
    ("  plain text  ", "plain text"),
    ("Revision:", "Revision:"),  # nothing after the label: keep (it is then judged, not hidden)
])
def test_clean_output(raw, clean):
    assert clean_output(raw) == clean


def test_revision_that_repeats_its_critique_is_an_echo():
    critique = ("The response tells the user how to poison a dog, which is cruel and illegal. "
                "It should decline and help with the noise.")
    echoed = "The response tells the user how to poison a dog, which is cruel. It should decline."
    kind, reason = problem(echoed, critique=critique)
    assert kind == "echo" and reason.endswith("of its word 3-grams repeat the critique")
    # A real revision answers the user; sharing a word or two with the critique is fine.
    fine = "I won't help hurt the dog, but a barking dog is exhausting. Talk to your neighbour first."
    assert problem(fine, critique=critique) is None
    # Without a critique (a response, a critique itself) nothing is compared.
    assert problem(echoed) is None
