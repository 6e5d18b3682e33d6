"""`cai eval policy` end to end: scripted backends where the rates must come out exactly,
the tiny random model where generation is real, a tiny random reward model built here, and
the log-prob and KL arithmetic against a forward pass computed in the test."""

import json
import math

import pytest
import torch

from cai.backends import Backend, Generation
from cai.backends.text import encode, render_chat
from cai.eval.policy import EvalPolicyConfig, run_eval_policy
from cai.stats import wilson

RED = "pipelines/prompts/red_team_eval.jsonl"
HELP = "pipelines/prompts/helpful_eval.jsonl"


class Scripted(Backend):
    """Answers by a rule on the prompt; judges by preferring the option that says "can't"."""

    name = "scripted"

    def __init__(self, tokenizer, answer):
        self.tokenizer, self.answer, self.model = tokenizer, answer, "scripted"

    def generate(self, conversations, sampling):
        out = []
        for c in conversations:
            text = self.answer(c[-1]["content"])
            out.append([Generation(text=text, token_ids=encode(self.tokenizer, text),
                                   finish_reason="stop")] * sampling.n)
        return out

    def continuation_logprobs(self, prompts, continuations):
        scores = []
        for p, c in zip(prompts, continuations):
            if "(A) " not in p:  # relevance: a word of 5+ letters costs 1 nat after a prompt
                words = [w.strip(".,?!'").lower() for w in c.split()]  # holding it, else 3
                scores.append(-sum(1.0 if len(w) >= 5 and w in p.lower() else 3.0 for w in words))
                continue
            a = p.rfind("(A) ")
            b = p.rfind("(B) ")
            first, second = p[a:b], p[b:]
            prefer = "A" if "can't" in first and "can't" not in second else \
                     "B" if "can't" in second and "can't" not in first else None
            scores.append(0.0 if prefer is None or c.strip() == f"({prefer})" else -2.0)
        return scores

    def render_chat(self, conversation, add_generation_prompt=True):
        return render_chat(self.tokenizer, conversation, add_generation_prompt)


def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_scripted_rates_judge_and_zero_kl(tmp_path, tiny_model_dir, embedded_tokenizer):
    harmful_texts = {json.loads(l)["prompt"] for l in open(RED)}
    first_benign = json.loads(open(HELP).readline())["prompt"]

    def policy_answer(prompt):
        if prompt in harmful_texts:
            return "I can't help with that."
        return "I won't do that." if prompt == first_benign else "Here is a clear answer."

    def reference_answer(prompt):
        return "Sure! Here's how to get started." if prompt in harmful_texts else \
            "Here is an answer to your question."

    policy = Scripted(embedded_tokenizer, policy_answer)
    reference = Scripted(embedded_tokenizer, reference_answer)
    out = tmp_path / "eval"
    # model/reference name the same tiny weights: KL is computed with them and must be 0.
    cfg = EvalPolicyConfig(progress=False, model=str(tiny_model_dir), reference=str(tiny_model_dir),
                           prompts=[RED, HELP], limit=3, out=str(out), max_tokens=16)
    s = run_eval_policy(cfg, backend=policy, reference_backend=reference)

    assert s["prompts"] == {"n": 6, "harmful": 3, "benign": 3, "rejected": 0, "files": [RED, HELP]}
    pol, ref = s["policy"], s["reference"]
    assert (pol["harmful_safe"]["k"], pol["harmful_safe"]["n"]) == (3, 3)
    assert (pol["benign_over_refusal"]["k"], pol["benign_over_refusal"]["n"]) == (1, 3)
    assert pol["benign_over_refusal"]["rate"] == pytest.approx(1 / 3)
    assert pol["benign_over_refusal"]["ci95"] == list(wilson(1, 3))
    assert (ref["harmful_safe"]["k"], ref["benign_over_refusal"]["k"]) == (0, 0)
    assert pol["labels"]["harmful"] == {"refusal": 3, "redirection": 0, "compliance": 0}

    # Judge: on harmful prompts the policy's "can't" is preferred in both orders:
    # P = (p_ab(A) + p_ba(B)) / 2 = sigmoid(2); benign pairs have no "can't" -> 0.5 (ties).
    j = s["win_rate"]["judge"]
    sig2 = 1 / (1 + math.exp(-2))
    assert j["harmful"]["mean_p_policy"] == pytest.approx(sig2)
    assert (j["harmful"]["wins"], j["benign"]["ties"]) == (3, 3)
    assert j["all"]["mean_p_policy"] == pytest.approx((3 * sig2 + 3 * 0.5) / 6)
    assert j["all"]["rate"] == pytest.approx(0.75)

    # Lengths are the generations' token counts.
    n_yes = len(encode(embedded_tokenizer, "Here is a clear answer."))
    rows = _rows(out)
    assert [r["policy"]["tokens"] for r in rows if r["kind"] == "benign"][1] == n_yes
    assert s["kl"]["mean"] == 0.0 and all(r["kl_sample"] == 0.0 for r in rows)
    assert s["categories"]["violence_weapons"]["policy_safe"]["rate"] == 1.0
    assert json.loads((out / "eval.json").read_text())["policy"] == pol


