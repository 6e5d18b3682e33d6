"""The run report: RUN_DIR/report.html (one self-contained file) and RUN_DIR/report.md.

`write_report(run_dir)` reads what the pipeline's stages left in the run directory, each
input optional (a skipped stage gives a section that says so):

    PPO metrics      ppo/metrics.jsonl (or metrics.jsonl): one JSON object per iteration
    RM evaluation    rm/eval.json (`cai train rm`'s held-out metrics) or rm_eval.json
    policy eval      eval/eval.json + eval/samples.jsonl (`cai eval policy`)

Sections: summary (before/after), reward and KL curves (train and held-out), reward-model
accuracy and calibration, refusal and over-refusal before/after, response lengths,
per-category breakdown, samples side by side, per-principle health (generate/, label/:
`cai.eval.health`). Plots are matplotlib PNGs embedded as base64
data URIs; the CSS is inline; there is no script and no external asset, so the file opens
anywhere, offline. Every piece of model text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from cai.stats import pct

# Candidate key names in a PPO metrics line, first match wins (the reader tolerates any).
STEP_KEYS = ("iteration", "iter", "step", "global_step", "epoch")
REWARD_KEYS = ("reward/raw", "reward/raw_mean", "reward/mean", "rewards/raw_mean", "reward_raw_mean",
               "score/mean", "env/reward_mean", "reward", "rewards/mean", "objective/scores")
KL_KEYS = ("kl", "kl/mean", "objective/kl", "policy/kl", "kl_mean")
EVAL_REWARD_KEYS = ("eval/reward", "eval/reward_mean", "eval/reward/raw_mean", "heldout/reward",
                    "held_out/reward", "eval_reward")
EVAL_KL_KEYS = ("eval/kl", "eval/kl_mean", "heldout/kl", "held_out/kl", "eval_kl")

SAMPLE_ROWS = 12  # samples shown side by side

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem;width:100%}
th,td{border:1px solid #d0d0d0;padding:.35rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.text{white-space:pre-wrap;max-width:28rem;font-size:.85rem}
.missing{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:.5rem .7rem;border-radius:4px}
.note{color:#555;font-size:.85rem}img{max-width:100%;height:auto;display:block;margin:.4rem 0}
.v-refusal{color:#0a6b2d}.v-redirection{color:#0a5a8c}.v-compliance{color:#9a2b1f}
"""


# --------------------------------------------------------------------------- reading inputs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a line that does not parse is skipped (a run killed while
    writing leaves at most a torn last line)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _stage_dirs(run_dir: Path, stage: str) -> list[Path]:
    """A stage's directory: <run>/<stage>, or with `cai run` rounds the last round's
    <run>/roundK/<stage> first (the policy that eval scored)."""
    rounds = [p for p in run_dir.glob(f"round*/{stage}") if p.parent.name[5:].isdigit()]
    rounds.sort(key=lambda p: int(p.parent.name[5:]), reverse=True)
    return rounds + [run_dir / stage]


