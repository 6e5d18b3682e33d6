"""PPO's update with the response logits taken at exactly the scoring positions gives the
parameters the previous way (the last R+1 positions, the last one sliced off) gave: one
iteration's update (2 epochs of one minibatch in two accumulating micro-batches) on a tiny
random Llama, LoRA policy and value model, run both ways from the same start."""

from __future__ import annotations

import torch

from cai.train import losses as L
from cai.train import ppo
from cai.train.ppo_config import PPOConfig
from cai.train.ppo_experience import Batch, Experience


def _old_response_logprobs(model, rows, P, temperature, with_entropy=False):
    labels = rows["input_ids"][:, P:]
    logits = model(**rows, use_cache=False,
                   logits_to_keep=labels.shape[1] + 1).logits[:, :-1].float() / temperature
    logp = L.logprobs_from_logits(logits, labels)
    return (logp, L.entropy_from_logits(logits)) if with_entropy else (logp, None)


class _NoEngine:
    last_logprobs = None


def _updated(model_dir, tmp_path, name: str):
    from cai.train.ppo_setup import load_models, make_accelerator

    cfg = PPOConfig(model=str(model_dir), reward="unused:fn", prompts="unused",
                    out=str(tmp_path / name), lora_r=4, rollout_batch_size=4, minibatch_size=4,
                    micro_batch_size=2, ppo_epochs=2, max_tokens=6, seed=0, lr=1e-2,
                    temperature=0.7)
    acc, _ = make_accelerator(cfg)
    models = load_models(cfg, acc, lambda msgs, texts: [float(len(t) % 5) for t in texts],
                         updates_per_iteration=2)
    models.engine = _NoEngine()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (3, 9, 5, 12)]
    responses = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (6, 2, 5, 3)]
    batch = Batch(prompts, responses, models.tokenizer.pad_token_id, models.eos_ids, acc.device)
    exp = Experience(iteration=0, messages=[[{"role": "user", "content": "x"}]] * 4, batch=batch)
    exp = ppo.advantages(cfg, ppo.score(cfg, models, exp), 0.05)
    stats = ppo.update(cfg, models, exp, last_checkpoint=None)
    params = {f"policy.{k}": v.detach().clone() for k, v in models.policy.named_parameters()}
    params |= {f"value.{k}": v.detach().clone() for k, v in models.value_model.named_parameters()}
    return params, stats, exp


def test_update_gives_the_old_paths_parameters(tiny_model_dir, tmp_path, monkeypatch):
    new, new_stats, new_exp = _updated(tiny_model_dir, tmp_path, "new")
    monkeypatch.setattr(ppo, "response_logprobs", _old_response_logprobs)
    old, old_stats, old_exp = _updated(tiny_model_dir, tmp_path, "old")
    assert torch.allclose(new_exp.logp, old_exp.logp, atol=1e-6)
    assert torch.allclose(new_exp.entropy, old_exp.entropy, atol=1e-5)
    assert new.keys() == old.keys()
    trained = [k for k in new if "lora_" in k]
    assert trained and any(not torch.equal(new[k], 0 * new[k]) for k in trained if "lora_B" in k)
    for k in new:
        # float rounding only: the two backward graphs add the same terms in another order
        assert torch.allclose(new[k], old[k], atol=1e-5), (k, (new[k] - old[k]).abs().max().item(), new[k].abs().max().item())
    for k in new_stats:
        assert abs(new_stats[k] - old_stats[k]) < 1e-5, k