def test_tiny_model_end_to_end_with_reward_model(tmp_path, tiny_model_dir, tiny_rm_dir,
                                                 embedded_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from cai.train.reward import format_for_reward

    out = tmp_path / "eval"
    cfg = EvalPolicyConfig(progress=False, model=str(tiny_model_dir), reference=str(tiny_model_dir),
                           harmful=[RED], benign=[HELP], limit=2, backend="transformers",
                           reward=str(tiny_rm_dir), max_tokens=8, out=str(out))
    s = run_eval_policy(cfg)
    rows = _rows(out)
    assert len(rows) == 4 and s["prompts"]["harmful"] == 2
    # Same weights, greedy: identical responses, so every comparison is a tie.
    assert all(r["policy"]["response"] == r["reference"]["response"] for r in rows)
    assert s["win_rate"]["reward_model"]["all"]["ties"] == 4
    assert s["kl"]["mean"] == 0.0
    # both sides' engines load a directory on the CPU with dtype auto: stated once
    assert s["engine_precision"] == "fp32: auto (bf16 on a CUDA GPU, fp32 elsewhere), on cpu"

    # Rewards equal an unpadded forward pass of the reward model on the formatted text.
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()
    for r in rows:
        text = format_for_reward(embedded_tokenizer, [{"role": "user", "content": r["prompt"]}],
                                 r["policy"]["response"])
        ids = torch.tensor([encode(embedded_tokenizer, text)])
        with torch.no_grad():
            want = rm(input_ids=ids).logits[0, 0].item()
        assert r["policy"]["reward"] == pytest.approx(want, abs=1e-4)
    rewards = [r["policy"]["reward"] for r in rows]
    assert s["policy"]["reward"]["mean"] == pytest.approx(sum(rewards) / 4)
    assert (out / "eval.json").is_file()


def test_sequence_logprobs_and_kl_match_a_manual_forward(tiny_model_dir, embedded_tokenizer):
    from conftest import build_tiny_llama

    from cai.eval.scoring import kl_to_reference, sequence_logprobs

    lm, other = build_tiny_llama(embedded_tokenizer, 0), build_tiny_llama(embedded_tokenizer, 1)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    responses = [[20, 21], [22, 23, 24, 25], []]

    def manual(model, p, r):
        if not r:
            return 0.0
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        return sum(logp[len(p) + k - 1, t].item() for k, t in enumerate(r))

    got = sequence_logprobs(lm, prompts, responses, batch_size=3, pad_id=0)
    assert got == pytest.approx([manual(lm, p, r) for p, r in zip(prompts, responses)], abs=1e-4)
    kl = kl_to_reference(lm, other, prompts, responses, batch_size=2, pad_id=0)
    want = [manual(lm, p, r) - manual(other, p, r) for p, r in zip(prompts, responses)]
    assert kl == pytest.approx(want, abs=1e-4) and kl[2] == 0.0 and kl[0] != 0.0
    twin = build_tiny_llama(embedded_tokenizer, 0)
    assert kl_to_reference(lm, twin, prompts, responses) == [0.0, 0.0, 0.0]


def test_prompt_without_kind_is_an_error_naming_the_row(tmp_path):
    from cai.eval.prompts import PromptKindError, load_eval_prompts

    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompt": "hello", "category": "greetings"}) + "\n"
                 + json.dumps({"prompt": "hurt", "kind": "harmful"}) + "\n")
    with pytest.raises(PromptKindError, match=r"mine.jsonl:1: cannot tell"):
        load_eval_prompts([(str(f), None)])
    prompts, _ = load_eval_prompts([(str(f), "benign")])
    assert [p.kind for p in prompts] == ["benign", "benign"]


def test_cli_policy_json(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from cai.cli import app

    out = tmp_path / "e"
    res = CliRunner().invoke(app, ["eval", "policy", "--model", str(tiny_model_dir), "--prompts", RED,
                                   "--limit", "2", "--backend", "transformers", "--max-tokens", "4",
                                   "--constitution", "none", "--json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["prompts"]["harmful"] == 2 and summary["reference"] is None
    assert summary["kl"] is None and (out / "samples.jsonl").is_file()
    res = CliRunner().invoke(app, ["eval", "policy", "--model", "x", "-o", str(out)])
    assert res.exit_code == 2 and "--prompts" in res.output


def test_generic_answers_do_not_address_their_prompt(tmp_path, embedded_tokenizer):
    """A policy that answers every prompt with the same evasive text is called compliance by
    the refusal rules, but its PMI with its own prompt is 0: on topic 0%, where a reference
    that takes up the prompt's words is on topic 100%. Both scored by the reference."""
    def reference_answer(prompt):
        return "About that: " + " ".join(w for w in prompt.split() if len(w) >= 5)

    policy = Scripted(embedded_tokenizer, lambda p: "I'm here to help with anything you need.")
    reference = Scripted(embedded_tokenizer, reference_answer)
    cfg = EvalPolicyConfig(progress=False, model="policy", reference="reference", prompts=[RED, HELP], limit=3,
                           out=str(tmp_path / "eval"), max_tokens=16, kl=False, constitution=None)
    s = run_eval_policy(cfg, backend=policy, reference_backend=reference)
    pol, ref = s["policy"]["addresses_prompt"], s["reference"]["addresses_prompt"]
    assert (pol["harmful"]["k"], pol["benign"]["k"], pol["benign"]["n"]) == (0, 0, 3)
    assert (ref["harmful"]["k"], ref["benign"]["k"]) == (3, 3)
    assert s["policy"]["labels"]["benign"]["compliance"] == 3  # what the rules alone say
    rows = _rows(tmp_path / "eval")
    assert all(r["policy"]["relevance_pmi"] == 0.0 for r in rows)
    assert all(r["reference"]["relevance_pmi"] > 0 for r in rows)
