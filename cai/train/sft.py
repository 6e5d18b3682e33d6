"""Supervised fine-tuning (SL-CAI): `SFTConfig` + `run_sft`, on the sft/ output of
`cai generate` or any chat-messages dataset. The loss is on assistant tokens only, with
the conversation rendered by the model's own chat template.

The assistant mask is found by rendering prefixes: the text of messages[:i] with the
generation prompt marks where assistant turn i starts, and the text of messages[:i+1] where
it ends (its end-of-turn marker included, trailing whitespace not). Both must be prefixes
of the full rendering, which holds for ordinary templates; a template for which it does not
is refused with a clear error rather than trained on a wrong mask. Tokens whose character
span overlaps an assistant span are trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from cai.config import progress_bar, say
from cai.io import DataError
from cai.schema import write_rejects
from cai.train.config import TrainingConfig

REJECTS_FILE = "rejects.jsonl"


class SFTConfig(TrainingConfig):
    lr: float = Field(2e-5, gt=0.0, description="learning rate")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                 description="share of prompts held out when eval_data is unset")
    messages_field: str = Field("messages", description="column holding the conversation")
    overlong: str = Field("truncate", pattern="^(truncate|drop)$",
                          description="conversations over max_length: cut the end, or drop")
    eval_batch_size: int = Field(16, ge=1, description="conversations per held-out batch")


class TemplateError(ValueError):
    """The chat template renders a prefix that is not a prefix of the whole conversation."""


def assistant_char_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(full text, character spans of the assistant turns in it)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not full.startswith(before) or not full.startswith(through):
            raise TemplateError("the chat template renders a conversation prefix that is not a "
                                f"prefix of the whole conversation (at message {i}); cannot "
                                "find the assistant tokens")
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def encode_conversation(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(token ids, labels) with labels = -100 outside assistant turns."""
    full, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for tok, (a, b) in zip(ids, enc["offset_mapping"]):
        inside = any(a < e and b > s for s, e in spans) if b > a else \
            any(s <= a < e for s, e in spans)
        labels.append(tok if inside else -100)
    return ids, labels


def collate_sft(pad_id: int) -> Callable[[list[dict]], dict]:
    import torch

    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = torch.tensor(it["input_ids"])
            labels[i, :n] = torch.tensor(it["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _split(convs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a share of prompts (the messages before the last assistant turn)."""
    if fraction <= 0 or len(convs) < 2:
        return convs, []
    from cai.records import prompt_key, stable_id

    def key(c):
        last = max(i for i, m in enumerate(c["messages"]) if m["role"] == "assistant")
        return prompt_key(c["messages"][:last] or c["messages"][:1])

    keys = sorted({key(c) for c in convs}, key=lambda k: (stable_id(seed, k), k))
    n = min(max(round(fraction * len(keys)), 1), len(keys) - 1)
    held = set(keys[:n])
    return [c for c in convs if key(c) not in held], [c for c in convs if key(c) in held]


def encode_all(convs, tokenizer, config: SFTConfig, log) -> list[dict]:
    out, cut, dropped, empty = [], 0, 0, 0
    for c in convs:
        ids, labels = encode_conversation(tokenizer, c["messages"])
        if len(ids) > config.max_length:
            if config.overlong == "drop":
                dropped += 1
                continue
            ids, labels = ids[:config.max_length], labels[:config.max_length]
            cut += 1
        if all(x == -100 for x in labels[1:]):
            empty += 1  # truncation left no assistant token to learn from
            continue
        out.append({"input_ids": ids, "labels": labels})
    if cut or dropped or empty:
        log(f"over {config.max_length} tokens: {cut} conversations truncated, {dropped} dropped; "
             f"{empty} left with no assistant token after truncation, skipped")
    return out


def run_sft(config: SFTConfig, *, backend: Any = None, log: Callable[[str], None] = say,
            progress: Callable[..., Any] = progress_bar,
            before_step: Callable[[Any, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune a causal LM on conversations; returns the summary (also in DONE). The output
    directory is a HF model directory (`cai chat --model OUT`, vLLM)."""
    from cai.train.accel import make_dataloader
    from cai.train.loop import run_loop
    from cai.train.modeling import load_causal_lm
    from cai.train.supervised import (build_model, finished_run, open_run, run_summary,
                                       save_and_finish, start_run_dir)

    if config.workers:
        from cai.train.config import run_on_workers

        return run_on_workers(config, run_sft, log)
    if (finished := finished_run(config, log)) is not None:
        return finished
    run = open_run(config, log)
    train_convs, eval_convs, rejects = read_sft_data(config)
    start_run_dir(config, run, lambda: _print_rejects(rejects, run.run_dir.path, run.log))
    train, held = encode_splits(train_convs, eval_convs, run.tokenizer, config, run.log)
    run.log(f"sft: {len(train)} conversations, {len(held)} held out")

    model, parameters = build_model(
        config, run, load_causal_lm, task_type="CAUSAL_LM", rows=config.batch_size,
        max_len=max(len(x["input_ids"]) for x in train + held))
    collate = collate_sft(run.tokenizer.pad_token_id)
    loader = make_dataloader(train, batch_size=config.batch_size, collate_fn=collate,
                             shuffle=True, seed=config.seed)
    accelerator = run.accelerator
    result, model = run_loop(
        config, accelerator=accelerator, run_dir=run.run_dir, model=model, train_loader=loader,
        compute_loss=lambda m, batch: token_mean_loss(accelerator, m, batch),
        evaluate=(lambda m: held_out_loss(accelerator, m, held, collate,
                                          config.eval_batch_size)) if held else None,
        count_tokens=lambda b: int(b["attention_mask"].sum()),
        count_samples=lambda b: int(b["input_ids"].shape[0]), desc="train sft",
        before_step=before_step, progress=progress)
    summary = run_summary("sft", config, run, model, result, parameters, {
        "train_conversations": len(train), "eval_conversations": len(held),
        "rejected_rows": len(rejects)})
    return save_and_finish(config, run, model, summary)


def read_sft_data(config: SFTConfig) -> tuple[list[dict], list[dict], list]:
    """(training conversations, held-out conversations, rejected rows); no usable training
    conversation is an error naming the first rejected row."""
    from cai.train.data import read_conversations

    convs, rejects = [], []
    for path in config.data:
        c, r = read_conversations(path, config.messages_field)
        convs += c
        rejects += r
    if config.eval_data:
        train_convs, eval_convs = convs, read_conversations(config.eval_data,
                                                            config.messages_field)[0]
    else:
        train_convs, eval_convs = _split(convs, config.eval_fraction, config.seed)
    if not train_convs:
        raise DataError(f"{', '.join(config.data)}: no usable conversations"
                        + (f" ({len(rejects)} rejected; first: {rejects[0].location}: "
                           f"{rejects[0].reason})" if rejects else ""))
    return train_convs, eval_convs, rejects


def _print_rejects(rejects, out: Path, log) -> None:
    write_rejects(rejects, out / REJECTS_FILE)
    if rejects:
        log(f"rejected {len(rejects)} rows; listed in {out / REJECTS_FILE}")
        for r in rejects[:3]:
            log(f"  {r.location}: {r.reason}")


def encode_splits(train_convs, eval_convs, tokenizer, config: SFTConfig,
                  log) -> tuple[list[dict], list[dict]]:
    """(training, held-out) encoded conversations; none left for training is an error."""
    train = encode_all(train_convs, tokenizer, config, log)
    held = encode_all(eval_convs, tokenizer, config, log)
    if not train:
        raise DataError(f"{', '.join(config.data)}: no conversation fits max_length="
                        f"{config.max_length} with an assistant token left")
    return train, held


def token_mean_loss(accelerator, model, batch: dict) -> tuple[Any, dict]:
    """The mean loss over the global batch's assistant tokens, as one process would get it:
    transformers' causal-LM loss is shifted, summed over the tokens whose label is not -100
    and divided by that count over all ranks; DDP averages gradients over the ranks, so it is
    scaled by their number."""
    tokens = (batch["labels"][:, 1:] != -100).sum()
    if accelerator.num_processes > 1:
        tokens = accelerator.reduce(tokens, "sum")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], use_cache=False, num_items_in_batch=tokens.clamp(min=1))
    return out.loss * accelerator.num_processes, {}


def held_out_loss(accelerator, model, held: list[dict], collate, batch_size: int) -> dict:
    """The token-mean loss on the held-out conversations: each rank scores every
    num_processes-th one, and the sums are all-reduced."""
    import torch

    mine = held[accelerator.process_index::accelerator.num_processes]
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = collate(mine[start:start + batch_size])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**batch, use_cache=False).loss
            total_loss += loss.item() * n
            total_tokens += n
    sums = torch.tensor([total_loss, total_tokens], dtype=torch.float64,
                        device=accelerator.device)
    if accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, "sum")
    loss_sum, tokens = sums.tolist()
    return {"loss": loss_sum / max(tokens, 1), "tokens": int(tokens)}
