"""What a LoRA PPO run leaves in policy/: by default a full HF model with the adapter merged
in (what sample, eval and vLLM load as any model directory); with merge_lora=False the
adapter alone. Both hold the same trained policy."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from cai.train.ppo import PPOConfig, run_ppo

REWARD = str(Path(__file__).parent / "ppo_reward_fns.py") + ":length"


def _run(policy: Path, prompts: Path, out: Path, **kw) -> dict:
    return run_ppo(PPOConfig(
        model=str(policy), reward=REWARD, prompts=str(prompts), out=str(out),
        iterations=1, rollout_batch_size=4, minibatch_size=4, micro_batch_size=4, ppo_epochs=1,
        max_tokens=6, temperature=1.0, lr=5e-2, missing_eos_penalty=None,
        backend="transformers", cpu=True, lora_r=4, progress=False, **kw))


def test_lora_policy_is_saved_merged_by_default(tiny_model_dir, tmp_path):
    from peft import PeftModel

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {t}."}) + "\n"
                               for t in ("cats", "rain", "chess", "bread")))
    merged = Path(_run(tiny_model_dir, prompts, tmp_path / "merged")["policy"])
    adapter = Path(_run(tiny_model_dir, prompts, tmp_path / "adapter", merge_lora=False)["policy"])

    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    assert (adapter / "adapter_config.json").is_file()
    assert (merged / "tokenizer_config.json").is_file()

    ids = torch.tensor([[1, 42, 77, 300, 5]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        peft_logits = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)(ids).logits
    # the same trained policy either way, and training did move it
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3
    # the value model is a loadable full model too
    assert (merged.parent / "value_model" / "model.safetensors").is_file()

    # `cai run` runs ppo again, with resume, in a directory it kept (same config and inputs):
    # the step returns that run's summary instead of refusing it
    summary = json.loads((merged.parent / "summary.json").read_text())
    config = PPOConfig(**json.loads((merged.parent / "ppo_config.json").read_text()))
    assert run_ppo(config.model_copy(update={"resume": True}))["last"] == summary["last"]
