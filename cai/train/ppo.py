"""KL-regularised PPO of a causal LM against a reward model (RLHF / RL-CAI's last stage).

One iteration, top to bottom, in the order of CleanRL's ppo.py and "The N+ implementation
details of RLHF with PPO", one function per phase:

  rollout     sample one response per prompt from the current policy (temperature T)
  score       rescore the tokens under the policy and the frozen reference (same T),
              values from the value model, the reward-model score of each response
  advantages  per-token rewards = -β·KL (+ score on the last token), GAE(γ, λ), whitening
  update      several PPO epochs over shuffled minibatches: clipped surrogate for the
              policy, clipped value loss for the value model (separate optimisers)
  evaluate    held-out prompts every `eval_every` iterations: reward, KL, paired gain

`run_ppo` loops over them, moves β, logs (metrics.jsonl, TensorBoard) and checkpoints.
The setup (models, prompts, engine) is cai.train.ppo_setup; one iteration's data is
cai.train.ppo_experience; all pure arithmetic lives in cai.train.losses. The value model is
separate from the policy (README explains why).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cai.config import progress_bar, say
from cai.progress import loading, ticking
from cai.stats import paired_difference
from cai.io import atomic_write_json
from cai.train import losses as L
from cai.train.accel import rank_share
from cai.train.ppo_config import RUN_ONLY_FIELDS, PPOConfig
from cai.train.ppo_experience import (Batch, Experience, decode, response_logprobs,
                                      response_values)
from cai.train.ppo_reward import RewardFn
from cai.train.ppo_rollout import prompt_indices, sampling_seed
from cai.train.ppo_setup import (PPOModels, Prompts, load_models, load_prompts, make_accelerator,
                                 start_engine)

__all__ = ["PPOConfig", "run_ppo", "rollout", "score", "advantages", "update", "evaluate"]

EVAL_BASELINE = "eval_baseline.json"  # iteration 0's held-out rewards, per prompt
SUMMARY = "summary.json"


@dataclass
class PPOState:
    """Saved in every checkpoint beside accelerate's state (weights, optimisers, RNG)."""

    iteration: int
    kl_controller: dict
    prompt_position: int  # prompts consumed: iteration · rollout_batch_size

    @property
    def global_step(self) -> int:  # what RunDir names checkpoints by
        return self.iteration


def run_dir(config: PPOConfig):
    """PPO's run directory: ppo_config.json, checkpoints/iter-000002/ppo_state.json."""
    from cai.train.checkpoint import RunDir

    return RunDir(config.out, config_file="ppo_config.json", state_file="ppo_state.json",
                  step_prefix="iter", step_digits=6, run_only=RUN_ONLY_FIELDS)


# --------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------


def rank_seed(seed: int, accelerator) -> int:
    """Rank r's sampling seed: rank 0 (and a single process) keeps `seed`; the others draw
    their own streams rather than repeat rank 0's draws on their prompts."""
    return seed + 1_000_033 * accelerator.process_index


def rollout(config: PPOConfig, models: PPOModels, prompts: Prompts, iteration: int) -> Experience:
    """Iteration k's prompts (a seeded walk over shuffled passes), one sampled response each,
    from the policy's current weights (pushed into the engine first). On N ranks the walk is
    the same on every rank and rank r samples its contiguous 1/N of it, so together they
    cover the global batch one process would."""
    t0 = time.perf_counter()
    acc = models.accelerator
    idx = rank_share(prompt_indices(len(prompts.ids), config.rollout_batch_size, iteration,
                                    config.seed), acc)
    prompt_ids = [prompts.ids[i] for i in idx]
    models.policy.eval()
    push_s = models.engine.push_weights(models.policy_model)
    responses = models.engine.generate(models.policy_model, prompt_ids,
                                       max_new_tokens=config.max_tokens,
                                       temperature=config.temperature,
                                       seed=rank_seed(config.seed, acc),
                                       iteration=iteration, batch_size=len(prompt_ids))
    batch = Batch(prompt_ids, responses, models.tokenizer.pad_token_id, models.eos_ids,
                  models.accelerator.device)
    return Experience(iteration=iteration, messages=[prompts.messages[i] for i in idx],
                      batch=batch, push_seconds=push_s,
                      seconds={"rollout": time.perf_counter() - t0})


