"""Dump PPO metrics for before/after comparison (not committed)."""
import json, os, shutil, sys
from pathlib import Path
import pytest
sys.path.insert(0, str(Path(os.environ["CAI_TESTS"])))
from test_ppo import REWARD, _exclaiming_policy, TOPICS  # noqa
import inspect
from cai.train import ppo as P

DEST = Path(os.environ["PPO_DUMP"])

@pytest.fixture(scope="module")
def pol(tmp_path_factory, embedded_tokenizer):
    return _exclaiming_policy(tmp_path_factory, embedded_tokenizer)

@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Say something about {t}."}) + "\n" for i, t in enumerate(TOPICS)))
    return path

NEW = "lr" in P.PPOConfig.model_fields

def cfg(pol, prompts, out, **kw):
    base = dict(policy=str(pol), reward=REWARD, prompts=str(prompts), output_dir=str(out),
                iterations=3, rollout_batch_size=8, minibatch_size=8, micro_batch_size=4,
                ppo_epochs=2, max_new_tokens=12, temperature=1.0, learning_rate=1e-3,
                eval_size=4, eval_every=2, eval_temperature=1.0, eval_samples=2, missing_eos_penalty=None,
                rollout_backend="transformers", cpu=True, adaptive_kl=True, kl_target=2.0, kl_horizon=40)
    base.update(kw)
    if NEW:
        ren = {"policy": "model", "output_dir": "out", "learning_rate": "lr", "max_new_tokens": "max_tokens",
               "rollout_backend": "backend"}
        base = {ren.get(k, k): v for k, v in base.items()}
        if base.pop("lora", False):
            base.setdefault("lora_r", 16)
        else:
            base.pop("lora_r", None)
        base["progress"] = False
        return P.run_ppo(P.PPOConfig(**base))
    return P.run_ppo(P.PPOConfig(**base), progress=False)

@pytest.mark.parametrize("name,kw", [
    ("full", {}),
    ("lora_bf16", dict(lora=True, mixed_precision="bf16", rollout_dtype="bf16", learning_rate=3e-3, kl_estimator="k3", whiten_rewards=True, missing_eos_penalty=1.0)),
    ("lora_r4", dict(lora=True, lora_r=4, eval_every=0, eval_size=0, eval_samples=1, reward=REWARD.replace("target_share", "length"), adaptive_kl=False)),
])
def test_dump(pol, prompts, tmp_path, name, kw):
    out = tmp_path / name
    cfg(pol, prompts, out, **kw)
    DEST.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "metrics.jsonl", DEST / f"{name}.jsonl")