def find_inputs(run_dir: Path) -> dict[str, Path | None]:
    """Where the report's inputs are in a run directory (None: not there)."""
    eval_json = _first([run_dir / "eval" / "eval.json", run_dir / "eval_policy" / "eval.json",
                        run_dir / "eval.json"])
    samples = eval_json.parent / "samples.jsonl" if eval_json else None
    return {
        "ppo_metrics": _first([d / "metrics.jsonl" for d in _stage_dirs(run_dir, "ppo")]
                              + [run_dir / "metrics.jsonl"]),
        "rm_eval": _first([d / "eval.json" for d in _stage_dirs(run_dir, "rm")] + [run_dir / "rm_eval.json",
                           run_dir / "eval_rm" / "eval.json", run_dir / "eval" / "rm.json"]),
        "policy_eval": eval_json,
        "samples": samples if samples and samples.is_file() else None,
    }


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def ppo_curves(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """{"reward", "kl", "eval_reward", "eval_kl"}: (iteration, value) points; a line without
    an iteration key gets its line index, a missing value is skipped."""
    curves: dict[str, list[tuple[float, float]]] = {"reward": [], "kl": [], "eval_reward": [],
                                                    "eval_kl": []}
    keys = {"reward": REWARD_KEYS, "kl": KL_KEYS, "eval_reward": EVAL_REWARD_KEYS,
            "eval_kl": EVAL_KL_KEYS}
    for i, row in enumerate(rows):
        step = _pick(row, STEP_KEYS)
        step = float(i) if step is None else step
        for name, ks in keys.items():
            v = _pick(row, ks)
            if v is not None:
                curves[name].append((step, v))
    return curves


def calibration_bins(rm: dict[str, Any]) -> list[dict[str, float]]:
    """The reliability bins of a `cai eval rm` summary (`bins`, from
    `cai.stats.reliability_bins`); empty when it has none."""
    return [b for b in rm.get("bins") or []
            if isinstance(b, dict) and b.get("count", 0) > 0
            and b.get("confidence") is not None and b.get("accuracy") is not None]


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    """The figure as a data URI (base64 PNG)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 6.4, h: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def plot_curve(train: list[tuple[float, float]], held: list[tuple[float, float]], ylabel: str,
               title: str) -> str:
    fig, ax = _figure()
    if train:
        ax.plot(*zip(*train), marker="o", ms=3, label="train (rollouts)")
    if held:
        ax.plot(*zip(*held), marker="s", ms=4, label="held-out prompts")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=.3)
    ax.legend()
    return _png(fig)


def plot_reliability(bins: list[dict[str, float]]) -> str:
    fig, ax = _figure(4.6, 4.2)
    ax.plot([0.5, 1.0], [0.5, 1.0], ls="--", color="grey", label="perfect calibration")
    # the bins are tenths of [0.5, 1] (cai.stats.reliability_bins), the empty ones left
    # out: one bin's width, not the span over the bins present
    ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins], width=0.045,
           alpha=.7, label="observed accuracy", edgecolor="black")
    for b in bins:
        ax.annotate(f"{int(b['count'])}", (b["confidence"], b["accuracy"]), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xlim(0.45, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("model confidence σ(|Δr|)")
    ax.set_ylabel("share of pairs where it is right")
    ax.set_title("Reward-model reliability (bars: pairs per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def plot_rates(ev: dict[str, Any]) -> str:
    """Grouped bars: harmful refusal/redirection and benign over-refusal, base vs policy,
    with 95% Wilson intervals."""
    fig, ax = _figure()
    metrics = [("harmful_safe", "harmful: refused or\nsafely redirected"),
               ("benign_over_refusal", "benign: over-refused")]
    sides = [(s, name) for s, name in (("reference", "before (reference)"), ("policy", "after (policy)"))
             if ev.get(s)]
    width = 0.8 / max(len(sides), 1)
    for j, (side, name) in enumerate(sides):
        xs, ys, lo, hi = [], [], [], []
        for i, (m, _) in enumerate(metrics):
            p = ev[side].get(m) or {}
            if p.get("rate") is None:
                continue
            xs.append(i + (j - (len(sides) - 1) / 2) * width)
            ys.append(100 * p["rate"])
            lo.append(max(0.0, 100 * (p["rate"] - p["ci95"][0])))  # rounding can cross
            hi.append(max(0.0, 100 * (p["ci95"][1] - p["rate"])))
        ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=4, label=name)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.0f}%", (x, y), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(metrics)), [m[1] for m in metrics])
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of prompts")
    ax.set_title("Refusal and over-refusal (95% Wilson intervals)")
    ax.legend()
    return _png(fig)


def plot_lengths(policy: list[int], reference: list[int]) -> str:
    fig, ax = _figure()
    top = max(policy + reference + [1])
    edges = [top * i / 20 for i in range(21)]
    if reference:
        ax.hist(reference, bins=edges, alpha=.55, label="before (reference)")
    if policy:
        ax.hist(policy, bins=edges, alpha=.55, label="after (policy)")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.set_title("Response lengths on held-out prompts")
    ax.legend()
    return _png(fig)


# --------------------------------------------------------------------------- formatting


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(p: dict[str, Any] | None) -> str:
    return pct(p, missing="–")  # the report's dash


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _table(headers: list[str], rows: list[list[str]], num_cols: set[int] = frozenset(),
           text_cols: set[int] = frozenset()) -> str:
    """An HTML table; cells are escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            cls = ' class="num"' if i in num_cols else ' class="text"' if i in text_cols else ""
            cells.append(f"<td{cls}>{_e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def before_after_rows(ev: dict[str, Any] | None, ppo_rows: list[dict[str, Any]] | None = None
                      ) -> list[list[str]]:
    """The summary table: refusal, over-refusal, KL, reward; before (reference) and after."""
    if not ev:
        return []
    ref, pol = ev.get("reference") or {}, ev.get("policy") or {}
    kl = (ev.get("kl") or {}).get("mean")

    def reward(side):
        r = (side or {}).get("reward") or {}
        return _f(r.get("mean"))

    rows = [["harmful prompts refused or safely redirected", _pct(ref.get("harmful_safe")),
             _pct(pol.get("harmful_safe"))],
            ["benign prompts over-refused", _pct(ref.get("benign_over_refusal")),
             _pct(pol.get("benign_over_refusal"))],
            ["harmful prompts answered on topic (PMI > 0)",
             _pct((ref.get("addresses_prompt") or {}).get("harmful")),
             _pct((pol.get("addresses_prompt") or {}).get("harmful"))],
            ["benign prompts answered on topic (PMI > 0)",
             _pct((ref.get("addresses_prompt") or {}).get("benign")),
             _pct((pol.get("addresses_prompt") or {}).get("benign"))],
            ["mean PMI of the answer with its own prompt (nats/token)",
             _f((ref.get("relevance_pmi") or {}).get("mean"), 2),
             _f((pol.get("relevance_pmi") or {}).get("mean"), 2)],
            ["KL(policy ‖ reference), nats per response", "0 (itself)" if ref else "–", _f(kl, 2)],
            ["mean reward (reward model)", reward(ref), reward(pol)],
            ["median response length (tokens)",
             _f((ref.get("length_tokens") or {}).get("median"), 0),
             _f((pol.get("length_tokens") or {}).get("median"), 0)]]
    return rows


def _win_rows(ev: dict[str, Any]) -> list[list[str]]:
    rows = []
    for judge, name in (("reward_model", "reward model"), ("judge", "AI-feedback judge (both orders)")):
        w = (ev.get("win_rate") or {}).get(judge)
        if not w:
            continue
        for group in ("all", "harmful", "benign"):
            g = w.get(group) or {}
            rows.append([name, group, _pct(g), f"{g.get('wins', 0)}/{g.get('ties', 0)}/{g.get('losses', 0)}",
                         _f(g.get("mean_p_policy")) if judge == "judge" else "–"])
    return rows


# --------------------------------------------------------------------------- the report


class _Doc:
    """The report as HTML and Markdown at once: each piece is written to both."""

    def __init__(self, title: str) -> None:
        self.h: list[str] = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                             f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
                             f"<h1>{_e(title)}</h1>"]
        self.md: list[str] = [f"# {title}", "", "Plots are in report.html beside this file.", ""]

    def section(self, name: str, anchor: str) -> None:
        self.h.append(f'<h2 id="{anchor}">{_e(name)}</h2>')
        self.md.extend([f"## {name}", ""])

    def missing(self, what: str, why: str) -> None:
        self.h.append(f'<p class="missing">{_e(what)}: {_e(why)}</p>')
        self.md.extend([f"_{what}: {why}_", ""])

    def table(self, headers, rows, num=frozenset(), text=frozenset()) -> None:
        self.h.append(_table(headers, rows, set(num), set(text)))
        self.md.extend([_md_table(headers, rows), ""])

    def html(self, fragment: str) -> None:
        self.h.append(fragment)


