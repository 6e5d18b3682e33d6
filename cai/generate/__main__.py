"""`python -m cai.generate ...` is `cai generate ...` (the guard matters: vLLM spawns workers)."""

if __name__ == "__main__":
    import sys

    from cai.cli import app

    app(["generate", *sys.argv[1:]], prog_name="cai")