def forward_scores(config: PPOConfig, models: PPOModels, batch: Batch, with_values: bool,
                   policy=None):
    """The no-grad forward passes, `forward_batch_size` rows at a time (grouped by length):
    (policy log-probs, reference log-probs, entropy, values or None), [n, R] each, zero
    beyond each group's R'. `policy`: the model to score with (default the prepared one)."""
    policy = models.policy if policy is None else policy
    n, device = batch.input_ids.shape[0], models.accelerator.device
    out = [torch.zeros(n, batch.R, device=device) for _ in range(4 if with_values else 3)]
    order = batch.by_length()
    step = config.forward_batch_size
    # autocast here too: the reference (a separate model without LoRA) is not prepared by
    # accelerate, and policy and reference must compute in the same precision or β·KL
    # measures rounding
    with torch.no_grad(), models.accelerator.autocast():
        for i in range(0, n, step):
            idx = order[i:i + step].to(device)
            rows, P, r = batch.rows(idx)
            lp, ent = response_logprobs(policy, rows, P, config.temperature,
                                        with_entropy=True)
            with models.reference_context():
                rlp, _ = response_logprobs(models.reference, rows, P, config.temperature)
            parts = [lp, rlp, ent]
            if with_values:
                parts.append(response_values(models.value_model, rows, P))
            for t, part in zip(out, parts):
                t[idx, :r] = part
    return tuple(out) if with_values else (*out, None)


def reward_scores(config: PPOConfig, models: PPOModels, messages: list, batch: Batch):
    """(raw reward of each response, its text)."""
    texts = decode(models.tokenizer, batch)
    with models.accelerator.autocast():
        raw = torch.tensor(models.reward(messages, texts), dtype=torch.float32,
                           device=models.accelerator.device)
    return raw, texts


def sum_over_ranks(accelerator):
    """`reduce_sum` for cai.train.losses: None in one process, else an all-reduce (sum), so
    whitening, loss means and the KL controller see the global batch."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t, "sum")


def global_kl_and_count(exp: Experience, reduce_sum) -> tuple[float, int]:
    """(mean KL per response over every rank's rollouts, their number): the adaptive-KL
    controller's input."""
    per_response = exp.kl.sum(1)
    if reduce_sum is None:
        return per_response.mean().item(), len(exp.messages)
    both = reduce_sum(torch.stack([per_response.sum(), torch.tensor(
        float(per_response.shape[0]), dtype=per_response.dtype, device=per_response.device)]))
    return (both[0] / both[1]).item(), int(both[1].item())


def score(config: PPOConfig, models: PPOModels, exp: Experience) -> Experience:
    """Log-probs under policy and reference, values, and each response's score: the reward
    model's, normalised, less the missing-EOS penalty, optionally whitened."""
    t0 = time.perf_counter()
    exp.logp, exp.ref_logp, exp.entropy, exp.values = forward_scores(config, models, exp.batch,
                                                                     with_values=True)
    exp.raw, _ = reward_scores(config, models, exp.messages, exp.batch)
    scores = L.normalize_scores(exp.raw, models.rm_mean, models.rm_std)
    if config.missing_eos_penalty is not None:
        scores = L.penalize_missing_eos(scores, exp.batch.has_eos, config.missing_eos_penalty)
    exp.scores = (L.whiten_scores(scores, sum_over_ranks(models.accelerator))
                  if config.whiten_rewards else scores)
    sampled = models.engine.last_logprobs
    if sampled is not None:
        # the sampler (vLLM, or the transformers copy) drew these tokens with the weights
        # pushed at this iteration's start: its log-probs must match our rescoring, up to
        # rounding (precision and kernels)
        eng = torch.zeros_like(exp.logp)
        for i, row in enumerate(sampled):
            k = min(len(row), eng.shape[1])
            eng[i, :k] = torch.tensor(row[:k], dtype=eng.dtype)
        exp.engine_gap = L.masked_mean((eng - exp.logp).abs(), exp.batch.mask).item()
    exp.seconds["score"] = time.perf_counter() - t0
    return exp


def advantages(config: PPOConfig, exp: Experience, beta: float,
               reduce_sum=None) -> Experience:
    """Per-token rewards (-β·KL, the score on the last token), GAE returns and advantages
    (whitened over every rank's tokens with `reduce_sum`)."""
    mask = exp.mask
    exp.kl = L.kl_estimate(exp.logp, exp.ref_logp, config.kl_estimator) * mask
    exp.rewards = L.shape_rewards(exp.scores, exp.kl, mask, beta)
    adv, exp.returns = L.gae(exp.rewards, exp.values, mask, config.gamma, config.lam)
    exp.advantages = (L.masked_whiten(adv, mask, reduce_sum=reduce_sum) * mask
                      if config.whiten_advantages else adv)
    return exp


UPDATE_STATS = ("pg_loss", "clipfrac", "approx_kl", "vf_loss", "vf_clipfrac")


def update(config: PPOConfig, models: PPOModels, exp: Experience, *,
           last_checkpoint: Path | None) -> dict[str, float]:
    """`ppo_epochs` passes over shuffled minibatches, one optimizer step each (micro-batches
    accumulate). Returns the mean of each loss statistic."""
    from cai.train.metrics import check_finite

    t0 = time.perf_counter()
    acc, mask, n = models.accelerator, exp.mask, exp.batch.input_ids.shape[0]
    micro = config.micro_batch_size
    minibatch = config.minibatch_size // acc.num_processes  # this rank's share of each
    models.policy.train(), models.value_model.train()  # dropout is 0: the same function
    stats: dict[str, list[float]] = {k: [] for k in UPDATE_STATS}
    shuffle = torch.Generator().manual_seed(sampling_seed(config.seed, exp.iteration))
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=shuffle)
        for mb in range(0, n, minibatch):
            # within a minibatch, micro-batches only split the work of one step: group rows
            # of similar length so that less padding is computed
            mb_order = exp.batch.by_length(order[mb:mb + minibatch])
            for mi in range(0, len(mb_order), micro):
                idx = mb_order[mi:mi + micro].to(acc.device)
                values = _micro_step(config, models, exp, idx, mask)
                for k, v in zip(UPDATE_STATS, values):
                    stats[k].append(v.item())
                for k in ("pg_loss", "vf_loss"):  # the training core's NaN guard
                    check_finite(k, stats[k][-1], step=exp.iteration,
                                 last_checkpoint=last_checkpoint)
    exp.seconds["update"] = time.perf_counter() - t0
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in stats.items()}


