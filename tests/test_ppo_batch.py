"""PPO's batch layout: rows of a micro-batch leave out the columns that are padding in all of
them, and give the log-probs and values the full-width rows give (tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

from cai.train.ppo_experience import Batch, response_logprobs, response_values

EOS = 2


def _full_rows(batch: Batch, idx):
    return {"input_ids": batch.input_ids[idx], "attention_mask": batch.attention_mask[idx],
            "position_ids": batch.position_ids[idx]}


def test_rows_leave_out_shared_padding_by_hand():
    prompts = [[11, 12, 13], [21, 22, 23, 24, 25], [31, 32]]
    responses = [[41, EOS, 43, 44], [51, 52], [61, 62, 63, 64]]  # row 0 stops at its EOS
    b = Batch(prompts, responses, pad=0, eos_ids=[EOS], device="cpu")
    assert (b.P, b.R) == (5, 4)
    assert b.response_lens.tolist() == [2, 2, 4]
    rows, P, r = b.rows(torch.tensor([0, 1]))
    assert (P, r) == (5, 2)  # row 1's prompt is 5 wide; both responses end by column 2
    assert rows["input_ids"].tolist() == [[0, 0, 11, 12, 13, 41, EOS], [21, 22, 23, 24, 25, 51, 52]]
    rows, P, r = b.rows(torch.tensor([0, 2]))
    assert (P, r) == (3, 4)
    assert rows["input_ids"].tolist() == [[11, 12, 13, 41, EOS, 43, 44], [0, 31, 32, 61, 62, 63, 64]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 4, 4], [0, 0, 1, 2, 3, 4, 5]]
    assert b.by_length().tolist() == [0, 2, 1]  # lengths 3+2, 5+2, 2+4
    assert b.by_length(torch.tensor([1, 2])).tolist() == [2, 1]


def test_trimmed_micro_batches_give_the_full_width_numbers(embedded_tokenizer):
    from conftest import build_tiny_llama
    from transformers import LlamaForSequenceClassification

    policy = build_tiny_llama(embedded_tokenizer)
    torch.manual_seed(1)
    value = LlamaForSequenceClassification(policy.config).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    responses = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (6, 2, 8, 4)]
    responses[1] = responses[1] + [EOS, 77, 78]  # tokens after EOS are masked
    b = Batch(prompts, responses, pad=0, eos_ids=[EOS], device="cpu")
    with torch.no_grad():
        full_lp, _ = response_logprobs(policy, _full_rows(b, torch.arange(4)), b.P, 0.7)
        full_v = response_values(value, _full_rows(b, torch.arange(4)), b.P)
        for idx in (torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([1])):
            rows, P, r = b.rows(idx)
            assert rows["input_ids"].shape[1] < b.P + b.R
            lp, _ = response_logprobs(policy, rows, P, 0.7)
            v = response_values(value, rows, P)
            m = b.mask[idx, :r].bool()
            assert lp.shape == (len(idx), r) and v.shape == (len(idx), r)
            assert torch.allclose(lp[m], full_lp[idx, :r][m], atol=1e-5)
            assert torch.allclose(v[m], full_v[idx, :r][m], atol=1e-5)


def test_resume_check_names_changed_fields_and_takes_new_ones_at_their_default():
    """A run saved before a field existed ran at that field's default: resuming with the
    default is no change; with another value it is, by name."""
    from cai.train.ppo_config import PPOConfig, config_diff

    current = PPOConfig(model="p", reward="r", prompts="x.jsonl", out="o").model_dump()
    saved = {k: v for k, v in current.items() if k != "mixed_precision"}
    assert config_diff(saved, current) == []
    assert config_diff(saved, {**current, "mixed_precision": "bf16"}) == ["mixed_precision"]
    assert config_diff({**saved, "lr": 1.0}, current) == ["lr"]
    # a moved run directory, other checkpoint settings or another engine memory share still
    # resume
    assert config_diff(saved, {**current, "out": "elsewhere", "save_every": 5,
                               "keep_checkpoints": 9, "resume": True, "progress": False,
                               "backend_options": {"gpu_memory_utilization": 0.5}}) == []


def test_default_rollout_backend_is_vllm_where_it_is_installed(monkeypatch):
    import importlib.util

    import torch

    from cai.train.ppo_rollout import default_rollout_backend

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert default_rollout_backend("cuda") == "transformers"  # a training-only image
    assert default_rollout_backend("cpu") == "transformers"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert default_rollout_backend("cuda") == "vllm"
    assert default_rollout_backend("cpu") == "vllm"  # faster per iteration on CPU too (bench/ppo.py)
    assert default_rollout_backend("mps") == "transformers"  # no vLLM platform there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_rollout_backend("cuda") == "transformers"


def test_vllm_kv_cache_is_sized_for_the_rollout_batch(tmp_path):
    """Keys and values, every layer, every KV head: 2 x 2 layers x 2 heads x 16 dims x 4 bytes
    = 512 bytes a token in fp32, half in bf16."""
    import torch
    from transformers import LlamaConfig

    from cai.train.ppo_rollout import kv_cache_bytes

    LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                intermediate_size=128, vocab_size=100).save_pretrained(tmp_path)
    assert kv_cache_bytes(str(tmp_path), torch.float32, 10) == 5120
    assert kv_cache_bytes(str(tmp_path), torch.bfloat16, 10) == 2560


@pytest.mark.parametrize("old,new", [("output_dir", "out"), ("learning_rate", "lr"),
                                     ("lora", "lora_r"), ("policy", "model"),
                                     ("max_new_tokens", "max_tokens"),
                                     ("rollout_backend", "backend"),
                                     ("vllm_gpu_memory_utilization",
                                      "backend_options.gpu_memory_utilization")])
def test_old_ppo_keys_are_refused_naming_the_new_one(tmp_path, old, new):
    """A PPO section written before the shared vocabulary fails to load, and the error names
    the key that replaced the old one (no silent alias)."""
    from cai.config import ConfigError, load_section
    from cai.train.ppo_config import PPOConfig

    section = {"model": "m", "reward": "r", "prompts": "p.jsonl", "out": "o"}
    section.pop({"output_dir": "out", "policy": "model"}.get(old, ""), None)  # the old one instead
    section[old] = {"lora": "true", "learning_rate": "1.0e-4", "max_new_tokens": "8",
                    "rollout_backend": "vllm", "vllm_gpu_memory_utilization": "0.3"}.get(old, "x")
    path = tmp_path / "pipeline.yaml"
    path.write_text("ppo:\n" + "".join(f"  {k}: {v}\n" for k, v in section.items()))
    with pytest.raises(ConfigError, match=f"`{old}` is now `{new}`"):
        load_section(path, "ppo", PPOConfig)
    fixed = {"model": "m", "reward": "r", "prompts": "p.jsonl", "out": "o"}
    assert PPOConfig(**fixed).lr == 1e-5  # and the new spellings load


def test_ppo_defaults_and_the_engine_share():
    """PPO keeps its own defaults over the shared ones; the vLLM share lives in
    backend_options and defaults to 0.1; a LoRA rank switches LoRA on (policy and value)."""
    from cai.train.ppo_config import PPOConfig

    c = PPOConfig(model="m", reward="r", prompts="p", out="o")
    assert (c.lr, c.lr_scheduler, c.save_every, c.keep_checkpoints, c.lora_alpha, c.max_tokens,
            c.backend, c.lora_r, c.gpu_memory_utilization) == (1e-5, "constant", 1, 2, 32, 64,
                                                               None, None, 0.1)
    assert not c.lora and not c.value_lora_on
    c = PPOConfig(model="m", reward="r", prompts="p", out="o", lora_r=8,
                  backend_options={"gpu_memory_utilization": 0.4})
    assert c.lora and c.value_lora_on and c.gpu_memory_utilization == 0.4
    with pytest.raises(ValueError, match="only gpu_memory_utilization"):
        PPOConfig(model="m", reward="r", prompts="p", out="o", backend_options={"x": 1})
    with pytest.raises(ValueError, match="model"):
        PPOConfig(reward="r", prompts="p", out="o")  # PPO needs a policy to start from
