"""Where PPO's rewards and values come from.

Reward: a directory from `cai train rm` (a sequence-classification model with one label,
plus `reward_stats.json` holding the mean/std of its scores, used to normalise), any other
sequence-classification reward model directory, or a Python callable
`fn(prompts: list[list[msg]], responses: list[str]) -> list[float]` (tests, rule-based
rewards), named in a config as `path/to/file.py:function` or `package.module:function`.

Value model: a sequence-classification model (by default initialised from the reward
model) whose scalar head is applied at every position, giving one value per token.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Callable

import torch

Conversation = list[dict[str, str]]
RewardFn = Callable[[list[Conversation], list[str]], list[float]]


def load_callable(spec: str) -> RewardFn:
    """`file.py:function` or `package.module:function` -> the function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"reward {spec!r}: expected a directory, FILE.py:FUNCTION or MODULE:FUNCTION")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ValueError(f"reward {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"cai_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {name!r} is not a function in {target}")
    return fn


def is_model_dir(spec: str) -> bool:
    return Path(spec).expanduser().is_dir()


def per_token_values(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """[B, L] values: the scalar head of a sequence-classification model at every position."""
    from cai.train.reward import per_position_scores

    return per_position_scores(model, input_ids, attention_mask, position_ids).float()


class RewardModel:
    """A sequence-classification reward model scoring (conversation, response) as one chat."""

    def __init__(self, path: str, device: torch.device, batch_size: int = 8) -> None:
        from transformers import AutoTokenizer

        from cai.train.modeling import load_config, load_reward_model

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = load_config(path, no_dropout=True)
        if getattr(config, "num_labels", 1) != 1:
            raise ValueError(f"reward model {path} has {config.num_labels} labels; a reward model has 1")
        config.pad_token_id = self.tokenizer.pad_token_id
        self.model = load_reward_model(path, self.tokenizer, config=config).to(device).eval() \
            .requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.max_length = 1024
        stats = Path(path) / "reward_stats.json"
        data = json.loads(stats.read_text()) if stats.is_file() else {}
        self.mean = float(data.get("mean", 0.0))
        self.std = float(data.get("std", 1.0)) or 1.0

    @torch.no_grad()
    def __call__(self, prompts: list[Conversation], responses: list[str]) -> list[float]:
        # the same text and truncation as `cai train rm` / `cai eval rm` (cai.train.reward)
        from cai.train.reward import score

        return score(self.model, self.tokenizer, list(zip(prompts, responses)),
                     max_length=self.max_length, batch_size=self.batch_size)


def load_reward(spec: str | RewardFn, device: torch.device, batch_size: int = 8):
    """(reward callable, normalisation mean, std, model dir or None)."""
    if callable(spec):
        return spec, 0.0, 1.0, None
    if is_model_dir(spec):
        rm = RewardModel(str(Path(spec).expanduser().resolve()), device, batch_size)
        return rm, rm.mean, rm.std, rm.path
    return load_callable(spec), 0.0, 1.0, None