def _micro_step(config: PPOConfig, models: PPOModels, exp: Experience, idx, mask):
    """Forward and backward of one micro-batch; the optimizers step at a minibatch's end."""
    acc = models.accelerator
    rows, P, r = exp.batch.rows(idx)
    m = mask[idx, :r]
    with acc.accumulate(models.policy, models.value_model):
        with acc.autocast():
            new_logp, _ = response_logprobs(models.policy, rows, P, config.temperature)
            new_values = response_values(models.value_model, rows, P)
        reduce_sum = sum_over_ranks(acc)
        pg_loss, clipfrac, approx_kl = L.policy_loss(
            new_logp, exp.logp[idx, :r], exp.advantages[idx, :r], m, config.clip_range,
            reduce_sum=reduce_sum)
        vf_loss, vf_clipfrac = L.value_loss(new_values, exp.values[idx, :r],
                                            exp.returns[idx, :r], m, config.value_clip_range,
                                            reduce_sum=reduce_sum)
        acc.backward(pg_loss + vf_loss)  # disjoint parameters: two separate losses
        if acc.sync_gradients and config.max_grad_norm is not None:
            acc.clip_grad_norm_(models.policy.parameters(), config.max_grad_norm)
            acc.clip_grad_norm_(models.value_model.parameters(), config.max_grad_norm)
        models.opt_p.step(), models.opt_v.step(), models.sch_p.step(), models.sch_v.step()
        models.opt_p.zero_grad(), models.opt_v.zero_grad()
    return pg_loss, clipfrac, approx_kl, vf_loss, vf_clipfrac


