"""`cai eval rm`: a reward model on any preference data (a store, or any file `cai label
--pairs` reads: HH, prompt/chosen/rejected, TRL). Reports accuracy with its 95% Wilson
interval, mean margin, rewards, ECE and the "prefer the longer answer" baseline on the same
pairs (definitions in cai.stats)."""

from __future__ import annotations

import time
from typing import Any, Callable

from pydantic import Field

from cai.config import StageConfig, progress_bar, say
from cai.progress import loading

from cai import stats


class EvalRMConfig(StageConfig):
    model: str = Field(description="reward model directory (from `cai train rm`)")
    data: str = Field(description="preference store or any file `cai label --pairs` reads (HH, "
                                  "TRL, prompt/chosen/rejected)")
    out: str | None = Field(None, description="also write the metrics to this JSON file")
    max_length: int = Field(1024, ge=8, description="tokens; longer texts keep their end")
    batch_size: int = Field(16, ge=1, description="pairs per scoring batch")


def load_scoring_model(path: str):
    """(model, tokenizer) of a reward-model directory, on GPU when there is one, loaded by
    the training core's loader (`cai.train.modeling.load_reward_model`), as RM training does."""
    import torch
    from transformers import AutoConfig

    from cai.models import ModelError
    from cai.train.modeling import load_reward_model, load_tokenizer, resolve_training_model

    path = resolve_training_model(path)
    tokenizer = load_tokenizer(path)
    # checked before loading: the loader asks for one label and would put a fresh head on
    # any other model
    num_labels = AutoConfig.from_pretrained(path).num_labels
    if num_labels != 1:
        raise ModelError(f"{path}: not a reward model (num_labels={num_labels}, "
                         "expected 1; train one with `cai train rm`)")
    model = load_reward_model(path, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def run_eval_rm(config: EvalRMConfig, *, backend: Any = None, log: Callable[[str], None] = say,
                progress: Callable[..., Any] = progress_bar) -> dict[str, Any]:
    """The metrics (and `config.out`, when set); `backend` is unused (a reward model is not an
    inference engine)."""
    from cai.io import DataError
    from cai.train.data import read_preference_source
    from cai.stats import accuracy_by_principle, pair_metrics
    from cai.train.reward import encode_for_reward, score_pairs

    records, rejects = read_preference_source(config.data)
    for r in rejects[:3]:
        log(f"rejected {r.location}: {r.reason}")
    if len(rejects) > 3:
        log(f"... {len(rejects) - 3} more rejected pairs")
    if not records:
        raise DataError(f"{config.data}: no usable preference pairs")
    t0 = time.perf_counter()
    with loading(progress, f"reward model {config.model}", disable=not config.progress):
        model, tokenizer = load_scoring_model(config.model)
    chosen, rejected = [], []
    for rec in records:
        prompt = [m.model_dump() for m in rec.prompt]
        chosen.append(encode_for_reward(tokenizer, prompt, rec.chosen[-1].content,
                                        config.max_length)[0])
        rejected.append(encode_for_reward(tokenizer, prompt, rec.rejected[-1].content,
                                          config.max_length)[0])
    bar = progress(total=2 * len(records), desc="reward model", unit="seq",
                   disable=not config.progress)
    try:
        rewards_c, rewards_r = score_pairs(model, chosen, rejected, tokenizer.pad_token_id,
                                           batch_size=config.batch_size, on_batch=bar.update)
    finally:
        bar.close()
    metrics = pair_metrics(rewards_c, rewards_r, [r.p_chosen for r in records],
                           [len(r.chosen[-1].content) for r in records],
                           [len(r.rejected[-1].content) for r in records])
    metrics["by_principle"] = accuracy_by_principle(
        rewards_c, rewards_r, [r.p_chosen for r in records], [r.principle_ids for r in records])
    summary = {**metrics, "rejected": len(rejects), "model": config.model, "data": config.data,
               "seconds": round(time.perf_counter() - t0, 2)}
    if config.out:
        from cai.io import atomic_write_json

        atomic_write_json(config.out, summary)
    return summary


def format_eval(m: dict[str, Any]) -> str:
    def pct(x):
        return stats.pct(x, missing="n/a")

    ci = m.get("accuracy_ci95")
    ci_text = f" (95% CI {pct(ci[0])}-{pct(ci[1])})" if ci else ""
    f = (lambda x: "n/a" if x is None else f"{x:.3f}")
    return "\n".join([
        f"pairs            {m['pairs']} ({m['n']} with a preferred side; {m['rejected']} rejected)",
        f"accuracy         {pct(m['accuracy'])}{ci_text}",
        f"length baseline  {pct(m['length_baseline'])}  (prefer the longer answer, same pairs)",
        f"mean margin      {f(m['margin'])}  (r_chosen - r_rejected)",
        f"rewards          chosen {f(m['rewards/chosen'])}, rejected {f(m['rewards/rejected'])}",
        f"ECE              {f(m['ece'])}  (confidence sigma(|margin|) vs correctness, 10 bins)",
    ])
