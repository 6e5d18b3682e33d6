"""AI feedback (RL-CAI / RLAIF): label response pairs with soft preferences from a feedback
model answering the constitution's multiple-choice comparison question.

    from cai.label import LabelRunConfig, run_label
    summary = run_label(LabelRunConfig(pairs="pairs.jsonl", out="labels", principles=4))

or, piece by piece (`run_label` is these steps plus rejects, the context check and a report):

    from cai.label import LabelConfig, label_pairs, read_pairs, to_record, run_info
    pairs, rejects = read_pairs("pairs.jsonl")
    labels = label_pairs(backend, constitution, pairs, LabelConfig(principles=4, seed=0))
    records = [to_record(l, backend.model, run_info(constitution, cfg)) for l in labels]

Modules: inputs (what can be labeled), labeler (prompts and the batched scoring call),
pointwise (yes/no verdicts per response, their cache, tau, and `score_responses` for use
outside labeling), cot (chain-of-thought mode), report (label quality), sample (candidate
pairs for labeling), run (`run_label`: a whole labeling run). The probability math is
`cai.feedback`, below both label and generate.
"""

from cai.feedback import clamp, consistent, ensemble, entropy_bits, option_prob, pair_prob
from cai.label.inputs import Candidates, Pair, human_preferences, pair_key, read_pairs
from cai.label.labeler import (Label, LabelConfig, Verdict, fitting_pairs, label_pairs, run_info,
                               to_record, verdict)
from cai.label.pointwise import (DEFAULT_TAU, PointwiseVerdict, ResponseScore, ResponseScorer,
                                 fit_tau, reference_diffs, score_responses)
from cai.label.report import LabelReport, build_report, format_report
from cai.label.run import LabelRunConfig, load_label_config, run_label

__all__ = [
    "DEFAULT_TAU", "PointwiseVerdict", "ResponseScore", "ResponseScorer", "fit_tau",
    "reference_diffs", "score_responses",
    "Candidates", "Label", "LabelConfig", "LabelReport", "LabelRunConfig", "Pair", "Verdict", "build_report",
    "clamp", "consistent", "ensemble", "entropy_bits", "fitting_pairs", "format_report",
    "human_preferences", "label_pairs", "option_prob", "pair_key", "pair_prob", "read_pairs",
    "load_label_config", "run_info", "run_label", "to_record", "verdict",
]
