"""No silent minutes in training: PPO's loading is a bar and its iteration bar names the
phase it is in (rollout, score, update) and keeps its clock moving within an iteration;
the reward model's pass for PPO's reward stats has a bar of its own. On tiny random models
through the stages' `progress=` factory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recording_bars import RecordingBars

from cai.train.ppo import PPOConfig, run_ppo

REWARD = str(Path(__file__).parent / "ppo_reward_fns.py") + ":length"


def test_ppo_shows_loading_and_each_iterations_phases(tiny_model_dir, tmp_path, monkeypatch):
    import cai.train.ppo as ppo

    real_update = ppo.update

    def slow_update(*a, **kw):  # an update long enough for the bar's clock to tick
        time.sleep(2.5)
        return real_update(*a, **kw)

    monkeypatch.setattr(ppo, "update", slow_update)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {t}."}) + "\n"
                               for t in ("cats", "rain", "chess", "bread")))
    bars = RecordingBars()
    run_ppo(PPOConfig(
        model=str(tiny_model_dir), reward=REWARD, prompts=str(prompts), out=str(tmp_path / "o"),
        iterations=2, rollout_batch_size=4, minibatch_size=4, micro_batch_size=4, ppo_epochs=1,
        max_tokens=4, temperature=1.0, missing_eos_penalty=None, backend="transformers",
        cpu=True, lora_r=4, progress=True), progress=bars)

    assert bars.named("loading policy, reference, value and reward models")[0].n == 1
    (bar,) = bars.named("ppo")
    assert bar.n == bar.total == 2 and bar.closed
    phases = [p.split(",")[0] for p in bar.postfixes]
    assert phases == ["rollout", "score", "update", "checkpoint"] * 2
    # from the second iteration on, the phase comes with the last iteration's figures
    assert bar.postfixes[4].startswith("rollout, reward=") and "kl=" in bar.postfixes[4]
    assert bar.refreshes >= 4  # redrawn every second through the two slow updates


def test_reward_model_bars_tick_between_steps_and_cover_the_stats_pass(tiny_model_dir, tmp_path):
    from test_train_rm import rm_config, write_marker_pairs

    from cai.train.rm import run_rm

    data = write_marker_pairs(tmp_path / "pairs.jsonl", 16)
    bars = RecordingBars()

    def slow_step(model, step):  # a step long enough for the bar's clock to tick
        time.sleep(1.5)

    summary = run_rm(rm_config(tiny_model_dir, data, tmp_path / "rm", epochs=1, batch_size=8,
                               progress=True), progress=bars, before_step=slow_step)
    (train,) = bars.named("train rm")
    assert train.n == summary["steps"] and train.refreshes >= summary["steps"]
    # PPO's reward stats: every training pair's two responses scored again, under a bar
    (stats,) = bars.named("reward stats")
    assert stats.total == 2 * summary["train_pairs"] == stats.n and stats.closed