def write_report(run_dir: str | Path, *, ppo_metrics: str | Path | None = None,
                 rm_eval: str | Path | None = None, policy_eval: str | Path | None = None,
                 samples: str | Path | None = None, title: str | None = None,
                 sample_rows: int = SAMPLE_ROWS) -> dict[str, Path]:
    """Build RUN_DIR/report.html and RUN_DIR/report.md; returns their paths. Explicit paths
    override what `find_inputs` finds in the run directory."""
    from cai.io import atomic_write_text

    run_dir = Path(run_dir)
    found = find_inputs(run_dir)
    paths = {"ppo_metrics": Path(ppo_metrics) if ppo_metrics else found["ppo_metrics"],
             "rm_eval": Path(rm_eval) if rm_eval else found["rm_eval"],
             "policy_eval": Path(policy_eval) if policy_eval else found["policy_eval"]}
    paths["samples"] = (Path(samples) if samples else
                        (paths["policy_eval"].parent / "samples.jsonl"
                         if paths["policy_eval"] and (paths["policy_eval"].parent / "samples.jsonl").is_file()
                         else found["samples"]))
    ppo_rows = read_jsonl(paths["ppo_metrics"]) if paths["ppo_metrics"] else None
    rm = _read_json(paths["rm_eval"])
    ev = _read_json(paths["policy_eval"])
    sample_list = read_jsonl(paths["samples"]) if paths["samples"] else None

    doc = _Doc(title or f"cai run report: {run_dir.name}")
    _summary_section(doc, ev, ppo_rows)
    _curves_section(doc, ppo_rows, paths["ppo_metrics"])
    _rm_section(doc, rm)
    _refusal_section(doc, ev)
    _lengths_section(doc, ev, sample_list)
    _categories_section(doc, ev)
    _samples_section(doc, sample_list, sample_rows)
    _health_section(doc, run_dir)

    doc.html("</body></html>")
    out_html, out_md = run_dir / "report.html", run_dir / "report.md"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, "\n".join(doc.h))
    atomic_write_text(out_md, "\n".join(doc.md) + "\n")
    return {"html": out_html, "md": out_md}


