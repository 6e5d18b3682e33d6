"""Progress: one bar per stage (requests done, generated tokens/s), and the end summary."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

from cai.backends import finished
from cai.generate.config import STAGES
from cai.generate.pipeline import StageCall
from cai.generate.report import format_report
from cai.progress import ticking

_LABELS = {"response": "respond", "critique": "critique", "revision": "revise"}


class Progress:
    """tqdm bars on stderr. A stage call is one blocking engine call over a chunk; a bar
    moves as the engine finishes its requests (`in_call`, where the backend reports them)
    or else once per call. Its postfix is that stage's generated tokens/s so far."""

    def __init__(self, records: int, prompts: int, rounds: int, enabled: bool = True,
                 make: Any = None) -> None:
        # `make`: the run signature's `progress` factory (cai.config.progress_bar by default)
        from cai.config import progress_bar

        make = make or progress_bar
        totals = {"response": prompts, "critique": records * rounds, "revision": records * rounds}
        self.bars = {s: make(total=totals[s], desc=f"{_LABELS[s]:>8}", unit="req", position=i,
                             disable=not enabled or totals[s] == 0, leave=True)
                     for i, s in enumerate(STAGES)}
        self._reported: Counter[str] = Counter()  # finished so far in the running call
        self.tokens: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.scoring: Counter[str] = Counter()  # seconds per scoring step

    def observe(self, call: StageCall) -> None:
        if call.stage not in self.bars:  # a scoring step (route, verdict, relevance): no tokens
            self.scoring[call.stage] += call.seconds
            return
        self.tokens[call.stage] += call.tokens
        self.seconds[call.stage] += call.seconds
        self.requests[call.stage] += call.requests
        bar = self.bars[call.stage]
        # the requests the engine reported finished during the call are on the bar already
        self._step(bar, call.requests - min(self._reported.pop(call.stage, 0), call.requests))
        rate = self.tokens[call.stage] / max(self.seconds[call.stage], 1e-9)
        bar.set_postfix_str(f"{self.tokens[call.stage]} tok, {rate:.0f} tok/s")

    @contextmanager
    def in_call(self, stage: str) -> Iterator[None]:
        """Around one engine call of `stage`: its bar moves as the backend reports requests
        finished (`cai.backends.finished`; `observe` at the call's end counts the rest) and
        is redrawn every second, so its clock moves while the requests that all stop at
        max_tokens are still running."""
        if stage not in self.bars:
            yield
            return
        bar = self.bars[stage]

        def done(n: int) -> None:
            self._reported[stage] += n
            self._step(bar, n)

        with ticking(bar), finished.reporting(done):
            yield

    @staticmethod
    def _step(bar: Any, n: int) -> None:
        # the three bars open together, but critiques start after every answer: a bar's
        # clock (its rate and ETA) starts with its own first step, not the run's
        if bar.n == 0 and n and hasattr(bar, "reset"):
            bar.reset(total=bar.total)
        bar.update(n)

    def chunk_done(self, prompts: int, records: int, rounds: int) -> None:
        """Count the requests a chunk did not need (chains that stopped early) as done."""
        want = {"response": prompts, "critique": records * rounds, "revision": records * rounds}
        for stage, bar in self.bars.items():
            bar.update(max(0, min(bar.total, self._chunk_base[stage] + want[stage]) - bar.n))
        self.start_chunk()

    def start_chunk(self) -> None:
        self._chunk_base = {s: b.n for s, b in self.bars.items()}

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def stats(self) -> dict[str, Any]:
        total_tokens = sum(self.tokens.values())
        total_s = sum(self.seconds.values())
        return {
            "tokens": {**{s: self.tokens[s] for s in STAGES}, "total": total_tokens},
            "requests": {s: self.requests[s] for s in STAGES},
            "generate_s": round(total_s, 3),
            "tokens_per_s": round(total_tokens / total_s, 1) if total_s else 0.0,
            "scoring_s": {k: round(v, 3) for k, v in sorted(self.scoring.items())},
        }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"cai generate: {summary['out']}"]
    status = ", ".join(f"{k} {v}" for k, v in summary["status"].items()) or "none"
    lines.append(f"  records   {summary['records']} ({summary['new_records']} new this run, "
                 f"{summary['already_done']} already done): {status}")
    lines.append(f"  rejects   {summary['rejects']}"
                 + (f" ({', '.join(f'{k} {v}' for k, v in summary['reject_reasons'].items())})"
                    if summary["reject_reasons"] else ""))
    t = summary["tokens"]
    lines.append(f"  tokens    {t['total']} generated (response {t['response']}, critique "
                 f"{t['critique']}, revision {t['revision']})")
    lines.append(f"  speed     {summary['tokens_per_s']} tok/s over {summary['generate_s']} s "
                 f"in the engine; wall time {summary['wall_s']} s")
    lines.append(f"  outputs   sft {summary['sft']}, preferences {summary['preferences']}")
    rec = summary.get("recommended")
    if rec:
        lines.append(f"  settings  recommended for {rec['model']} (unset by you): "
                     + ", ".join(f"{k} {v}" for k, v in rec["applied"].items()))
    if summary.get("report"):
        lines.append(format_report(summary["report"]))
    return "\n".join(lines)
