"""Shared by bench/train_rm.py and bench/train_sft.py: the throwaway TRL venv and the data.

TRL (trl==1.16.0) goes into its own venv under /tmp, never into .venv: the venv has no
packages of its own except trl (installed --no-deps), and a .pth file that puts this
project's site-packages behind it, so TRL runs on the very same torch/transformers builds.

Data (say what it is): pairs synthesised from the prompt files. For a red-team prompt the
preferred answer is a refusal with a safe alternative and the other a compliant opener; for
a helpful prompt the preferred answer engages and the other is a needless refusal. Each
side is drawn from several phrasings, so the length of an answer says nothing about which
is preferred. The 52 hand-written pairs of human_prefs.jsonl are added to the eval set.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "pipelines" / "prompts"
TRL_VERSION = "1.16.0"

REFUSE = ["I can't help with that, because it could hurt people. If you want, I can point you to "
          "safer information instead.",
          "I won't give instructions for this. It could cause real harm. Is there something "
          "related but safe I can help with?",
          "Sorry, that's not something I can assist with. I'm happy to talk about staying safe, "
          "though.",
          "No. That would put people at risk. If you're in a difficult situation, I can help you "
          "find support or a legal way forward."]
COMPLY = ["Sure! Here's how you can do it. First, gather what you need, then follow these steps "
          "carefully and you'll get it done.",
          "Great question, this is easy. Start by getting the materials, then do it when nobody "
          "is watching.",
          "Absolutely, here's a step-by-step plan that works well.",
          "Of course. The trick is to be quick and quiet; here is exactly what to do."]
HELP = ["Happy to help. The usual approach is to start with the simplest option, check that it "
        "works, and only then try the more involved fixes.",
        "Good question. Here's what usually works: take it one step at a time and check each "
        "step before moving on.",
        "Sure. The short answer is yes, and here is how to do it safely and well.",
        "Here's a practical way to do it, with one caveat to watch out for along the way."]
NEEDLESS = ["I'm sorry, but I can't help with that request.",
            "I can't assist with this, as it might be unsafe. Please consult a professional.",
            "Unfortunately I'm not able to answer questions like this one, for safety reasons, "
            "and I'd recommend you look elsewhere for this kind of information.",
            "That's not something I can help with."]


def _prompts(name: str) -> list[dict]:
    return [json.loads(l) for l in (PROMPTS / name).read_text().splitlines() if l.strip()]


def synth_pairs(files: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for name in files:
        harmful = name.startswith("red_team")
        for p in _prompts(name):
            good, bad = (REFUSE, COMPLY) if harmful else (HELP, NEEDLESS)
            rows.append({"prompt": [{"role": "user", "content": p["prompt"]}],
                         "chosen": [{"role": "assistant", "content": rng.choice(good)}],
                         "rejected": [{"role": "assistant", "content": rng.choice(bad)}]})
    return rows


def human_pairs() -> list[dict]:
    out = []
    for r in _prompts("human_prefs.jsonl"):
        out.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trl_python(venv: Path) -> Path:
    """A venv with trl==TRL_VERSION over this interpreter's site-packages; its python."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import trl; print(trl.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == TRL_VERSION:
        return py
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    import site

    ours = [p for p in site.getsitepackages() if p.endswith("site-packages")][0]
    theirs = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(theirs, "cai-project-site.pth").write_text(ours + "\n")
    # pip (from our site-packages, via the .pth) installs into the venv's own prefix
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", f"trl=={TRL_VERSION}"],
                   check=True)
    version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    assert version == TRL_VERSION, version
    return py


def run_trl_script(py: Path, script: str, *args: str) -> tuple[dict, float]:
    """Run `script` with the throwaway venv's python; returns the JSON it printed after
    "TRL_RESULT " and the wall seconds, or exits with the script's stderr."""
    import time

    t = time.perf_counter()
    res = subprocess.run([str(py), "-c", script, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = [l for l in res.stdout.splitlines() if l.startswith("TRL_RESULT ")]
    if res.returncode or not line:
        sys.exit(f"TRL run failed:\n{res.stderr[-3000:]}")
    return json.loads(line[0][len("TRL_RESULT "):]), wall


def add_precision_flag(ap) -> None:
    ap.add_argument("--mixed-precision", choices=["no", "bf16"], default=None,
                    help="both sides: fp32, or bf16 autocast with fp32 weights (TRL: bf16=True). "
                         "Default: what ours picks for this machine (auto: bf16 on a CPU with AMX)")


def resolve_precision(requested: str | None) -> str:
    from cai.train.accel import pick_mixed_precision

    return requested or pick_mixed_precision("auto", cpu=True)
