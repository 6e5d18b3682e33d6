"""Loading, extends, hashing, sampling and the shipped constitutions."""

from __future__ import annotations

import collections
import json
import random
import textwrap
from pathlib import Path

import pytest

import cai.constitution
from cai.constitution import (
    SHIPPED_DIR,
    Constitution,
    ConstitutionError,
    Principle,
    json_schema,
    load_constitution,
    sample_principle,
    sample_principles,
    shipped_names,
    tagged,
)

PARENT = """\
schema: 1
name: parent
version: "1.0"
description: The parent.
system_prompt: Be good.
defaults:
  revision_rounds: 2
principles:
  - id: kind
    critique_request: Point out anything unkind.
    revision_request: Rewrite it kindly.
    comparison: Which response is kinder?
    tags: [tone]
  - id: honest
    critique_request: Point out anything untrue.
    revision_request: Rewrite it truthfully.
    comparison: Which response is more honest?
few_shot:
  - principle: kind
    conversation:
      - {role: user, content: I failed my test.}
    response: Study more.
    critique: Curt.
    revision: Sorry to hear that.
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- shipped constitutions -------------------------------------------------------------

def test_shipped_names():
    assert {"harmless", "helpful-honest", "support-empathy"} <= set(shipped_names())
    # a checkout reads the top-level constitutions/ folder (a wheel: cai/constitutions/)
    assert SHIPPED_DIR == Path(cai.constitution.__file__).parents[2] / "constitutions"


@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_file_validates(name: str):
    c = load_constitution(name)
    assert c.name == name
    assert len(c.few_shot) >= 3 and c.feedback_few_shot
    assert all(p.comparison.endswith("?") for p in c.principles)
    assert c == load_constitution(SHIPPED_DIR / f"{name}.yaml")  # by name or by path


def test_harmless_covers_the_required_categories():
    c = load_constitution("harmless")
    assert len(c.principles) >= 12
    ids = {p.id for p in c.principles}
    for needed in ["violence-weapons", "crime", "self-harm", "hate-harassment", "privacy",
                   "sexual-content-minors", "medical-advice", "legal-financial-advice",
                   "deception-manipulation", "no-preaching", "no-needless-refusal"]:
        assert needed in ids


def test_support_voice_acknowledges_first():
    c = load_constitution("support-empathy")
    assert c.system_prompt and "acknowledg" in c.principle("acknowledge-first").critique_request


# --- the model ----------------------------------------------------------------------

def test_fields_and_principle_lookup(tmp_path: Path):
    c = load_constitution(write(tmp_path / "p.yaml", PARENT))
    assert (c.name, c.version, c.description, c.system_prompt) == ("parent", "1.0", "The parent.", "Be good.")
    assert [p.id for p in c.principles] == ["kind", "honest"]
    assert c.principle("kind").weight == 1.0 and c.principle("kind").tags == ["tone"]
    assert c.defaults.revision_rounds == 2
    assert c.few_shot[0].conversation[0].content == "I failed my test."
    assert c.sources == (str(tmp_path / "p.yaml"),) or c.sources[0].endswith("p.yaml")
    with pytest.raises(KeyError, match="did you mean 'honest'"):
        c.principle("honset")


def test_block_scalars_are_stripped(tmp_path: Path):
    text = PARENT.replace("Point out anything unkind.", ">\n      Point out anything\n      unkind.\n")
    c = load_constitution(write(tmp_path / "p.yaml", text))
    assert c.principle("kind").critique_request == "Point out anything unkind."


def test_content_hash_ignores_layout_but_not_content(tmp_path: Path):
    a = load_constitution(write(tmp_path / "a.yaml", PARENT))
    # Same content: keys reordered, flow style, comments, extra blank lines.
    reordered = """\
    # a comment
    principles:
      - {comparison: "Which response is kinder?", tags: [tone], id: kind,
         revision_request: Rewrite it kindly., critique_request: Point out anything unkind.}

      - id: honest
        comparison: Which response is more honest?
        revision_request: Rewrite it truthfully.
        critique_request: Point out anything untrue.
    few_shot:
      - {principle: kind, response: Study more., critique: Curt., revision: Sorry to hear that.,
         conversation: [{content: I failed my test., role: user}]}
    defaults: {revision_rounds: 2}
    system_prompt: "Be good."
    description: The parent.
    version: "1.0"
    name: parent
    schema: 1
    """
    b = load_constitution(write(tmp_path / "b.yaml", reordered))
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 16
    c = load_constitution(write(tmp_path / "c.yaml", PARENT.replace("Rewrite it kindly.", "Rewrite it gently.")))
    assert c.content_hash() != a.content_hash()


# --- extends ------------------------------------------------------------------------

def test_extends_overrides_by_id_and_appends(tmp_path: Path):
    write(tmp_path / "base" / "parent.yaml", PARENT)
    child = write(tmp_path / "child.yaml", """\
        schema: 1
        extends: base/parent.yaml
        name: child
        defaults: {}
        principles:
          - id: honest
            weight: 3
          - id: brief
            critique_request: Is it too long?
            revision_request: Shorten it.
            comparison: Which response is shorter?
    """)
    c = load_constitution(child)
    assert c.name == "child"
    assert (c.version, c.description, c.system_prompt) == ("1.0", "The parent.", "Be good.")  # inherited
    assert [p.id for p in c.principles] == ["kind", "honest", "brief"]
    honest = c.principle("honest")
    assert honest.weight == 3 and honest.critique_request == "Point out anything untrue."
    assert c.defaults.revision_rounds == 2  # defaults merge key by key
    assert len(c.few_shot) == 1
    assert [Path(s).name for s in c.sources] == ["child.yaml", "parent.yaml"]


def test_flat_and_extended_definitions_hash_equal(tmp_path: Path):
    write(tmp_path / "parent.yaml", PARENT)
    child = load_constitution(write(tmp_path / "child.yaml", """\
        schema: 1
        extends: parent.yaml
        name: parent
        principles:
          - {id: honest, weight: 2}
    """))
    flat = load_constitution(write(tmp_path / "flat.yaml", PARENT.replace(
        "comparison: Which response is more honest?", "comparison: Which response is more honest?\n    weight: 2")))
    assert child.content_hash() == flat.content_hash()


def test_extends_a_shipped_name_and_disable_with_weight_zero(tmp_path: Path):
    c = load_constitution(write(tmp_path / "mine.yaml", """\
        schema: 1
        extends: harmless
        name: mine
        few_shot: []
        principles:
          - {id: toxicity, weight: 0}
    """))
    base = load_constitution("harmless")
    assert len(c.principles) == len(base.principles) and c.few_shot == []
    assert c.feedback_few_shot == base.feedback_few_shot
    drawn = {sample_principle(c, 0, f"r{i}").id for i in range(2000)}
    assert "toxicity" not in drawn and len(drawn) == len(base.principles) - 1


def test_child_errors_point_into_the_child(tmp_path: Path):
    write(tmp_path / "parent.yaml", PARENT)
    child = write(tmp_path / "child.yaml", """\
        schema: 1
        extends: parent.yaml
        name: child
        principles:
          - id: honest
            wieght: 3
          - id: new-one
            critique_request: Is it long?
    """)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(child)
    got = {(Path(e.file).name, e.line, e.message) for e in info.value.errors}
    assert ("child.yaml", 6, "unknown key 'wieght' in principles[1] (did you mean 'weight'?)") in got
    assert any(f == "child.yaml" and line == 7 and "missing required key 'revision_request'" in m
               for f, line, m in got)
    assert len(got) == 3  # wieght, revision_request, comparison


def test_override_inside_one_file_is_a_duplicate(tmp_path: Path):
    text = PARENT.replace("  - id: honest", "  - id: kind")
    with pytest.raises(ConstitutionError, match="duplicate principle id 'kind'"):
        load_constitution(write(tmp_path / "dup.yaml", text))


def test_self_extends_is_a_cycle(tmp_path: Path):
    with pytest.raises(ConstitutionError, match="cycle"):
        load_constitution(write(tmp_path / "self.yaml", "schema: 1\nextends: self.yaml\nname: self\n"))


# --- sampling -----------------------------------------------------------------------

def weighted(tmp_path: Path, weights: list[float]) -> Constitution:
    body = "".join(f"  - {{id: p{i}, critique_request: c, revision_request: r, comparison: 'q?', weight: {w}}}\n"
                   for i, w in enumerate(weights))
    return load_constitution(write(tmp_path / "w.yaml", "schema: 1\nname: w\nversion: '1'\n"
                                   f"description: d\nprinciples:\n{body}"))


def test_sampling_is_determined_by_seed_and_key_only(tmp_path: Path):
    c = weighted(tmp_path, [1, 1, 1, 1, 1])
    keys = [f"rec-{i}/round0" for i in range(200)]
    first = {k: sample_principle(c, 7, k).id for k in keys}
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    random.seed(12345)  # global random state must not matter
    assert {k: sample_principle(c, 7, k).id for k in shuffled} == first
    assert any(sample_principle(c, 8, k).id != first[k] for k in keys)  # seed matters
    assert len(set(first.values())) == 5


def test_sampling_is_pinned(tmp_path: Path):
    # Resuming a run must draw what the interrupted run drew, across processes and versions.
    c = weighted(tmp_path, [1, 2, 3, 4])
    assert [sample_principle(c, 0, f"r{i}/round0").id for i in range(8)] == PINNED


# Computed once; must never change. (Changed once, on purpose, with generate's
# PIPELINE_VERSION 4: the exponential race that keeps other records' draws when a
# principle is added, removed or reweighted.)
PINNED = ['p2', 'p2', 'p3', 'p3', 'p2', 'p3', 'p3', 'p3']


def test_sampling_respects_weights(tmp_path: Path):
    weights = [1, 2, 7, 0]
    c = weighted(tmp_path, weights)
    n = 20000
    counts = collections.Counter(sample_principle(c, 3, f"r{i}").id for i in range(n))
    assert counts["p3"] == 0
    for i, w in enumerate(weights[:3]):
        assert abs(counts[f"p{i}"] / n - w / 10) < 0.015, counts


def test_sample_principles_distinct(tmp_path: Path):
    c = weighted(tmp_path, [1, 1, 5, 0])
    for i in range(100):
        got = sample_principles(c, 0, f"r{i}", 3)
        assert len({p.id for p in got}) == 3 and all(isinstance(p, Principle) for p in got)
        assert got == sample_principles(c, 0, f"r{i}", 3)
    with pytest.raises(ValueError, match="distinct"):
        sample_principles(c, 0, "r", 4)
    repeated = sample_principles(c, 0, "r", 50, distinct=False)
    assert len(repeated) == 50 and {p.id for p in repeated} <= {"p0", "p1", "p2"}
    assert sample_principles(c, 0, "r", 1)[0] == sample_principle(c, 0, "r")


def test_an_edit_moves_only_the_draws_it_involves(tmp_path: Path):
    # Adding p4 moves exactly the draws p4 now wins; removing p1 moves exactly the draws
    # p1 had won; reweighting p0 moves draws only to or from p0.
    keys = [f"r{i}/round0" for i in range(3000)]
    # each constitution loaded once (loading one per key was most of this test's 37 s)
    c, five, heavy = (weighted(tmp_path, w) for w in ([1, 1, 1, 1], [1, 1, 1, 1, 1], [3, 1, 1, 1]))
    before = {k: sample_principle(c, 0, k).id for k in keys}
    added = {k: sample_principle(five, 0, k).id for k in keys}
    moved = [k for k in keys if added[k] != before[k]]
    assert moved and all(added[k] == "p4" for k in moved)
    assert abs(len(moved) / len(keys) - 1 / 5) < 0.03  # p4 wins its share
    removed = c.model_copy(update={"principles": [p for p in c.principles if p.id != "p1"]})
    gone = {k: sample_principle(removed, 0, k).id for k in keys}
    assert {k for k in keys if gone[k] != before[k]} == {k for k in keys if before[k] == "p1"}
    heavier = {k: sample_principle(heavy, 0, k).id for k in keys}
    assert all(heavier[k] == "p0" for k in keys if heavier[k] != before[k])


# --- JSON Schema --------------------------------------------------------------------

def test_json_schema_accepts_shipped_and_rejects_typos():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json_schema()
    json.dumps(schema)
    for name in shipped_names():
        jsonschema.validate(yaml.safe_load((SHIPPED_DIR / f"{name}.yaml").read_text()), schema)
    child = {"schema": 1, "extends": "harmless", "name": "c", "principles": [{"id": "privacy", "weight": 2}]}
    jsonschema.validate(child, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**child, "principals": []}, schema)
    with pytest.raises(jsonschema.ValidationError):  # without extends, principles must be complete
        jsonschema.validate({k: v for k, v in child.items() if k != "extends"}, schema)


def test_tagged_draws_stay_among_matching_principles():
    c = load_constitution("harmless")
    violent = {p.id for p in c.principles if "violence_weapons" in p.tags}
    assert violent == {"violence-weapons"}
    assert {sample_principle(c, 0, f"r{i}", tags=["violence_weapons"]).id
            for i in range(200)} == violent
    # two tags: the union of their principles, each drawn
    both = {sample_principle(c, 0, f"r{i}", tags=["self_harm", "cybercrime"]).id
            for i in range(400)}
    assert both == {"self-harm", "crime"}
    # no principle carries the tag (or no tags at all): the whole constitution, same draws
    for tags in (["no-such-tag"], [], None):
        assert [sample_principle(c, 3, f"r{i}", tags=tags).id for i in range(50)] == \
               [sample_principle(c, 3, f"r{i}").id for i in range(50)]
    assert tagged(c, ["no-such-tag"]) == [p for p in c.principles if p.weight > 0]
    with pytest.raises(ValueError, match=r"1 with weight > 0 sharing a tag with \['privacy_doxxing'\]"):
        sample_principles(c, 0, "k", 2, tags=["privacy_doxxing"])


# --- judgement questions (pointwise feedback) ------------------------------------------

def test_judgement_absent_is_derived_and_present_is_used(tmp_path: Path):
    c = load_constitution(write(tmp_path / "p.yaml", PARENT))
    kind, honest = c.principle("kind"), c.principle("honest")
    assert kind.judgement is None and honest.judgement is None
    # "Which response is more X?" -> a yes/no question about X; other comparatives -> generic
    assert honest.judgement_question == "Is the assistant's last reply honest?"
    assert kind.judgement_question == ("Is the assistant's last reply good by this measure: "
                                       "which response is kinder?")
    child = write(tmp_path / "c.yaml", """\
        schema: 1
        extends: p.yaml
        name: child
        principles:
          - id: kind
            judgement: Is the assistant's last reply kind to the user?
        """)
    k = load_constitution(child).principle("kind")
    assert k.judgement == k.judgement_question == "Is the assistant's last reply kind to the user?"


@pytest.mark.parametrize("comparison, judgement", [
    ("Which response is more honest?", "Is the assistant's last reply honest?"),
    ("Which of these responses is more  helpful to the user ?", "Is the assistant's last reply helpful to the user?"),
    ("which reply is more polite and respectful", "Is the assistant's last reply polite and respectful?"),
    # a second comparative, or none in "more X" form: the generic wording
    ("Which response is more respectful and less rude?",
     "Is the assistant's last reply good by this measure: which response is more respectful and less rude?"),
    ("Which response is less harmful?",
     "Is the assistant's last reply good by this measure: which response is less harmful?"),
    ("Which response better protects privacy?",
     "Is the assistant's last reply good by this measure: which response better protects privacy?"),
])
def test_default_judgement(comparison, judgement):
    from cai.constitution.schema import default_judgement

    assert default_judgement(comparison) == judgement


def test_judgement_keeps_old_hashes_and_changes_hash_when_written(tmp_path: Path):
    base = load_constitution(write(tmp_path / "p.yaml", PARENT))
    dumped = base.model_dump(mode="json")
    assert all(p["judgement"] is None for p in dumped["principles"])
    # a file without `judgement` hashes exactly as before the field existed
    import hashlib
    for p in dumped["principles"]:
        del p["judgement"]
    old = hashlib.sha256(json.dumps(dumped, sort_keys=True, ensure_ascii=False,
                                    separators=(",", ":")).encode()).hexdigest()[:16]
    assert base.content_hash() == old
    text = PARENT.replace("comparison: Which response is kinder?",
                          "comparison: Which response is kinder?\n    judgement: Is it kind?")
    assert load_constitution(write(tmp_path / "j.yaml", text)).content_hash() != old


def test_every_shipped_principle_writes_its_judgement():
    for name in shipped_names():
        for p in load_constitution(name).principles:
            assert p.judgement and p.judgement.endswith("?"), (name, p.id)