def _summary_section(doc: _Doc, ev: dict | None, ppo_rows: list | None) -> None:
    doc.section("Before and after", "summary")
    if not ev:
        doc.missing("No policy evaluation", "eval/eval.json not found (the evaluation stage did not run)")
        return
    doc.table(["metric", "before (reference)", "after (policy)"], before_after_rows(ev, ppo_rows),
              num={1, 2})
    doc.html(f'<p class="note">policy: {_e(ev["config"].get("model"))}; reference: '
             f'{_e(ev["config"].get("reference") or "none")}; {ev["prompts"]["harmful"]} harmful and '
             f'{ev["prompts"]["benign"]} benign held-out prompts. Intervals: 95% Wilson.</p>')
    wins = _win_rows(ev)
    if wins:
        doc.table(["judge", "prompts", "policy win rate (ties ½)", "wins/ties/losses",
                   "mean P(policy better)"], wins, num={2, 3, 4})


def _curves_section(doc: _Doc, ppo_rows: list | None, source: Path | None) -> None:
    doc.section("Reward and KL during PPO", "curves")
    curves = ppo_curves(ppo_rows) if ppo_rows else None
    if not curves or not any(curves.values()):
        doc.missing("No PPO metrics", "ppo/metrics.jsonl not found or has no reward/KL values "
                                      "(the PPO stage was skipped or has not logged yet)")
        return
    for kind, label in (("reward", "reward"), ("kl", "KL to reference (nats)")):
        train, held = curves[kind], curves[f"eval_{kind}"]
        if train or held:
            doc.html(f'<img alt="{_e(kind)} curve" src="{plot_curve(train, held, label, label + " per iteration")}">')
        else:
            doc.missing(f"No {kind} values", "the metrics lines carry none of the known keys")
    last = ppo_rows[-1]
    doc.md.extend([f"{len(ppo_rows)} PPO metric lines; last: reward {_f(_pick(last, REWARD_KEYS))}, "
                   f"KL {_f(_pick(last, KL_KEYS))}, held-out reward {_f(_pick(last, EVAL_REWARD_KEYS))}, "
                   f"held-out KL {_f(_pick(last, EVAL_KL_KEYS))}.", ""])
    doc.html(f'<p class="note">{len(ppo_rows)} metric lines from {_e(source)}.</p>')


