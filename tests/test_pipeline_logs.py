"""Engine output goes to the run's log file; cai's own lines stay on the terminal. Run in a
child process whose stdout/stderr are pipes, as a terminal would be."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_engine_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    log = tmp_path / "logs" / "engine.log"
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys, warnings
        from cai.pipeline.logs import engine_logs_to_file
        print("before", flush=True)
        with engine_logs_to_file({str(log)!r}):
            print("ours: progress line")
            print("ours: on stderr", file=sys.stderr)
            os.write(2, b"C-level noise on fd 2\\n")
            os.write(1, b"C-level noise on fd 1\\n")
            subprocess.run([sys.executable, "-c", "import sys; print('child says hi'); "
                            "print('child warning', file=sys.stderr)"], check=True)
            logging.getLogger("vllm.engine").warning("vllm WARNING line")
            logging.getLogger("transformers.modeling").warning("transformers warning")
            # transformers' own logger setup (a stderr handler on first use) and its bars
            from transformers.utils import logging as hf_logging
            hf_logging.get_logger("transformers.modeling_utils").warning("hf LOAD REPORT")
            for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
                pass
            warnings.warn("a library UserWarning")
            assert os.environ["VLLM_LOGGING_CONFIG_PATH"].endswith("vllm-logging.json")
        print("after", flush=True)
        os.write(2, b"fd 2 restored\\n")
        assert "VLLM_LOGGING_CONFIG_PATH" not in os.environ
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["before", "ours: progress line", "after"]
    assert r.stderr.splitlines() == ["ours: on stderr", "fd 2 restored"]
    text = log.read_text()
    for line in ("C-level noise on fd 2", "C-level noise on fd 1", "child says hi",
                 "child warning", "vllm WARNING line", "transformers warning", "hf LOAD REPORT",
                 "a library UserWarning"):
        assert line in text, line


def test_stage_commands_keep_engine_output_off_the_terminal(tmp_path, tiny_model_dir):
    """`cai generate --json > file` must give a file of JSON: library output (transformers'
    loading bar here, vLLM's warnings with the vLLM backend) goes to $CAI_HOME/logs, unless
    `cai --verbose`."""
    import json
    import os

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n')
    env = {**os.environ, "CAI_HOME": str(tmp_path / "home")}

    def generate(*flags: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cai", *flags, "generate", "--prompts", str(prompts),
             "--out", str(tmp_path / out), "--model", str(tiny_model_dir), "--backend",
             "transformers", "--max-tokens", "4", "--route", "random", "--unchanged-threshold",
             "off", "--min-relevance", "off", "--no-progress", "--json"],
            capture_output=True, text=True, env=env, timeout=300)

    quiet = generate(out="quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["records"] == 1  # stdout is the summary alone
    assert "Loading weights" not in quiet.stderr  # the bar is switched off, as in `cai run`
    assert (tmp_path / "home" / "logs" / "generate.log").is_file()

    loud = generate("--verbose", out="loud")
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr
