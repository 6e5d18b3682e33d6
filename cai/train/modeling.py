"""Loading models and tokenizers for training, LoRA, and saving the result as a plain
Hugging Face directory (safetensors) that `cai chat`, vLLM and `from_pretrained` load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from cai.models import ModelError, resolve_model

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_training_model(name_or_path: str | None) -> str:
    """The model's path (registry name, directory or hub id), checked for a tokenizer."""
    path = resolve_model(name_or_path)
    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{p}: model directory has no tokenizer (none of "
                         f"{', '.join(_TOKENIZER_FILES)}); save the tokenizer beside the "
                         "weights (tokenizer.save_pretrained(DIR))")
    return path


def load_tokenizer(path: str):
    """The model's own tokenizer; a missing pad token becomes the EOS token (training pads
    on the right, and the reward head finds the last real token by the pad id)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load the tokenizer ({e})") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if not getattr(tok, "chat_template", None):
        raise ModelError(f"{path}: the tokenizer has no chat template; training formats "
                         "conversations with the model's own template")
    return tok


# Eager attention keeps each layer's [rows, heads, T, T] attention weights for the backward;
# above this many bytes of them the model's default (SDPA) is kept
EAGER_ATTENTION_BUDGET = 2 * 2**30


def text_config(path: str):
    """The model's config, or its language model's for a multimodal one (`text_config`)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return getattr(config, "text_config", None) or config


def pick_attn_implementation(requested: str, path: str, *, on_cpu: bool, rows: int,
                             max_len: int) -> str | None:
    """The attention kernel to train with; None = the model's default (SDPA). `auto`: eager
    on a CPU when its saved attention weights fit EAGER_ATTENTION_BUDGET, because at these
    lengths SDPA's CPU backward is the slower one (bench/ppo.py: PPO's update 1.32x faster)."""
    if requested != "auto":
        return requested
    if not on_cpu:
        return None
    text = text_config(path)
    heads = getattr(text, "num_attention_heads", None)
    layers = getattr(text, "num_hidden_layers", None)
    if not heads or not layers:
        return None
    saved = rows * heads * max_len ** 2 * 4 * layers
    return "eager" if saved <= EAGER_ATTENTION_BUDGET else None


def zero_dropout(config) -> None:
    """Set every dropout probability in a model config to 0 (PPO: its ratios compare
    log-probs of the same tokens from two forward passes, which dropout would make disagree)."""
    for key, value in list(config.to_dict().items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)


def load_config(path: str, *, no_dropout: bool = False, **values: Any):
    """The model's config with `values` set before the model is built from it (so they shape
    it, e.g. pad_token_id becomes the embedding's padding_idx); `no_dropout`: zero_dropout."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if no_dropout:
        zero_dropout(config)
    for key, value in values.items():
        setattr(config, key, value)
    return config


def load_causal_lm(path: str, tokenizer, attn_implementation: str | None = None, *,
                   config=None):
    """fp32 weights; `config` (from load_config) replaces the directory's own."""
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"config": config} if config is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation=attn_implementation, **extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_reward_model(path: str, tokenizer, attn_implementation: str | None = None, *,
                      config=None):
    """A scalar head on the model (num_labels=1). pad_token_id must be set in the config:
    the sequence-classification head reads the score at the last token that is not padding.
    `config` (from load_config) replaces the directory's own; num_labels is set to 1 in it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if config is not None:
        config.num_labels = 1
    extra = {"config": config} if config is not None else {"num_labels": 1}
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                               attn_implementation=attn_implementation,
                                                               **extra)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_lora(model, config, *, task_type: str):
    """Wrap `model` with peft LoRA adapters when `config.lora_r` is set ("CAUSAL_LM" or
    "SEQ_CLS"; for SEQ_CLS peft also trains the new score head)."""
    if config.lora_r is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type=task_type)
    return get_peft_model(model, lora)


def enable_gradient_checkpointing(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # LoRA: frozen embeddings would cut the graph
    model.config.use_cache = False


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_hf_model(accelerator, model, tokenizer, out_dir: str | os.PathLike, *,
                  merge_lora: bool = True, extra_files: dict[str, Any] | None = None) -> None:
    """Save the trained model + tokenizer into `out_dir` (safetensors).

    Written into a temp directory first, then each file is moved into place, so `out_dir`
    never holds a half-written model file. The caller marks the run done afterwards."""
    out = Path(out_dir)
    tmp = out / ".model-tmp"
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP/DeepSpeed shards
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        unwrapped = accelerator.unwrap_model(model)
        if hasattr(unwrapped, "peft_config"):
            if merge_lora:
                unwrapped = unwrapped.merge_and_unload()
                unwrapped.save_pretrained(tmp, safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp, safe_serialization=True)
        else:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        tmp.rmdir()
    accelerator.wait_for_everyone()
