"""The run report: structure of report.html / report.md from synthetic inputs (no model), and
the same file rendered by a real headless browser (Debian's chromium; CI installs it)."""

import base64
import io
import json
import random
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from cai.eval.report import find_inputs, ppo_curves, write_report

from test_eval_policy import HELP, RED, Scripted

EVIL = "<script>alert('x')</script> & <b>bold</b>"


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.rows = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag == "tr":
            self.rows += 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, embedded_tokenizer):
    """A run directory with PPO metrics, an RM evaluation and a policy evaluation made by
    scripted backends (one response carries HTML that must be escaped)."""
    from cai.eval.policy import EvalPolicyConfig, run_eval_policy

    run = tmp_path_factory.mktemp("run")
    rng = random.Random(0)
    (run / "ppo").mkdir()
    with open(run / "ppo" / "metrics.jsonl", "w") as f:
        for i in range(12):
            row = {"iteration": i, "reward/raw_mean": -1 + 0.1 * i + rng.gauss(0, .05),
                   "kl": 0.4 * i}
            if i % 4 == 0:
                row.update({"eval/reward": -1 + 0.09 * i, "eval/kl": 0.35 * i})
            f.write(json.dumps(row) + "\n")
        f.write('{"iteration": 12, "rew')  # a torn last line from a killed run
    (run / "rm").mkdir()
    (run / "rm" / "eval.json").write_text(json.dumps({
        "n": 40, "accuracy": 0.7, "accuracy_ci95": [0.55, 0.82], "ece": 0.08,
        "length_baseline": 0.5, "margin": 0.4,
        "by_principle": {"(none)": {"n": 32, "accuracy": 0.8125},
                         "toxicity": {"n": 8, "accuracy": 0.25}},
        "bins": [{"confidence": 0.55 + 0.1 * k, "accuracy": 0.5 + 0.08 * k, "count": 10 - k}
                 for k in range(5)]}))
    harmful = {json.loads(line)["prompt"] for line in open(RED)}
    policy = Scripted(embedded_tokenizer, lambda p: "I can't help with that." if p in harmful
                      else f"Answer: {EVIL}\nsecond line")
    reference = Scripted(embedded_tokenizer, lambda p: "Sure, here is a long answer. " * (len(p) % 5 + 1))
    run_eval_policy(EvalPolicyConfig(progress=False, model="policy", reference="reference", prompts=[RED, HELP],
                                     limit=6, kl=False, out=str(run / "eval")),
                    backend=policy, reference_backend=reference)
    from test_constitution_health import _run  # a synthetic generate/ + label/ (hand-counted)

    synthetic = _run(tmp_path_factory.mktemp("health"))
    for stage in ("generate", "label"):
        shutil.copytree(synthetic / stage, run / stage)
    write_report(run)
    return run


def _png_size(uri):
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_report_html_is_self_contained_with_plots_and_tables(run_dir):
    text = (run_dir / "report.html").read_text()
    page = _Collect()
    page.feed(text)
    assert "script" not in page.tags and "link" not in page.tags  # no JS, no external CSS
    assert "http://" not in text and "https://" not in text
    alts = [i["alt"] for i in page.imgs]
    assert alts == ["reward curve", "kl curve", "reliability diagram", "refusal rates",
                    "length histogram", "principle health"]
    for img in page.imgs:
        w, h = _png_size(img["src"])
        assert w >= 300 and h >= 200
    assert page.rows >= 30  # summary, win rates, RM, verdicts, lengths, categories, samples
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    md = (run_dir / "report.md").read_text()
    assert "## Per-principle health" in md and "| toxicity |" in md
    # the reward model's held-out accuracy per principle: a column, a flag, the human pairs
    assert "rm acc." in md and "reward model accuracy on its held-out pairs 25% < 60% (n=8)" in md
    assert "Held-out pairs labeled under no principle: 32, reward model accuracy 81%." in md
    assert "## Samples side by side" in md and "| harmful prompts refused or safely redirected |" in md
    assert "\\|" not in md or md.count("|") > 10


def test_ppo_reader_tolerates_other_key_names_and_gaps():
    rows = [{"step": 1, "reward/mean": 0.5}, {"iteration": 2, "objective/kl": 1.5, "kl": None},
            {"junk": True}]
    c = ppo_curves(rows)
    assert c["reward"] == [(1.0, 0.5)] and c["kl"] == [(2.0, 1.5)] and c["eval_kl"] == []


def test_with_rounds_the_last_rounds_ppo_and_rm_are_read(tmp_path):
    # `cai run` with rounds: 2 writes round1/ppo ... round10/ppo; eval scored the last one
    for k in (1, 2, 10):
        for stage, name in (("ppo", "metrics.jsonl"), ("rm", "eval.json")):
            (tmp_path / f"round{k}" / stage).mkdir(parents=True)
            (tmp_path / f"round{k}" / stage / name).write_text("{}\n")
    found = find_inputs(tmp_path)
    assert found["ppo_metrics"] == tmp_path / "round10" / "ppo" / "metrics.jsonl"
    assert found["rm_eval"] == tmp_path / "round10" / "rm" / "eval.json"
    (tmp_path / "round10" / "ppo" / "metrics.jsonl").unlink()
    assert find_inputs(tmp_path)["ppo_metrics"] == tmp_path / "round2" / "ppo" / "metrics.jsonl"


def test_missing_stages_are_said_not_failed(tmp_path):
    paths = write_report(tmp_path)
    text = paths["html"].read_text()
    page = _Collect()
    page.feed(text)
    assert page.imgs == []
    assert text.count('class="missing"') >= 6
    assert "No PPO metrics" in text and "No reward-model evaluation" in text
    assert "No policy evaluation" in paths["md"].read_text()


def test_cli_report(run_dir):
    from typer.testing import CliRunner

    from cai.cli import app

    res = CliRunner().invoke(app, ["eval", "report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and "ppo/metrics.jsonl" in res.output


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (CI installs Debian's "
                                                 "chromium in .ci/run: apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image, ImageStat

    url = (run_dir / "report.html").resolve().as_uri()
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,5200"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _Collect()
    page.feed(dom.stdout)
    assert len(page.imgs) == 6 and page.rows >= 30
    assert 'id="health"' in dom.stdout and "label position consistency 33%" in dom.stdout
    assert "rm acc." in dom.stdout and "reward model accuracy on its held-out pairs 25%" in dom.stdout
    shot = tmp_path / "report.png"
    res = subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert ImageStat.Stat(rgb.convert("L")).stddev[0] > 20  # not a blank page
        # matplotlib's first two colours appear only inside the plots: the browser drew them.
        colours = rgb.getcolors(maxcolors=1 << 20)
        near = lambda c, ref: sum(abs(a - b) for a, b in zip(c, ref)) < 40  # noqa: E731
        blue = sum(n for n, c in colours if near(c, (31, 119, 180)))
        orange = sum(n for n, c in colours if near(c, (255, 127, 14)))
        assert blue > 500 and orange > 500, (blue, orange)  # measured ~2000 and ~1700
    shutil.copy(shot, run_dir / "report.png")  # for a person to look at after a failure
