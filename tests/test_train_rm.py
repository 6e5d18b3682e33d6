"""The reward model and the training core, for real on a tiny random Llama: the head reads
the last real token, a marker preference is learned, kill -9 + resume matches an
uninterrupted run, the NaN guard, reruns, and bad input."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from child_env import child_env

from cai.io import DataError
from cai.models import ModelError
from cai.train.config import ConfigError
from cai.train.metrics import NonFiniteLossError
from cai.train.reward import format_for_reward
from cai.train.rm import RMConfig, run_rm

WORDS = "apple river stone cloud paper light garden window music table chair lamp".split()


def write_marker_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """Pairs whose chosen answer contains the word 'banana' (the rejected never does)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        b = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        pos = rng.randint(0, 3)
        chosen = " ".join(a.split()[:pos] + ["banana"] + a.split()[pos:])
        rows.append({"prompt": f"Tell me something, number {i}.", "chosen": chosen,
                     "rejected": b})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_config(model_dir, data, out, **kw) -> RMConfig:
    # fp32, named: these tests check numbers and thresholds set in fp32, whatever auto picks
    # (test_bf16_training_is_autocast_around_the_same_loss covers bf16)
    base = dict(model=str(model_dir), data=[str(data)], out=str(out), lr=1e-3, batch_size=8,
                max_length=64, log_every=1, save_every=None, progress=False, mixed_precision="no")
    base.update(kw)
    return RMConfig(**base)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# --------------------------------------------------------------------------- the reward head


def test_reward_is_read_at_the_last_non_pad_token(tiny_model_dir):
    import torch

    from cai.train.modeling import load_reward_model, load_tokenizer
    from cai.train.reward import encode_for_reward, pad_right, score_ids

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_reward_model(str(tiny_model_dir), tok).eval()
    prompt = [{"role": "user", "content": "Hi"}]
    short, _ = encode_for_reward(tok, prompt, "Yes.", 64)
    long, _ = encode_for_reward(tok, prompt, "A much longer answer with many more words.", 64)
    assert tok.decode(short).endswith("Yes.<|im_end|>\n")
    ids, mask = pad_right([short, long], tok.pad_token_id)
    assert ids[0, len(short):].eq(tok.pad_token_id).all()  # right padding
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        alone = model(input_ids=torch.tensor([short])).logits[0, 0]
        hidden = model.model(input_ids=torch.tensor([short])).last_hidden_state
        by_hand = model.score(hidden[0, -1])[0]
    assert batched[0].item() == pytest.approx(alone.item(), abs=1e-5)
    assert alone.item() == pytest.approx(by_hand.item(), abs=1e-5)
    # the pad id (<|im_end|>) inside the text does not move the read position
    assert short.count(tok.pad_token_id) >= 2
    assert score_ids(model, [long, short], tok.pad_token_id)[1] == pytest.approx(alone.item(),
                                                                                 abs=1e-5)


def test_pack_pairs_layout_by_hand():
    from cai.train.reward import pack_pairs, shared_prefix_length

    assert shared_prefix_length([1, 2, 3, 4], [1, 2, 5]) == 2
    assert shared_prefix_length([1, 2], [1, 2, 3]) == 1  # each side keeps its last token
    b = pack_pairs([[1, 2, 3, 4], [7, 8]], [[1, 2, 5], [9]], pad_id=0)
    # row 0: prefix [1 2], chosen rest [3 4], rejected rest [5]; row 1: no common prefix
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    assert b["chosen_index"].tolist() == [3, 1] and b["rejected_index"].tolist() == [4, 2]
    assert b["tokens"] == 4 + 3 + 2 + 1
    m = b["attention_mask"][:, 0].int().tolist()
    assert m[0] == [[1, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0],
                    [1, 1, 1, 0, 0],
                    [1, 1, 1, 1, 0],
                    [1, 1, 0, 0, 1]]  # the rejected token sees the prefix and itself
    assert m[1] == [[1, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0],
                    [0, 0, 1, 0, 0],
                    [0, 0, 0, 1, 0],  # padding sees only itself
                    [0, 0, 0, 0, 1]]


