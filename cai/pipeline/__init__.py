"""The pipeline runner: `cai run pipelines/NAME.yaml` takes a constitution to an aligned
model through the RL-CAI recipe, one YAML section per stage, skipping what is done.

    from cai.pipeline import load_pipeline, run_pipeline, builtin_stages
    stages = builtin_stages()
    pipeline = load_pipeline("pipelines/demo.yaml", [s.name for s in stages])
    run_pipeline(pipeline, stages)

Modules: spec (the YAML file), stages (registry and wiring), manifest (stage.json and
hashes), runner (plan, rerun rules, engines), logs (engine logs to a file), summary.
"""

from cai.pipeline.runner import (EnginePool, SelectionError, StageFailed, Step, StepResult, plan,
                                 run_pipeline, select)
from cai.pipeline.spec import Pipeline, PipelineError, RunSettings, load_pipeline
from cai.pipeline.stages import ORDER, Stage, Wiring, builtin_stages

__all__ = ["ORDER", "EnginePool", "Pipeline", "PipelineError", "RunSettings", "SelectionError",
           "Stage", "StageFailed", "Step", "StepResult", "Wiring", "builtin_stages",
           "load_pipeline", "plan", "run_pipeline", "select"]
