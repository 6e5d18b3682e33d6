"""Reward model: `RMConfig` + `run_rm`. A scalar head (AutoModelForSequenceClassification,
num_labels=1) on a causal LM, trained with the soft-label Bradley-Terry loss on preference
pairs, AI-labeled and human alike (see cai.train.data for the inputs).

Output directory: a Hugging Face model (loads with AutoModelForSequenceClassification),
`reward_stats.json` (mean/std of rewards on the training prompts' responses, for PPO's
normalisation), `eval.json` (held-out metrics; `by_principle`: accuracy per principle), `rejects.jsonl`, metrics.jsonl, tensorboard/.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from cai.config import progress_bar, say
from cai.io import DataError
from cai.schema import write_rejects
from cai.train.config import TrainingConfig

REWARD_STATS_FILE = "reward_stats.json"
EVAL_FILE = "eval.json"
REJECTS_FILE = "rejects.jsonl"


class RMConfig(TrainingConfig):
    lr: float = Field(1e-5, gt=0.0, description="learning rate")
    batch_size: int = Field(8, ge=1, description="pairs per device batch (2x sequences)")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="pairs longer than max_length: keep each text's last "
                                "max_length tokens (the end of the response), or drop the pair")
    margin: float = Field(0.0, ge=0.0, description="Bradley-Terry margin")
    center_rewards_coefficient: float = Field(0.0, ge=0.0,
                                              description="weight of (r_c + r_r)^2, as in TRL")
    share_prompt: bool = Field(
        True, description="run each pair's common prompt once (chosen and rejected in one row "
                          "with a 4D mask): the same loss from about a third fewer tokens")
    eval_batch_size: int = Field(16, ge=1)
    reward_stats_pairs: int = Field(2048, ge=1, description="training pairs scored for "
                                                            "reward_stats.json")


def tokenize_pairs(records, tokenizer, config: RMConfig) -> tuple[list[dict], dict[str, int]]:
    """Encoded pairs and how many were truncated or dropped as over-long."""
    from cai.train.reward import encode_for_reward

    out, counts = [], {"truncated": 0, "dropped": 0}
    for rec in records:
        prompt = [m.model_dump() for m in rec.prompt]
        chosen, rejected = rec.chosen[-1].content, rec.rejected[-1].content
        c_ids, c_long = encode_for_reward(tokenizer, prompt, chosen, config.max_length)
        r_ids, r_long = encode_for_reward(tokenizer, prompt, rejected, config.max_length)
        if c_long or r_long:
            if config.overlong == "drop":
                counts["dropped"] += 1
                continue
            counts["truncated"] += 1
        out.append({"chosen": c_ids, "rejected": r_ids, "p": rec.p_chosen,
                    "chosen_len": len(chosen), "rejected_len": len(rejected),
                    "principles": list(rec.principle_ids)})
    return out, counts


def collate_pairs(pad_id: int, share_prompt: bool = False) -> Callable[[list[dict]], dict]:
    """One batch: with share_prompt, one row per pair (`pack_pairs`); otherwise chosen
    sequences first, then rejected, right-padded together."""
    import torch

    from cai.train.reward import pack_pairs, pad_right

    def collate(items: list[dict]) -> dict:
        chosen, rejected = [it["chosen"] for it in items], [it["rejected"] for it in items]
        if share_prompt:
            batch = pack_pairs(chosen, rejected, pad_id)
        else:
            ids, mask = pad_right(chosen + rejected, pad_id)
            batch = {"input_ids": ids, "attention_mask": mask, "tokens": int(mask.sum())}
        batch["p_chosen"] = torch.tensor([it["p"] for it in items], dtype=torch.float32)
        return batch

    return collate


def pair_rewards(model, batch: dict) -> tuple[Any, Any]:
    """(chosen rewards, rejected rewards) of a `collate_pairs` batch."""
    if "chosen_index" in batch:
        from cai.train.reward import token_rewards

        return token_rewards(model, batch)
    # use_cache=False: a one-pass forward has no use for a KV cache, and building one
    # costs ~3% of a CPU step (TRL's RewardTrainer passes it too)
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_cache=False).logits[:, 0]
    n = batch["p_chosen"].shape[0]
    return rewards[:n], rewards[n:]


def score_pairs_on_ranks(accelerator, model, pairs: list[dict], pad_id: int, batch_size: int,
                         on_batch: Callable[[int], None] | None = None
                         ) -> tuple[list[float], list[float]]:
    """(chosen rewards, rejected rewards) of `pairs`, each rank scoring its share with the
    unwrapped model (the shares may differ in size; a DDP forward may broadcast buffers,
    which every rank would have to join), gathered in order on every rank."""
    from cai.train.accel import gather_rank_shares
    from cai.train.reward import score_pairs

    scorer = accelerator.unwrap_model(model)

    def score(share: list[dict]) -> list[tuple[float, float]]:
        chosen, rejected = score_pairs(scorer, [p["chosen"] for p in share],
                                       [p["rejected"] for p in share], pad_id,
                                       batch_size=batch_size, on_batch=on_batch)
        return list(zip(chosen, rejected))

    both = gather_rank_shares(accelerator, pairs, score)
    return [c for c, _ in both], [r for _, r in both]


def evaluate_pairs(accelerator, model, tokenizer, pairs: list[dict],
                   batch_size: int) -> dict[str, Any]:
    """Held-out metrics (`cai.stats.pair_metrics`), with `by_principle`: the accuracy on
    the pairs labeled under each principle (`cai constitution health` reads it). On N ranks
    each scores 1/N of the pairs."""
    from cai.stats import accuracy_by_principle, pair_metrics

    chosen, rejected = score_pairs_on_ranks(accelerator, model, pairs, tokenizer.pad_token_id,
                                            batch_size)
    p_chosen = [p["p"] for p in pairs]
    return {**pair_metrics(chosen, rejected, p_chosen, [p["chosen_len"] for p in pairs],
                           [p["rejected_len"] for p in pairs]),
            "by_principle": accuracy_by_principle(chosen, rejected, p_chosen,
                                                  [p.get("principles", []) for p in pairs])}


def _print_rejects(rejects, out: Path, log) -> None:
    write_rejects(rejects, out / REJECTS_FILE)
    if rejects:
        from collections import Counter

        codes = ", ".join(f"{c} {n}" for c, n in Counter(r.code for r in rejects).most_common())
        log(f"rejected {len(rejects)} pairs ({codes}); listed in {out / REJECTS_FILE}")
        for r in rejects[:3]:
            log(f"  {r.location}: {r.reason}")


def run_rm(config: RMConfig, *, backend: Any = None, log: Callable[[str], None] = say,
           progress: Callable[..., Any] = progress_bar,
           before_step: Callable[[Any, int], None] | None = None) -> dict[str, Any]:
    """Train a reward model per `config`; returns the summary (also in the DONE marker).
    Rerunning a finished run returns its summary without training again."""
    from cai.train.accel import make_dataloader
    from cai.train.data import load_preferences
    from cai.train.loop import run_loop
    from cai.train.supervised import (finished_run, open_run, run_summary, save_and_finish,
                                      start_run_dir)

    if config.workers:
        from cai.train.config import run_on_workers

        return run_on_workers(config, run_rm, log)
    if (finished := finished_run(config, log)) is not None:
        return finished
    run = open_run(config, log)
    train_recs, eval_recs, rejects, mix = load_preferences(
        config.data, config.eval_data, config.eval_fraction, config.seed)
    start_run_dir(config, run, lambda: _print_rejects(rejects, run.run_dir.path, run.log))
    train, held, overlong = tokenize_splits(train_recs, eval_recs, run.tokenizer, config,
                                            run.log)
    run.log(f"reward model: {len(train)} training pairs, {len(held)} held out "
            f"(split by prompt: {mix['test_prompts']} of {mix['prompts']} prompts)")

    model, parameters, share_prompt = build_reward_model(config, run, train + held)
    collate = collate_pairs(run.tokenizer.pad_token_id, share_prompt)
    loader = make_dataloader(train, batch_size=config.batch_size, collate_fn=collate, shuffle=True,
                             seed=config.seed)
    evaluate = ((lambda m: evaluate_pairs(run.accelerator, m, run.tokenizer, held,
                                          config.eval_batch_size)) if held else None)
    result, model = run_loop(
        config, accelerator=run.accelerator, run_dir=run.run_dir, model=model,
        train_loader=loader, compute_loss=lambda m, batch: pair_loss(config, m, batch),
        evaluate=evaluate, count_tokens=lambda b: b["tokens"],
        count_samples=lambda b: int(b["p_chosen"].shape[0]), desc="train rm",
        before_step=before_step, progress=progress)

    stats, rewards = reward_stats(config, run, model, train, progress)
    summary = run_summary("rm", config, run, model, result, parameters, {
        "train_pairs": len(train), "eval_pairs": len(held), "rejected_pairs": len(rejects),
        "overlong": overlong, "mix": mix})
    summary["reward_stats"] = stats
    if not all(math.isfinite(v) for v in rewards):
        raise DataError("the trained reward model gives non-finite rewards")
    return save_and_finish(config, run, model, summary, extra_files={
        REWARD_STATS_FILE: json.dumps(stats, indent=2) + "\n",
        EVAL_FILE: json.dumps(result.eval_metrics, indent=2) + "\n"})


def tokenize_splits(train_recs, eval_recs, tokenizer, config: RMConfig,
                    log) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training pairs, held-out pairs, the summary's `overlong` counts); says how many were
    truncated or dropped, and refuses a run whose every training pair was dropped."""
    train, train_counts = tokenize_pairs(train_recs, tokenizer, config)
    held, eval_counts = tokenize_pairs(eval_recs, tokenizer, config)
    for name, counts in (("train", train_counts), ("eval", eval_counts)):
        if counts["truncated"] or counts["dropped"]:
            log(f"{name}: over {config.max_length} tokens: {counts['truncated']} pairs "
                f"truncated (kept the end), {counts['dropped']} dropped")
    if not train:
        raise DataError(f"{', '.join(config.data)}: every training pair was dropped as longer "
                        f"than max_length={config.max_length}")
    return train, held, {"train": train_counts, "eval": eval_counts, "policy": config.overlong}