@pytest.mark.parametrize("attn,lora", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_shared_prompt_gives_the_rewards_and_gradients_of_separate_sequences(tiny_model_dir,
                                                                              attn, lora):
    import torch
    from transformers import AutoModelForSequenceClassification

    from cai.train.modeling import load_tokenizer
    from cai.train.reward import encode_for_reward
    from cai.train.rm import collate_pairs, pair_rewards

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=1, attn_implementation=attn)
    model.config.pad_token_id = tok.pad_token_id
    if lora:  # the head is then peft's trainable copy, found through the wrapper
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                 task_type="SEQ_CLS"))
    items = []
    for q, c, r in [("Hi", "Hello there, how can I help?", "Go away."),
                    ("What is 2+2?", "4", "It is four, of course, as everyone knows."),
                    ("Name a colour.", "Blue.", "Blue!")]:
        prompt = [{"role": "user", "content": q}]
        items.append({"chosen": encode_for_reward(tok, prompt, c, 64)[0],
                      "rejected": encode_for_reward(tok, prompt, r, 64)[0], "p": 1.0})
    results = []
    for share in (False, True):
        batch = collate_pairs(tok.pad_token_id, share)(items)
        model.zero_grad()
        rc, rr = pair_rewards(model, batch)
        (rc - 2 * rr).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((rc.detach(), rr.detach(), grads, batch["input_ids"].numel()))
    (c0, r0, g0, n0), (c1, r1, g1, n1) = results
    assert torch.allclose(c0, c1, atol=1e-5) and torch.allclose(r0, r1, atol=1e-5)
    assert torch.allclose(g0, g1, atol=1e-5, rtol=1e-4)
    assert n1 < 0.75 * n0  # the prompt ran once


def test_score_pairs_equals_scoring_each_sequence(tiny_model_dir):
    from cai.train.modeling import load_reward_model, load_tokenizer
    from cai.train.reward import encode_for_reward, score_ids, score_pairs

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_reward_model(str(tiny_model_dir), tok).eval()
    chosen, rejected = [], []
    for i in range(7):
        prompt = [{"role": "user", "content": "Question number " + "very " * i + f"{i}?"}]
        chosen.append(encode_for_reward(tok, prompt, "Yes. " * (i + 1), 64)[0])
        rejected.append(encode_for_reward(tok, prompt, "No" + "!" * (7 - i), 64)[0])
    c, r = score_pairs(model, chosen, rejected, tok.pad_token_id, batch_size=4)
    each = score_ids(model, chosen + rejected, tok.pad_token_id, batch_size=3)
    assert c == pytest.approx(each[:7], abs=1e-5) and r == pytest.approx(each[7:], abs=1e-5)


