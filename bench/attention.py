"""SFT training time per attention kernel: ours (`run_sft`) on the same data, once per kernel
in the order given (repeat one to bracket the other against the machine's drift).

    flock /tmp/cai-heavy.lock .venv/bin/python bench/attention.py eager sdpa eager

Data: the conversations `bench/train_sft.py` writes (run it once first), 1 epoch, batch 8,
max length 256, the embedded model, mixed precision `auto`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernels", nargs="+", choices=["auto", "eager", "sdpa"])
    ap.add_argument("--data", default="/tmp/cai-bench-train-sft/messages.jsonl")
    ap.add_argument("--out", default="/tmp/cai-bench-attention")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"{args.data}: run bench/train_sft.py first (it writes the data)")

    from cai.models import pull
    from cai.train.sft import SFTConfig, run_sft

    for i, kernel in enumerate(args.kernels):
        out = Path(args.out) / f"{i}-{kernel}"
        shutil.rmtree(out, ignore_errors=True)
        summary = run_sft(SFTConfig(model=str(pull()), data=[args.data], out=str(out), lr=2e-5, epochs=1,
                                    batch_size=8, max_length=256, seed=0, eval_fraction=0.0,
                                    save_every=None, progress=False, attn_implementation=kernel),
                          log=lambda *a: None)
        print(f"{kernel:<6} ({summary['attn_implementation']}): training time "
              f"{summary['train_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
