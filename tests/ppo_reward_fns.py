"""Rule-based rewards for the PPO tests, named as `tests/ppo_reward_fns.py:FUNCTION` in configs
(a subprocess run loads them from the file)."""

from __future__ import annotations

TARGET = "!"


RESPONSE_TOKENS = 12  # max_new_tokens in tests/test_ppo.py


def target_share(prompts, responses):
    """Share of a 12-token response's tokens that are the target token ("!" is one token in
    the embedded tokenizer; capped at 1)."""
    return [min(1.0, r.count(TARGET) / RESPONSE_TOKENS) for r in responses]
