"""fp32 against bf16 autocast on this machine's CPU: one matmul of the embedded model's MLP
shape, then a forward and a forward+backward of the embedded model itself: what
`mixed_precision: auto` buys on a CPU with AMX, where it picks bf16.

    flock /tmp/cai-heavy.lock .venv/bin/python bench/precision.py [--tokens 112] [--rows 4]

Prints the time of each in both precisions and the ratio fp32/bf16, measured in this run.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext


def timed(fn, repeat: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=112, help="tokens per row (PPO bench: ~48 prompt + 64)")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from cai.models import pull
    from cai.train.accel import cpu_has_bf16_matmul, pick_mixed_precision

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, AMX: {cpu_has_bf16_matmul()}, "
          f"mixed_precision auto -> {pick_mixed_precision('auto', cpu=True)}")
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        rows.append(timed(lambda: a @ b, 50))
    flops = 2 * 1024 * 576 * 1536
    print(f"matmul 1024x576 @ 576x1536: fp32 {flops / rows[0] / 1e9:,.0f} GFLOPS, "
          f"bf16 {flops / rows[1] / 1e9:,.0f} GFLOPS, ratio {rows[0] / rows[1]:.2f}x")

    model = AutoModelForCausalLM.from_pretrained(str(pull()), dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.tokens))

    def step(autocast: bool, train: bool) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
        grad = nullcontext() if train else torch.no_grad()
        with grad:
            with ctx:
                logits = model(input_ids=ids, use_cache=False).logits.float()
                loss = logits.log_softmax(-1).mean()
            if train:
                loss.backward()
                model.zero_grad(set_to_none=True)

    for train in (False, True):
        fp32 = timed(lambda: step(False, train), args.repeat)
        bf16 = timed(lambda: step(True, train), args.repeat)
        name = "forward+backward" if train else "forward"
        print(f"embedded model {name}, {args.rows}x{args.tokens} tokens: fp32 {fp32:.3f} s, "
              f"bf16 autocast {bf16:.3f} s, ratio {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
