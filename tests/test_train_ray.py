"""Ray Train: `workers: 2` runs SFT on two workers of a simulated two-node cluster (one CPU
each), each worker on its own node, and trains as the single-process run does."""

from __future__ import annotations

import json

import pytest
from test_train_sft import conversations, write_sft_parquet

from cai.train.sft import SFTConfig, run_sft


@pytest.fixture(scope="module")
def two_node_cluster():
    pytest.importorskip("ray.train")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_sft_on_two_ray_train_workers_on_two_nodes(two_node_cluster, tiny_model_dir, tmp_path):
    data = write_sft_parquet(tmp_path / "sft", conversations(16))
    common = dict(model=str(tiny_model_dir), data=[str(data)], lr=1e-3, epochs=1, log_every=1,
                  save_every=None, eval_fraction=0.0, max_length=64, progress=False,
                  mixed_precision="no", attn_implementation="eager", seed=1)
    summary = run_sft(SFTConfig(**common, out=str(tmp_path / "ray"), batch_size=4, workers=2,
                                ray=two_node_cluster.address))
    assert summary["steps"] == 2  # 16 conversations, 2 workers x 4
    nodes = {w["node_id"] for w in summary["workers"]}
    assert sorted(w["rank"] for w in summary["workers"]) == [0, 1]
    assert len(nodes) == 2  # one worker per node
    alive = {n["NodeID"] for n in __import__("ray").nodes() if n["Alive"]}
    assert nodes <= alive
    assert (tmp_path / "ray" / "DONE").is_file() and (tmp_path / "ray" / "model.safetensors").is_file()

    def losses(out):
        return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]

    # the same global batch in one process gives the same losses
    run_sft(SFTConfig(**common, out=str(tmp_path / "one"), batch_size=8))
    assert losses(tmp_path / "ray") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)


def test_ppo_on_two_ray_train_workers(two_node_cluster, tiny_model_dir, tmp_path):
    """`workers: 2` for PPO: each worker rolls out half of every iteration's prompts and
    scores half of the held-out ones; rank 0 alone writes the lines and files."""
    from pathlib import Path

    from cai.train.ppo import PPOConfig, run_ppo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {t}."}) + "\n"
                               for t in ("cats", "rain", "chess", "bread", "salt", "maps")))
    reward = str(Path(__file__).with_name("ppo_reward_fns.py")) + ":length"
    summary = run_ppo(PPOConfig(
        model=str(tiny_model_dir), reward=reward, prompts=str(prompts), out=str(tmp_path / "ppo"),
        iterations=2, rollout_batch_size=4, minibatch_size=4, micro_batch_size=2, ppo_epochs=1,
        max_tokens=4, eval_size=2, eval_every=2, backend="transformers", cpu=True,
        progress=False, mixed_precision="no", workers=2, ray=two_node_cluster.address))
    assert len({w["node_id"] for w in summary["workers"]}) == 2
    rows = [json.loads(l) for l in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], "eval/reward" in r) for r in rows] == [(0, True), (1, False),
                                                                    (2, True)]
    samples = (tmp_path / "ppo" / "eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == 4  # 2 evaluations x 2 held-out prompts, one worker each
    assert summary["iterations"] == 2 and Path(summary["policy"], "config.json").is_file()


def test_ray_settings_need_workers():
    with pytest.raises(ValueError, match="without workers"):
        SFTConfig(out="o", data=["d"], ray="127.0.0.1:6379")


def test_workers_in_a_pipeline_training_section(tmp_path):
    from cai.config import load_section
    from cai.train.rm import RMConfig

    spec = tmp_path / "p.yaml"
    spec.write_text("rm:\n  data: pairs.jsonl\n  out: o\n  workers: 4\n  gpus_per_worker: 1\n"
                    "  strategy: deepspeed_zero2\n")
    cfg = load_section(spec, "rm", RMConfig, {"ray": "10.0.0.1:6379"})
    assert (cfg.workers, cfg.gpus_per_worker, cfg.ray, cfg.strategy) == (
        4, 1.0, "10.0.0.1:6379", "deepspeed_zero2")
    # PPO's section takes them too; ray without workers is refused as for sft/rm
    from cai.train.ppo_config import PPOConfig

    spec.write_text("ppo:\n  model: m\n  reward: r.py:f\n  prompts: p.jsonl\n  out: o\n"
                    "  workers: 2\n")
    ppo = load_section(spec, "ppo", PPOConfig, {"ray": "10.0.0.1:6379"})
    assert (ppo.workers, ppo.ray) == (2, "10.0.0.1:6379")
    with pytest.raises(ValueError, match="without workers"):
        PPOConfig(model="m", reward="r.py:f", prompts="p.jsonl", out="o", ray="10.0.0.1:6379")
