"""cai.backends.context: the one "does it fit the context" check, with hand-counted tokens."""

from __future__ import annotations

from cai.backends.context import ChatTokenizer, context_fit, prompt_budget


class WordTokenizer:
    """One token per whitespace-separated word; the chat template writes `role: content`
    per turn and a one-word generation prompt."""

    chat_template = "words"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        text = " ".join(f"{m['role']}: {m['content']}" for m in messages)
        return text + (" assistant:" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


CONV = [{"role": "user", "content": "name three fruits"}]  # "user: name three fruits assistant:" = 5


def test_counts_and_fits():
    counter = ChatTokenizer(WordTokenizer(), context=10)
    assert counter.count_tokens(CONV) == 5
    fit = context_fit(counter, CONV, reserve=5)
    assert (fit.tokens, fit.reserve, fit.limit, fit.ok) == (5, 5, 10, True)
    assert not context_fit(counter, CONV, reserve=6).ok
    # a suffix is tokenized on its own; of several, the longest counts
    fit = context_fit(counter, CONV, suffix=["The answer: (A)", "The answer is: (B)"])
    assert fit.tokens == 5 + 4 and fit.ok
    assert not context_fit(counter, CONV, reserve=2, suffix="The answer is: (B)").ok


def test_unknown_context_or_tokenizer_fits_everything():
    assert context_fit(ChatTokenizer(WordTokenizer()), CONV, reserve=10 ** 6).ok
    no_tokenizer = ChatTokenizer(None, context=1)
    fit = context_fit(no_tokenizer, CONV, reserve=5)
    assert fit.ok and fit.tokens is None
    assert prompt_budget(no_tokenizer, 5) is None


def test_prompt_budget_leaves_room_to_answer():
    assert prompt_budget(ChatTokenizer(WordTokenizer(), context=10), 4) == 6
    assert prompt_budget(ChatTokenizer(WordTokenizer(), context=10), 50) == 1


def test_backends_declare_tokenizer_and_count(tiny_backend):
    text = tiny_backend.render_chat(CONV)
    n = len(tiny_backend.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tiny_backend.count_tokens(CONV) == n
    assert ChatTokenizer(tiny_backend.tokenizer).count_tokens(CONV) == n
    fit = context_fit(tiny_backend, CONV, reserve=2048 - n)
    assert fit.ok and not context_fit(tiny_backend, CONV, reserve=2049 - n).ok

