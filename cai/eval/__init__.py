"""Evaluation: reward models on preference data (`rm.py`), scoring rows with a reward model
(`score.py`), a trained policy against its reference (`policy.py`), and the run report.

    from cai.eval import EvalPolicyConfig, run_eval_policy, write_report, classify
    summary = run_eval_policy(EvalPolicyConfig(model=..., reference=..., prompts=[...], out=...))
    write_report("outputs/run1")            # -> report.html (self-contained) + report.md

Policy evaluation modules: refusal (the transparent refusal / redirection / compliance
classifier), prompts (held-out prompts and their harmful/benign kind), stats (Wilson
intervals, correlations, quantiles), scoring (reward-model scores, KL from log-probs),
policy (`cai eval policy`), report (the HTML and Markdown report).
"""

from cai.eval.policy import EvalPolicyConfig, run_eval_policy
from cai.eval.refusal import LABELS, Verdict, classify
from cai.eval.report import write_report

__all__ = ["EvalPolicyConfig", "LABELS", "Verdict", "classify", "run_eval_policy", "write_report"]