def build_reward_model(config: RMConfig, run, pairs: list[dict]):
    """(model, (trainable, total parameters), share_prompt): share_prompt is turned off, and
    said so, where the model's attention takes no 4D mask."""
    from cai.train.modeling import load_reward_model
    from cai.train.supervised import build_model

    # with share_prompt a pair is one row holding prompt, chosen and rejected
    rows = config.batch_size if config.share_prompt else 2 * config.batch_size
    longest = max((len(x["chosen"]) + len(x["rejected"]) if config.share_prompt
                   else max(len(x["chosen"]), len(x["rejected"]))) for x in pairs)
    model, parameters = build_model(config, run, load_reward_model, task_type="SEQ_CLS",
                                    rows=rows, max_len=longest)
    share_prompt = config.share_prompt
    if share_prompt:
        from cai.train.reward import takes_shared_prompt

        if (why := takes_shared_prompt(model)) is not None:
            run.log(f"share_prompt off: {why}; chosen and rejected run as separate sequences")
            share_prompt = False
    return model, parameters, share_prompt


def pair_loss(config: RMConfig, model, batch: dict) -> tuple[Any, dict[str, float]]:
    """The Bradley-Terry loss, with the batch's accuracy (against the soft label's side)
    and mean reward margin."""
    import torch

    from cai.train.losses import bradley_terry_loss

    rc, rr = pair_rewards(model, batch)
    loss = bradley_terry_loss(rc, rr, batch["p_chosen"], margin=config.margin or None,
                              center_coefficient=config.center_rewards_coefficient)
    with torch.no_grad():
        hard = (rc > rr).float()
        acc = torch.where(batch["p_chosen"] >= 0.5, hard, 1 - hard).mean()
    return loss, {"accuracy": acc.item(), "margin": (rc - rr).mean().item()}


def reward_stats(config: RMConfig, run, model, train: list[dict],
                 progress: Callable[..., Any] = progress_bar) -> tuple[dict, list[float]]:
    """PPO's normalisation stats: rewards of the training prompts' responses (on N ranks
    each scores its share); the stats and the rewards."""
    model.eval()
    sample = train[: config.reward_stats_pairs]
    # a pass over the training pairs again (a third of an epoch's time): a bar of its own
    bar = progress(total=2 * len(sample), desc="reward stats", unit="seq", leave=False,
                   disable=not (config.progress and run.accelerator.is_main_process))
    try:
        chosen, rejected = score_pairs_on_ranks(run.accelerator, model, sample,
                                                run.tokenizer.pad_token_id,
                                                config.eval_batch_size, on_batch=bar.update)
    finally:
        bar.close()
    rewards = chosen + rejected
    stats = {"mean": statistics.fmean(rewards),
             "std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
             "n": len(rewards), "pairs": len(sample),
             "note": "rewards of chosen and rejected responses to training prompts"}
    return stats, rewards
