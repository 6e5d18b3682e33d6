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
                 "child warning", "vllm WARNING line", "transformers warning",
                 "a library UserWarning"):
        assert line in text, line