def evaluate(config: PPOConfig, models: PPOModels, prompts: Prompts, iteration: int) -> dict:
    """Held-out prompts: mean reward and KL of greedy responses, or of `eval_samples` sampled
    ones per prompt. Row i always gets the same seed, so evaluations are paired; from the
    second on, the gain over iteration 0 (per prompt, paired) comes with its 95% interval.
    On N ranks each scores a contiguous share of the prompts and the rows are gathered in
    prompt order; every rank gets the same result, rank 0 alone writes."""
    from cai.train.accel import gather_rank_shares

    acc, out, k = models.accelerator, Path(config.out), config.eval_samples
    models.policy.eval()
    models.engine.push_weights(models.policy_model)

    def score(mine: list[int]) -> list[tuple]:
        """(conversation, response, reward, KL, length, has EOS) of each of this rank's rows."""
        ids = [prompts.eval_ids[p] for p in mine for _ in range(k)]
        msgs = [prompts.eval_messages[p] for p in mine for _ in range(k)]
        if not ids:  # more ranks than held-out prompts leaves some with none
            return []
        responses = models.engine.generate(
            models.policy_model, ids, max_new_tokens=config.max_tokens,
            temperature=config.eval_temperature, seed=rank_seed(config.seed + 1, acc),
            iteration=0, batch_size=config.micro_batch_size * 4)
        batch = Batch(ids, responses, models.tokenizer.pad_token_id, models.eos_ids, acc.device)
        # the unwrapped policy: ranks may hold different numbers of rows, and a DDP forward
        # may broadcast buffers, which every rank would have to join
        lp, rlp, _, _ = forward_scores(config, models, batch, with_values=False,
                                       policy=models.policy_model)
        kl = (L.kl_estimate(lp, rlp, config.kl_estimator) * batch.mask).sum(1)
        raw, texts = reward_scores(config, models, msgs, batch)
        return list(zip(msgs, texts, raw.tolist(), kl.tolist(), batch.mask.sum(1).tolist(),
                        batch.has_eos.tolist()))

    rows = gather_rank_shares(acc, list(range(len(prompts.eval_ids))), score)
    msgs, texts, raw, kl, length, eos = (list(c) for c in zip(*rows))
    if acc.is_main_process:
        with open(out / "eval_samples.jsonl", "a") as f:
            for i, (m, t, s) in enumerate(zip(msgs, texts, raw)):
                f.write(json.dumps({"iteration": iteration, "prompt": m[-1]["content"],
                                    "sample": i % k, "response": t, "reward": s}) + "\n")
    raw = torch.tensor(raw)
    per_prompt = raw.view(-1, k).mean(1)  # the unit of the paired gain: samples share a prompt
    result = {"eval/reward": raw.mean().item(),
              "eval/reward_normalized": L.normalize_scores(raw, models.rm_mean,
                                                           models.rm_std).mean().item(),
              "eval/kl": sum(kl) / len(kl),
              "eval/response_length": sum(length) / len(length),
              "eval/eos_rate": sum(eos) / len(eos)}
    if acc.is_main_process:
        result.update(_paired_gain(out / EVAL_BASELINE, iteration, per_prompt.tolist()))
    return result


def _paired_gain(baseline: Path, iteration: int, per_prompt: list[float]) -> dict:
    """The gain over iteration 0 on the same prompts (and, when sampling, the same seeds),
    paired: the spread between prompts is far larger than a gain PPO makes. Iteration 0
    saves its rewards as the baseline."""
    if iteration == 0:
        atomic_write_json(baseline, {"prompt_rewards": per_prompt})
        return {}
    if not baseline.is_file():
        return {}
    base = json.loads(baseline.read_text())["prompt_rewards"]
    gain = paired_difference(per_prompt, base) if len(base) == len(per_prompt) else {}
    if not gain.get("ci95"):
        return {}
    return {"eval/reward_gain": gain["mean"], "eval/reward_gain_ci95_lo": gain["ci95"][0],
            "eval/reward_gain_ci95_hi": gain["ci95"][1]}


def eval_line(iteration: int, result: dict, n_prompts: int, k: int) -> str:
    line = (f"iteration {iteration}: held-out reward {result['eval/reward']:.3f} "
            f"(n={n_prompts} prompts" + (f" × {k}" if k > 1 else "") +
            f"), KL {result['eval/kl']:.2f}")
    if "eval/reward_gain" in result:
        line += (f", gain over iteration 0 {result['eval/reward_gain']:+.3f} [95% "
                 f"{result['eval/reward_gain_ci95_lo']:+.3f}, "
                 f"{result['eval/reward_gain_ci95_hi']:+.3f}]")
    return line


