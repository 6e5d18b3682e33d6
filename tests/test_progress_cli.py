"""No silent minutes: `cai score` (reward model and judge), `cai eval rm` and `cai eval policy`
show progress bars (model loading, scoring, the eval's phases) on stderr, and `--no-progress`
turns them off. Each command runs through its CLI on a tiny random model."""

from __future__ import annotations

import json
import re
import time

import pytest
from typer.testing import CliRunner

from cai.cli import app

RED = "pipelines/prompts/red_team_eval.jsonl"
HELP = "pipelines/prompts/helpful_eval.jsonl"
BAR = re.compile(r"\d+%\|")  # a tqdm bar: "42%|####      |"


@pytest.fixture(autouse=True)
def draw_every_update(monkeypatch):
    """tqdm skips redraws closer than 0.1 s apart (`mininterval`), so on a fast machine the
    intermediate counts this file checks may never be drawn: draw every update. (tqdm's
    TQDM_MININTERVAL is read when tqdm is imported, so the bar class is wrapped instead;
    `progress_bar` imports it from tqdm.auto when called.)"""
    import functools

    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0,
                                                             miniters=1))


@pytest.fixture()
def rows(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) + "\n"
                            for i in range(20)))
    return data


def _run(args: list[str], progress: bool) -> str:
    res = CliRunner().invoke(app, args + ([] if progress else ["--no-progress"]))
    assert res.exit_code == 0, res.output
    return res.stderr


def _final_counts(stderr: str, desc: str) -> list[str]:
    """The "done/total" counts a bar called `desc` showed (tqdm redraws with \\r)."""
    return re.findall(rf"{re.escape(desc)}: +\d+%\|[^|]*\| *(\d+/\d+)", stderr)


def test_score_with_reward_model_shows_loading_and_rows(tmp_path, rows, tiny_rm_dir):
    args = ["score", "-m", str(tiny_rm_dir), "-d", str(rows), "--batch-size", "8"]
    err = _run(args + ["-o", str(tmp_path / "a.jsonl")], progress=True)
    assert f"loading reward model {tiny_rm_dir}" in err
    # 20 rows in batches of 8: the bar reaches 8, 16 and 20 of 20
    assert {"8/20", "16/20", "20/20"} <= set(_final_counts(err, "reward model"))
    quiet = _run(args + ["-o", str(tmp_path / "b.jsonl")], progress=False)
    assert not BAR.search(quiet) and "loading" not in quiet
    scored = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(scored) == 20 and all(isinstance(r["reward"], float) for r in scored)


def test_score_with_judge_shows_loading_and_rows(tmp_path, rows, tiny_model_dir):
    args = ["score", "--judge", "-m", str(tiny_model_dir), "-b", "transformers", "-d", str(rows)]
    err = _run(args + ["-o", str(tmp_path / "a.jsonl")], progress=True)
    assert "loading judge" in err
    # 20 rows, 16 per engine call (JUDGE_CHUNK)
    assert {"16/20", "20/20"} <= set(_final_counts(err, "judge"))
    quiet = _run(args + ["-o", str(tmp_path / "b.jsonl")], progress=False)
    assert not BAR.search(quiet) and "loading" not in quiet
    # chunking does not change a score: the same rows judged by two runs agree
    a, b = ([json.loads(x)["judge_score"] for x in (tmp_path / f).read_text().splitlines()]
            for f in ("a.jsonl", "b.jsonl"))
    assert a == pytest.approx(b, abs=1e-5)


def test_eval_rm_shows_loading_and_pairs(tiny_rm_dir):
    args = ["eval", "rm", "-m", str(tiny_rm_dir), "-d", "tests/data/hh_roundtrip.jsonl",
            "--batch-size", "2"]
    err = _run(args, progress=True)
    assert f"loading reward model {tiny_rm_dir}" in err
    counts = _final_counts(err, "reward model")
    assert counts and counts[-1].split("/")[0] == counts[-1].split("/")[1]  # reached its total
    assert not BAR.search(_run(args, progress=False))


def test_eval_policy_shows_its_phases(tmp_path, tiny_model_dir, tiny_rm_dir):
    args = ["eval", "policy", "-m", str(tiny_model_dir), "-r", str(tiny_model_dir),
            "--harmful", RED, "--benign", HELP, "--limit", "2", "-b", "transformers",
            "--max-tokens", "4", "--reward", str(tiny_rm_dir)]
    err = _run(args + ["-o", str(tmp_path / "a")], progress=True)
    # load policy, policy answers, KL samples, load reference, reference answers, judge,
    # relevance, reward model, KL log-probs
    assert "9/9" in _final_counts(err, "eval")
    for phase in ("load policy", "reference answers", "judge", "reward model", "KL log-probs"):
        assert phase in err
    assert not BAR.search(_run(args + ["-o", str(tmp_path / "b")], progress=False))


def test_ticking_redraws_a_bar_during_one_long_call():
    from cai.progress import ticking

    class Bar:
        disable, draws = False, 0

        def refresh(self):
            self.draws += 1

    bar = Bar()
    with ticking(bar, every=0.05):
        time.sleep(0.5)  # one blocking call, no update
    assert 5 <= bar.draws <= 11
    drawn = bar.draws
    time.sleep(0.2)
    assert bar.draws == drawn  # the thread stopped with the call


def test_log_lines_print_above_an_open_bar_not_through_it(capsys):
    """A stage's log line (`say`) or the run's echo (`above_bars`) while a bar is drawn: the
    bar is cleared first (a carriage return), so the line starts at the left margin rather
    than after the bar's text, and the bar is drawn again below it."""
    import sys

    from tqdm import tqdm

    from cai.config import say
    from cai.progress import above_bars

    with tqdm(total=4, desc="label: scoring", file=sys.stderr, ascii=True) as bar:
        bar.update(1)
        say("judge: 48 pairs")
        above_bars("swapped the policy's weights in")
    out, err = capsys.readouterr()
    assert "\rjudge: 48 pairs\n" in err
    assert not re.search(r"it/s\]judge", err)  # not glued to the bar's text
    assert err.rindex("label: scoring") > err.index("judge: 48 pairs")  # redrawn below
    assert out == "swapped the policy's weights in\n"