def test_shared_prompt_falls_back_where_the_attention_takes_no_4d_mask(tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    from cai.train import reward
    from cai.train.modeling import load_reward_model, load_tokenizer

    model = load_reward_model(str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
    assert reward.takes_shared_prompt(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "'flash_attention_2' takes no custom 4D mask" in reward.takes_shared_prompt(model)
    # run_rm then says so and trains on separate sequences
    monkeypatch.setattr(reward, "takes_shared_prompt", lambda m: "no 4D mask here")
    printed = []
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 16)
    summary = run_rm(rm_config(tiny_model_dir, data, tmp_path / "rm", eval_fraction=0.0,
                               max_steps=1), log=printed.append)
    assert "share_prompt off: no 4D mask here; chosen and rejected run as separate sequences" \
        in printed and summary["steps"] == 1


def test_over_long_pairs_keep_the_end_or_drop(tiny_model_dir, tmp_path):
    from cai.train.data import load_preferences
    from cai.train.modeling import load_tokenizer
    from cai.train.rm import tokenize_pairs

    tok = load_tokenizer(str(tiny_model_dir))
    data = tmp_path / "p.jsonl"
    long_answer = "word " * 80 + "THE END"
    data.write_text(json.dumps({"prompt": "q", "chosen": long_answer, "rejected": "short"}) + "\n"
                    + json.dumps({"prompt": "r", "chosen": "fine", "rejected": "ok"}) + "\n")
    recs, _, _, _ = load_preferences([str(data)], None, 0.0, 0)
    pairs, counts = tokenize_pairs(recs, tok, rm_config(tiny_model_dir, data, tmp_path / "o",
                                                        max_length=40))
    assert counts == {"truncated": 1, "dropped": 0} and len(pairs) == 2
    cut = next(p for p in pairs if len(p["chosen"]) == 40)
    assert tok.decode(cut["chosen"]).endswith("THE END<|im_end|>\n")
    pairs, counts = tokenize_pairs(recs, tok, rm_config(tiny_model_dir, data, tmp_path / "o",
                                                        max_length=40, overlong="drop"))
    assert counts == {"truncated": 0, "dropped": 1} and len(pairs) == 1


# --------------------------------------------------------------------------- training


def test_tiny_model_learns_a_marker_preference(tiny_model_dir, tmp_path):
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 120)
    summary = run_rm(rm_config(tiny_model_dir, data, tmp_path / "rm", epochs=2,
                               eval_fraction=0.25, log_every=5, max_length=48))
    ev = summary["eval"]
    assert summary["attn_implementation"] == "eager"  # auto, on the CPU, short rows
    assert ev["n"] == 30  # 25% of 120 prompts, each prompt one pair
    assert ev["accuracy"] >= 0.9, ev
    # human pairs carry no principle: all 30 under "(none)", with the overall accuracy
    assert {k: v["n"] for k, v in ev["by_principle"].items()} == {"(none)": 30}
    assert ev["by_principle"]["(none)"]["accuracy"] == ev["accuracy"]
    out = tmp_path / "rm"
    assert json.loads((out / "eval.json").read_text())["by_principle"] == ev["by_principle"]
    assert (out / "DONE").is_file() and (out / "model.safetensors").is_file()
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["n"] == 2 * summary["train_pairs"] and stats["std"] > 0
    # the saved directory loads as a reward model and ranks a held-out pair the same way
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.train.reward import score

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.pad_token_id == tok.pad_token_id
    prompt = [{"role": "user", "content": "Tell me something, number 999."}]
    good, bad = score(model, tok, [(prompt, "river banana stone"), (prompt, "river lamp stone")],
                      max_length=64)
    assert good > bad
    # the split is by prompt: no eval prompt among the training prompts
    mix = summary["mix"]
    assert mix["test"] == 30 and mix["train"] == 90


def test_finished_run_rerun_is_a_no_op(tiny_model_dir, tmp_path):
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 16)
    cfg = rm_config(tiny_model_dir, data, tmp_path / "rm", max_steps=2, eval_fraction=0.0)
    run_rm(cfg)
    weights = (tmp_path / "rm" / "model.safetensors").stat().st_mtime_ns
    again = run_rm(cfg)
    assert again["skipped"] is True
    assert (tmp_path / "rm" / "model.safetensors").stat().st_mtime_ns == weights
    with pytest.raises(ConfigError, match=r"lr \(was 0.001, now 0.002\)"):
        run_rm(cfg.model_copy(update={"lr": 2e-3}))


_CHILD = """
import sys, time
from cai.train.rm import RMConfig, run_rm
cfg = RMConfig.model_validate_json(sys.argv[1])
run_rm(cfg, before_step=lambda model, step: time.sleep(float(sys.argv[2])))
"""


