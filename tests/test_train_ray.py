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