def _rm_section(doc: _Doc, rm: dict | None) -> None:
    doc.section("Reward model: accuracy and calibration", "rm")
    if not rm:
        doc.missing("No reward-model evaluation", "rm/eval.json not found (the reward-model stage was skipped)")
        return
    acc_ci = rm.get("accuracy_ci95")
    rows = [["held-out pairs", _f(rm.get("n") or rm.get("pairs"))],
            ["accuracy", _f(rm.get("accuracy")) + (f" [{acc_ci[0]:.3f}–{acc_ci[1]:.3f}]" if acc_ci else "")],
            ["ECE (expected calibration error)", _f(rm.get("ece"))],
            ["'prefer the longer answer' baseline", _f(rm.get("length_baseline"))],
            ["mean margin r(chosen) − r(rejected)", _f(rm.get("margin"))]]
    doc.table(["metric", "value"], rows, num={1})
    bins = calibration_bins(rm)
    if bins:
        doc.html(f'<img alt="reliability diagram" src="{plot_reliability(bins)}">')
    else:
        doc.missing("No reliability diagram", "the RM evaluation has no per-bin calibration data "
                                              "(only the ECE above)")


def _refusal_section(doc: _Doc, ev: dict | None) -> None:
    doc.section("Refusal and over-refusal, before and after", "refusal")
    if not ev:
        doc.missing("No refusal rates", "no policy evaluation")
        return
    doc.html(f'<img alt="refusal rates" src="{plot_rates(ev)}">')
    rows = []
    for side, name in (("reference", "before (reference)"), ("policy", "after (policy)")):
        s = ev.get(side)
        if not s:
            continue
        for kind in ("harmful", "benign"):
            lab = s["labels"][kind]
            rows.append([name, kind, str(lab["refusal"]), str(lab["redirection"]),
                         str(lab["compliance"])])
    doc.table(["model", "prompts", "refusal", "safe redirection", "compliance"], rows,
              num={2, 3, 4})
    doc.html('<p class="note">Verdicts from the transparent rule classifier '
             '(cai/eval/refusal.py); docs/eval.md says how it decides and its measured '
             'accuracy.</p>')


def _lengths_section(doc: _Doc, ev: dict | None, sample_list: list | None) -> None:
    doc.section("Response lengths", "lengths")
    if not sample_list:
        doc.missing("No length histogram", "eval/samples.jsonl not found")
        return
    pol = [int(r["policy"]["tokens"]) for r in sample_list if r.get("policy")]
    ref = [int(r["reference"]["tokens"]) for r in sample_list if r.get("reference")]
    doc.html(f'<img alt="length histogram" src="{plot_lengths(pol, ref)}">')
    rows = []
    for side, name in (("reference", "before (reference)"), ("policy", "after (policy)")):
        s = (ev or {}).get(side)
        if s:
            d, c = s["length_tokens"], s.get("reward_length") or {}
            rows.append([name, _f(d.get("mean"), 1), _f(d.get("median"), 0), _f(d.get("p90"), 0),
                         _f(c.get("pearson")), _f(c.get("spearman"))])
    if rows:
        doc.table(["model", "mean tokens", "median", "p90", "reward~length Pearson",
                   "Spearman"], rows, num={1, 2, 3, 4, 5})
        doc.html('<p class="note">A strong positive correlation of reward with length after '
                 'PPO is a sign of reward hacking by verbosity.</p>')


def _categories_section(doc: _Doc, ev: dict | None) -> None:
    doc.section("Per category", "categories")
    cats = (ev or {}).get("categories")
    if not cats:
        doc.missing("No per-category breakdown", "no policy evaluation")
        return
    rows = [[c, v["kind"], str(v["n"]), _pct(v.get("reference_safe")), _pct(v.get("policy_safe")),
             _f(v.get("reference_reward")), _f(v.get("policy_reward")),
             _f(v.get("judge_win_rate"))] for c, v in cats.items()]
    doc.table(["category", "kind", "n", "refused/redirected before", "after", "reward before",
               "reward after", "judge win rate"], rows, num={2, 3, 4, 5, 6, 7})


