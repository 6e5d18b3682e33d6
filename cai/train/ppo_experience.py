"""One PPO iteration's data: the padded token layout (`Batch`) and everything the phases
compute over it (`Experience`), with the two forward passes every phase shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cai.train import losses as L
from cai.train.ppo_reward import per_token_values


class Batch:
    """Prompts left-padded to a common end, responses right-padded after it, so response
    token t of every row sits at column P + t and its log-prob is read at P + t - 1."""

    def __init__(self, prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int,
                 eos_ids: list[int], device) -> None:
        P = max(map(len, prompt_ids))
        R = max(1, max(map(len, response_ids)))
        self.P, self.R = P, R
        q = torch.full((len(prompt_ids), P), pad, dtype=torch.long)
        qm = torch.zeros_like(q)
        r = torch.full((len(prompt_ids), R), pad, dtype=torch.long)
        for i, (p, s) in enumerate(zip(prompt_ids, response_ids)):
            q[i, P - len(p):] = torch.tensor(p)
            qm[i, P - len(p):] = 1
            if s:
                r[i, :len(s)] = torch.tensor(s)
        present = torch.tensor([[1] * len(s) + [0] * (R - len(s)) for s in response_ids])
        # generated tokens up to and including the first EOS; nothing after it counts
        eos = torch.tensor(eos_ids)
        is_eos = torch.isin(r, eos) & present.bool()
        after_eos = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) > 0
        self.mask = (present.bool() & ~after_eos).long().to(device)
        self.prompt_lens = torch.tensor([len(p) for p in prompt_ids])
        self.response_lens = self.mask.sum(1).cpu()  # the mask runs from column 0 unbroken
        self.has_eos = is_eos.any(1).to(device)
        self.input_ids = torch.cat([q, r], 1).to(device)
        self.attention_mask = torch.cat([qm, self.mask.cpu()], 1).to(device)
        # positions as generate() counts them: from each row's first real token
        self.position_ids = (self.attention_mask.cumsum(1) - 1).clamp(min=0)

    def rows(self, idx) -> tuple[dict[str, torch.Tensor], int, int]:
        """(model inputs of rows `idx`, their prompt width P', their response width R').
        Columns that are padding in every one of these rows are left out (prompt padding on
        the left, response padding and post-EOS tokens on the right): masked anyway, they
        would cost compute and change nothing. Response token t stays at column P' + t."""
        idx = torch.as_tensor(idx)
        cpu = idx.cpu()
        p = int(self.prompt_lens[cpu].max())
        r = max(1, int(self.response_lens[cpu].max()))
        cols = slice(self.P - p, self.P + r)
        idx = idx.to(self.input_ids.device)
        return ({"input_ids": self.input_ids[idx, cols],
                 "attention_mask": self.attention_mask[idx, cols],
                 "position_ids": self.position_ids[idx, cols]}, p, r)

    def by_length(self, idx=None) -> torch.Tensor:
        """Rows `idx` (default all) ordered by length, so that rows of similar length share
        a micro-batch and little padding is left in it."""
        idx = torch.arange(len(self.prompt_lens)) if idx is None else torch.as_tensor(idx).cpu()
        total = self.prompt_lens[idx] + self.response_lens[idx]
        return idx[torch.argsort(total, stable=True)]


def response_logprobs(model, rows: dict, P: int, temperature: float, with_entropy: bool = False):
    """Log-probs of the response tokens (and per-token entropy) at temperature T."""
    labels = rows["input_ids"][:, P:]
    # only the R positions that score a response token need the (vocabulary-wide) logits:
    # named by index, no extra position is projected and no slice of the logits is taken
    # (whose backward would write a zero gradient of their size)
    scoring = torch.arange(P - 1, P - 1 + labels.shape[1], device=labels.device)
    logits = model(**rows, use_cache=False, logits_to_keep=scoring).logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = L.logprobs_from_logits(logits, labels)
    return (logp, L.entropy_from_logits(logits)) if with_entropy else (logp, None)


def response_values(value_model, rows: dict, P: int) -> torch.Tensor:
    """V(state before response token t) = the head at column P + t - 1."""
    return per_token_values(value_model, **rows)[:, P - 1:-1]


@dataclass
class Experience:
    """What one iteration learns from, filled phase by phase: `rollout` (prompts, responses),
    `score` (log-probs, values, rewards), `advantages` (KL, shaped rewards, GAE). Tensors are
    [rows, R] over the response tokens unless noted."""

    iteration: int
    messages: list  # each row's conversation (what the reward model reads)
    batch: Batch
    push_seconds: float = 0.0
    logp: torch.Tensor | None = None  # policy, at the sampling temperature
    ref_logp: torch.Tensor | None = None  # reference, same temperature
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
    raw: torch.Tensor | None = None  # [rows] reward-model scores
    scores: torch.Tensor | None = None  # [rows] normalised, penalised, maybe whitened
    engine_gap: float | None = None  # sampler's vs our log-probs (masked mean |diff|)
    kl: torch.Tensor | None = None  # per-token KL estimate, masked
    rewards: torch.Tensor | None = None  # -β·KL, + score on the last token
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.mask.float()


def decode(tokenizer, batch: Batch) -> list[str]:
    """Each row's response text (up to and including its first EOS)."""
    ids = batch.input_ids[:, batch.P:]
    return [tokenizer.decode(row[m.bool()], skip_special_tokens=True).strip()
            for row, m in zip(ids.cpu(), batch.mask.cpu())]
