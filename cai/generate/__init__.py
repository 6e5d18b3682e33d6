"""Critique -> revision generation (SL-CAI data and `ai-revision` preference pairs).

    cai generate --config pipelines/demo.yaml
    cai generate --prompts FILE --constitution harmless -o outputs/run --rounds 1 --limit 20

    from cai.generate import GenerateConfig, run_generate
    summary = run_generate(GenerateConfig(prompts="p.jsonl", out="outputs/run"))

Modules, in the order the data flows:
    (cai.prompts: prompts in, any cai.io format, deduped; rejects with reasons)
    config      GenerateConfig; the fingerprint that identifies a run
    pipeline    respond -> route -> (verdict -> critique -> revise) x rounds, one batched
                backend call per step
    routing     --route auto: the prompt scored against each principle's tag words
    verdict     the no-change verdict (ok:unchanged)
    quality     degenerate output detection (empty, truncated, repetition, identical, copied,
                echo, meta-commentary)
    relevance   does a revision still answer its prompt (PMI against a shuffled prompt)
    checkpoint  the run directory: atomic shards, lock, identity check (exactly-once resume)
    outputs     revisions/ -> sft/ (ok, ok:unchanged) and preferences/ (ok)
    progress    per-stage bars, summary
    report      the revision-quality report (`cai generate --report`)
    run         run_generate: ties them together

Run directory: manifest.json, rejects.jsonl, revisions/, sft/, preferences/ (each a folder
of Parquet shards: `datasets.load_dataset("parquet", data_files="RUN/sft/*.parquet")`;
a folder with zero records holds one shard with the schema and no row group; `datasets`
streams it as zero rows, while its non-streaming load refuses any empty split).
"""

from cai.generate.config import GenerateConfig, load_config
from cai.prompts import PromptItem, Reject, load_prompts, write_rejects


def __getattr__(name: str):
    # run_generate pulls in pyarrow and the pipeline; the CLI's flag table needs only the config
    if name == "run_generate":
        from cai.generate.run import run_generate

        return run_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["GenerateConfig", "PromptItem", "Reject", "load_config", "load_prompts",
           "run_generate", "write_rejects"]