def test_resume_after_sigkill_matches_uninterrupted_training(tiny_model_dir, tmp_path):
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 40)
    # 40 pairs, 4 per batch, 2 batches per step: 5 steps per epoch, so step 8 is in epoch 2
    common = dict(max_steps=8, epochs=2, save_every=2, eval_fraction=0.0, batch_size=4,
                  grad_accum=2)
    full = rm_config(tiny_model_dir, data, tmp_path / "full", **common)
    run_rm(full)
    expected = losses(tmp_path / "full")
    assert sorted(expected) == list(range(1, 9))

    cut = rm_config(tiny_model_dir, data, tmp_path / "cut", **common)
    env = child_env()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, cut.model_dump_json(), "0.3"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-00000004" / "trainer_state.json"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # into step 5 or 6, past the checkpoint
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert ckpt.is_file() and not (tmp_path / "cut" / "DONE").exists()
    with pytest.raises(ConfigError, match="--resume"):
        run_rm(cut)  # an unfinished run is not silently restarted
    with pytest.raises(ConfigError, match=r"batch_size \(was 4, now 8\)"):
        run_rm(cut.model_copy(update={"resume": True, "batch_size": 8}))
    summary = run_rm(cut.model_copy(update={"resume": True}))
    assert summary["steps"] == 8
    got = losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 9))  # lines past the checkpoint were replaced
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    import torch

    data = write_marker_pairs(tmp_path / "pairs.jsonl", 40)

    def poison(model, step):
        if step == 4:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    cfg = rm_config(tiny_model_dir, data, tmp_path / "rm", max_steps=6, save_every=2,
                    eval_fraction=0.0, batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 4.*step-00000002"):
        run_rm(cfg, before_step=poison)
    out = tmp_path / "rm"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "DONE").exists() and not (out / "model.safetensors").exists()
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    summary = run_rm(cfg.model_copy(update={"resume": True}))  # and it resumes cleanly
    assert summary["steps"] == 6


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_get_located_errors(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: empty dataset"):
        run_rm(rm_config(tiny_model_dir, empty, tmp_path / "a"))

    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "yo"}]}) + "\n")
    with pytest.raises(DataError, match="sft.jsonl: this is chat conversations"):
        run_rm(rm_config(tiny_model_dir, sft, tmp_path / "b"))

    same = tmp_path / "same.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(8)]
    rows[2]["rejected"] = rows[2]["chosen"]
    same.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    run_rm(rm_config(tiny_model_dir, same, tmp_path / "c", max_steps=1, eval_fraction=0.0),
           log=lines.append)
    assert any("same.jsonl:3" in l and "identical" in l for l in lines), lines
    rejects = [json.loads(l) for l in (tmp_path / "c" / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == ["same.jsonl:3"]

    only_same = tmp_path / "only_same.jsonl"
    only_same.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n")
    with pytest.raises(DataError, match=r"no usable preference pairs.*only_same.jsonl:1"):
        run_rm(rm_config(tiny_model_dir, only_same, tmp_path / "d"))

    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((tiny_model_dir / f).read_bytes())
    with pytest.raises(ModelError, match="no-tokenizer: model directory has no tokenizer"):
        run_rm(rm_config(no_tok, same, tmp_path / "e"))
    assert not (tmp_path / "e").exists()  # nothing written for a run that cannot start


def test_format_for_reward_uses_the_models_template(embedded_tokenizer):
    text = format_for_reward(embedded_tokenizer, [{"role": "user", "content": "Q?"}], "A.")
    assert text.endswith("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA.<|im_end|>\n")


def test_bf16_training_is_autocast_around_the_same_loss(tiny_model_dir, tmp_path):
    """mixed_precision bf16 on CPU: the first step's loss is computed with bf16 matmuls (so
    it differs from fp32's in the low digits) around the same value, and training runs."""
    data = write_marker_pairs(tmp_path / "pairs.jsonl", 16)
    runs = {}
    for mp in ("no", "bf16"):
        run_rm(rm_config(tiny_model_dir, data, tmp_path / mp, max_steps=2, eval_fraction=0.0,
                         mixed_precision=mp))
        runs[mp] = losses(tmp_path / mp)
    assert runs["bf16"][1] != runs["no"][1]
    assert runs["bf16"][1] == pytest.approx(runs["no"][1], abs=0.02)
