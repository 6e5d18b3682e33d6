"""Chain-of-thought feedback: the model reasons about the comparison, then answers.

`generate` cannot pre-fill an assistant turn, so the request to reason goes at the end of
the comparison question (a user turn). Reasoning stops at ANSWER_PREFIX; the scoring text
is then the rendered prompt + the reasoning + ANSWER_PREFIX, and the options are scored as
without CoT. The constitution's feedback few-shot examples answer without reasoning, so
with small models `--cot --no-few-shot` usually reasons more.
"""

from __future__ import annotations

from cai.prompting import ANSWER_PREFIX, COMPARISON_OPTIONS

COT_INSTRUCTION = (
    "Before you reply, think step by step about which response better answers the question "
    f'above, in a few sentences. Then end with "{ANSWER_PREFIX}{COMPARISON_OPTIONS[0]}" or '
    f'"{ANSWER_PREFIX}{COMPARISON_OPTIONS[1]}".'
)
STOP = [ANSWER_PREFIX]


def with_cot_request(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The comparison messages with the request to reason appended to the final user turn."""
    last = messages[-1]
    return messages[:-1] + [{**last, "content": last["content"] + "\n\n" + COT_INSTRUCTION}]


def answer_text(rendered_prompt: str, reasoning: str | None) -> str:
    """Raw text after which the options are scored: prompt, [reasoning, newline,] prefix."""
    thought = (reasoning or "").strip()
    return rendered_prompt + (thought + "\n" if thought else "") + ANSWER_PREFIX
