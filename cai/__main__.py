"""`python -m cai ...` is `cai ...` (the guard matters: vLLM spawns worker processes)."""

if __name__ == "__main__":
    from cai.cli import main

    main()
