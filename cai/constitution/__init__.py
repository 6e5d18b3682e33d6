"""Constitutions: the YAML format, its loader and validator, and principle sampling.

    from cai.constitution import load_constitution, sample_principle
    c = load_constitution("harmless")            # a shipped name or a file path
    p = sample_principle(c, seed=0, key="rec-1/round0")
"""

from cai.constitution.errors import ConstitutionError, LocatedError
from cai.constitution.hashing import (FRAME, ConstitutionDiff, diff_constitutions,
                                     feedback_hashes, principle_hash, principle_hashes)
from cai.constitution.loader import SHIPPED_DIR, load_constitution, shipped_names
from cai.constitution.sampling import sample_principle, sample_principles, tagged
from cai.constitution.schema import (
    SCHEMA_VERSION,
    ChatMessage,
    Constitution,
    Defaults,
    FeedbackExample,
    FewShotExample,
    Principle,
    json_schema,
)

__all__ = [
    "FRAME", "ConstitutionDiff", "diff_constitutions", "feedback_hashes", "principle_hash", "principle_hashes",
    "SCHEMA_VERSION", "SHIPPED_DIR", "ChatMessage", "Constitution", "ConstitutionError", "Defaults",
    "FeedbackExample", "FewShotExample", "LocatedError", "Principle", "json_schema",
    "load_constitution", "sample_principle", "sample_principles", "shipped_names", "tagged",
]
