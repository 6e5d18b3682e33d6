"""Critique -> revision generation (SL-CAI data and `ai-revision` preference pairs).

    cai generate --config pipelines/demo.yaml
    cai generate --prompts FILE --constitution harmless -o outputs/run --rounds 1 --limit 20

    from cai.generate import GenerateConfig, run_generate
    summary = run_generate(GenerateConfig(prompts="p.jsonl", out="outputs/run"))

Modules, in the order the data flows:
    inputs      prompts in (any cai.io format), deduped; rejects with reasons
    config      GenerateConfig; the fingerprint that identifies a run
    pipeline    respond -> critique -> revise, one batched backend call per stage
    quality     degenerate output detection (empty, truncated, repetition, identical, copied, echo)
    checkpoint  the run directory: atomic shards, lock, identity check (exactly-once resume)
    outputs     revisions/ -> sft/ and preferences/ (ok records only)
    progress    per-stage bars, summary
    run         run_generate: ties them together

Run directory: manifest.json, rejects.jsonl, revisions/, sft/, preferences/ (each a folder
of Parquet shards: `datasets.load_dataset("parquet", data_files="RUN/sft/*.parquet")`;
a folder with zero records holds one empty shard, which `datasets` cannot load).
"""

from cai.generate.config import GenerateConfig, load_config
from cai.generate.inputs import PromptItem, Reject, load_prompts, write_rejects


def __getattr__(name: str):
    # run_generate pulls in pyarrow and the pipeline; the CLI's flag table needs only the config
    if name == "run_generate":
        from cai.generate.run import run_generate

        return run_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["GenerateConfig", "PromptItem", "Reject", "load_config", "load_prompts",
           "run_generate", "write_rejects"]