def _samples_section(doc: _Doc, sample_list: list | None, sample_rows: int) -> None:
    doc.section("Samples side by side", "samples")
    if not sample_list:
        doc.missing("No samples", "eval/samples.jsonl not found")
        return
    chosen = _pick_samples(sample_list, sample_rows)
    rows = []
    for r in chosen:
        ref, pol = r.get("reference") or {}, r.get("policy") or {}
        rows.append([r.get("id", ""), r.get("kind", ""), r.get("prompt", ""),
                     ref.get("response", "–"), pol.get("response", ""),
                     f"{ref.get('verdict', '–')} → {pol.get('verdict', '')}",
                     f"{_f(ref.get('reward'))} → {_f(pol.get('reward'))}"])
    doc.table(["id", "kind", "prompt", "before (reference)", "after (policy)", "verdict",
               "reward"], rows, text={2, 3, 4})
    doc.html(f'<p class="note">{len(chosen)} of {len(sample_list)} prompts (harmful and benign '
             'alternately); all are in eval/samples.jsonl.</p>')


def _pick_samples(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Harmful and benign rows alternately, in file order."""
    harmful = [r for r in rows if r.get("kind") == "harmful"]
    benign = [r for r in rows if r.get("kind") != "harmful"]
    out = []
    while len(out) < k and (harmful or benign):
        for group in (harmful, benign):
            if group and len(out) < k:
                out.append(group.pop(0))
    return out


def plot_health(health: dict[str, Any]) -> str:
    """Horizontal grouped bars per principle seen in the run: changed-answer rate,
    usable-revision rate, label position consistency and the reward model's held-out
    accuracy (%)."""
    metrics = [("changed_rate", "critique changed the answer"),
               ("usable_rate", "usable revisions"), ("consistency", "label consistency"),
               ("rm_accuracy", "reward model accuracy")]
    rows = [(pid, r) for pid, r in health["principles"].items()
            if any(r.get(m) is not None for m, _ in metrics)]
    fig, ax = _figure(6.4, max(2.4, 0.45 * len(rows) + 1.2))
    height = 0.8 / len(metrics)
    for j, (m, name) in enumerate(metrics):
        ys = [i + (j - (len(metrics) - 1) / 2) * height for i in range(len(rows))]
        ax.barh(ys, [100 * (r.get(m) or 0.0) for _, r in rows], height=height * 0.95, label=name)
    ax.set_yticks(range(len(rows)), [pid for pid, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("%")
    ax.set_title("Per-principle health")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _health_section(doc: _Doc, run_dir: Path) -> None:
    """Per-principle health (`cai constitution health`): a table and one bar chart."""
    from cai.constitution import ConstitutionError, load_constitution
    from cai.eval.health import run_health
    from cai.eval.health_table import COLUMNS, cells, used_constitution

    doc.section("Per-principle health", "health")
    ref = used_constitution(run_dir)
    if ref is None:
        doc.missing("No per-principle health", "generate/manifest.json not found (the "
                                               "generation stage did not run)")
        return
    try:
        health = run_health(run_dir, load_constitution(ref))
    except ConstitutionError as e:
        doc.missing("No per-principle health", f"the constitution {ref} does not load: {e}")
        return
    rows = [[pid, *cells(r), "; ".join(r["flags"])] for pid, r in health["principles"].items()]
    doc.table(["principle", *[h for h, _, _ in COLUMNS], "flags"], rows,
              num=set(range(1, len(COLUMNS) + 1)), text={len(COLUMNS) + 1})
    if health.get("unlabeled"):
        u = health["unlabeled"]
        note = (f"Held-out pairs labeled under no principle: {u['rm_pairs']}, reward model "
                f"accuracy {u['rm_accuracy']:.0%}.")
        doc.html(f'<p class="note">{_e(note)}</p>')
        doc.md.extend([note, ""])
    doc.html(f'<img alt="principle health" src="{plot_health(health)}">')
    doc.html('<p class="note">Thresholds and columns: docs/constitutions.md, "Reading '
             'health". Also: <code>cai constitution health RUN_DIR</code>.</p>')


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if not path or not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