def iteration_record(models: PPOModels, exp: Experience, stats: dict, beta: float) -> dict:
    """metrics.jsonl's line for one iteration (β is the one the iteration's rewards used).
    On N ranks each value is the mean of the ranks' (one all-reduce): the ranks hold equal
    numbers of responses, so per-response means are the global ones; the entropy is averaged
    over every rank's tokens; explained variance and timings are the ranks' mean."""
    from cai.train.loop import reduce_mean

    mask = exp.mask
    record = {
        "reward/raw": exp.raw.mean().item(),
        "reward/normalized": exp.scores.mean().item(),
        "reward/total": exp.rewards.sum(1).mean().item(),
        "kl": exp.kl.sum(1).mean().item(), "kl_coef": beta,
        "entropy": L.global_masked_mean(exp.entropy, mask,
                                        sum_over_ranks(models.accelerator)).item(),
        "policy/loss": stats["pg_loss"], "policy/clipfrac": stats["clipfrac"],
        "policy/approx_kl": stats["approx_kl"],
        "value/loss": stats["vf_loss"], "value/clipfrac": stats["vf_clipfrac"],
        "value/explained_variance": L.explained_variance(exp.values, exp.returns, mask).item(),
        "response/length": mask.sum(1).mean().item(),
        "response/eos_rate": exp.batch.has_eos.float().mean().item(),
        "time/rollout": exp.seconds["rollout"], "time/push_weights": exp.push_seconds,
        "time/score": exp.seconds["score"], "time/update": exp.seconds["update"],
        "lr": models.sch_p.get_last_lr()[0],
    }
    if exp.engine_gap is not None:
        record["rollout/engine_logprob_gap"] = exp.engine_gap
    return reduce_mean(models.accelerator, record)


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def run_ppo(config: PPOConfig, *, backend: Any = None, log: Callable[[str], None] = say,
            progress: Callable[..., Any] = progress_bar,
            reward_fn: RewardFn | None = None) -> dict:
    """Train; returns a summary (last metrics, paths). With `config.resume`, continue the run
    in `config.out` from its last checkpoint (or return a finished one's summary).

    `backend` must be None: rollouts sample from the policy's live weights, pushed into
    PPO's own engine (transformers or vLLM, `config.backend`) before every rollout, which a
    generic cai backend cannot take. `reward_fn` replaces `config.reward` with an
    in-process callable (tests)."""
    from cai.train.metrics import MetricsLog

    if backend is not None:
        raise ValueError("run_ppo samples from the policy's live weights with its own engine; "
                         "choose it with `backend: transformers | vllm` in the config")
    from cai.train.accel import main_process_only

    if config.workers:
        from cai.train.config import run_on_workers

        return run_on_workers(config, run_ppo, log)
    rd = run_dir(config)
    if (done := _finished(config, rd)) is not None:
        return done
    accelerator, precision = make_accelerator(config)
    log = main_process_only(accelerator, log)
    # every rank has checked the directory (_finished) before rank 0 writes the config into
    # it; the process group may predate this stage, so nothing else holds rank 0 back
    accelerator.wait_for_everyone()
    rd.start(config, write=accelerator.is_main_process)
    updates = config.ppo_epochs * (config.rollout_batch_size // config.minibatch_size)
    quiet = not (config.progress and accelerator.is_main_process)
    with loading(progress, "policy, reference, value and reward models", disable=quiet):
        models = load_models(config, accelerator, reward_fn, updates_per_iteration=updates)
    prompts = load_prompts(config, models.tokenizer)
    start = _resume(config, rd, models)
    metrics = MetricsLog(accelerator, config.out, resume_step=start if start else None,
                         run_name="ppo", step_key="iteration")
    with loading(progress, "the rollout engine", disable=quiet):
        start_engine(config, models, precision, len(prompts.eval_ids))
    bar = progress(total=config.iterations, initial=start, desc="ppo", unit="it", disable=quiet)
    with ticking(bar):  # an iteration is a minute on a CPU: the clock and phase stay current
        record = _iterations(config, models, prompts, rd, metrics, bar, start, accelerator, log)
    bar.close()
    metrics.close()
    models.engine.close()
    return _finish(config, rd, models, record)


def _iterations(config: PPOConfig, models: PPOModels, prompts: Prompts, rd, metrics, bar,
                start: int, accelerator, log) -> dict[str, Any]:
    """Iterations start+1 .. config.iterations, each in its phases; the last one's record."""
    record: dict[str, Any] = {}

    def phase(name: str) -> None:
        bar.set_postfix_str(f"{name}{', ' + shown if (shown := _last(record)) else ''}",
                            refresh=False)

    if start == 0 and prompts.eval_ids and config.eval_every:
        metrics.log(0, _evaluate_and_say(config, models, prompts, 0, log))
    for iteration in range(start + 1, config.iterations + 1):
        t0 = time.perf_counter()
        phase("rollout")
        exp = rollout(config, models, prompts, iteration)
        phase("score")
        exp = score(config, models, exp)
        beta = models.kl_ctl.value
        reduce_sum = sum_over_ranks(accelerator)
        exp = advantages(config, exp, beta, reduce_sum)
        phase("update")
        stats = update(config, models, exp, last_checkpoint=rd.latest_checkpoint())
        models.kl_ctl.update(*global_kl_and_count(exp, reduce_sum))
        record = {"iteration": iteration, **iteration_record(models, exp, stats, beta),
                  "time/iteration": time.perf_counter() - t0}
        if prompts.eval_ids and config.eval_every and iteration % config.eval_every == 0:
            record.update(_evaluate_and_say(config, models, prompts, iteration, log))
        metrics.log(iteration, {k: v for k, v in record.items() if k != "iteration"})
        phase("checkpoint")
        bar.update(1)
        if (config.save_every and iteration % config.save_every == 0) or \
                iteration == config.iterations:
            rd.save_checkpoint(accelerator, PPOState(
                iteration, models.kl_ctl.state_dict(), iteration * config.rollout_batch_size),
                keep=config.keep_checkpoints)
    return record


def _last(record: dict[str, Any]) -> str:
    """The last iteration's reward and KL for the bar ("" before the first)."""
    if not record:
        return ""
    return f"reward={record['reward/raw']:.3f}, kl={record['kl']:.3f}, β={record['kl_coef']:.3g}"


def _finished(config: PPOConfig, rd) -> dict | None:
    """A finished run's summary when resuming it (same config), else None; a directory that
    holds a run is refused without `resume`."""
    if (rd.is_done() or rd.saved_config() is not None) and not config.resume:
        raise FileExistsError(f"{rd.path} already holds a PPO run; pass --resume to continue "
                              "it or choose another output directory")
    return rd.finished(config)


def _resume(config: PPOConfig, rd, models: PPOModels) -> int:
    """Load the last checkpoint (weights, optimisers, schedulers, RNG, β); its iteration."""
    last = rd.latest_checkpoint() if config.resume else None
    if last is None:
        return 0
    state = rd.load_checkpoint(models.accelerator, last, state_type=PPOState)
    models.kl_ctl.load_state_dict(state.kl_controller)
    return state.iteration


def _evaluate_and_say(config, models, prompts, iteration, log) -> dict:
    result = evaluate(config, models, prompts, iteration)
    if config.progress:
        log(eval_line(iteration, result, len(prompts.eval_ids), config.eval_samples))
    return result


def _finish(config: PPOConfig, rd, models: PPOModels, record: dict) -> dict:
    """Save the policy and the value model as HF directories (LoRA merged unless
    merge_lora=False), write summary.json, and mark the run done."""
    from cai.train.accel import choose_mixed_precision
    from cai.train.modeling import save_hf_model

    out, paths = Path(config.out), {}
    for name, model in (("policy", models.policy), ("value_model", models.value_model)):
        if models.accelerator.is_main_process:
            (out / name).mkdir(parents=True, exist_ok=True)
        save_hf_model(models.accelerator, model, models.tokenizer, out / name,
                      merge_lora=config.merge_lora)
        paths[name] = str(out / name)
    summary = {"out": str(out), "iterations": config.iterations, "last": record,
               "rollout_backend": models.backend,
               "rollout_dtype": str(models.engine.dtype or models.policy_model.dtype),
               "device": str(models.accelerator.device),
               "attn_implementation": models.policy_model.config._attn_implementation,
               "mixed_precision": models.accelerator.mixed_precision,
               "precision": choose_mixed_precision(config.mixed_precision, cpu=config.cpu)[1],
               **paths}
    if models.accelerator.is_main_process:
        atomic_write_json(out / SUMMARY, summary)
        rd.mark_done(summary)
    return summary
