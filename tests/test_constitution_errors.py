"""Malformed constitutions: each fixture in tests/data/constitutions/ declares the located
errors it must produce in its leading `# expect: FILE:LINE:COL: text` comments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cai.constitution import ConstitutionError, LocatedError, load_constitution

DATA = Path(__file__).parent / "data" / "constitutions"
EXPECT = re.compile(r"^# expect: ([^:]+):(\d+):(\d+): (.+)$")
# Parents that only make sense through their children.
NOT_ENTRY_POINTS = {"broken-parent.yaml"}


def _expectations(path: Path) -> list[tuple[str, int, int, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if not m:
            break
        out.append((m[1], int(m[2]), int(m[3]), m[4]))
    return out


FIXTURES = sorted(p for p in DATA.glob("*.yaml"))


def test_there_are_at_least_twenty_malformed_fixtures():
    assert len(FIXTURES) >= 20
    assert all(_expectations(p) for p in FIXTURES), "every fixture must declare its errors"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_produces_its_located_errors(path: Path):
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    errors = info.value.errors
    assert errors and all(isinstance(e, LocatedError) for e in errors)
    # Exactly the declared errors: no follow-on noise (e.g. a typo also reported as "missing").
    assert len(errors) == len(_expectations(path)), str(info.value)
    for file, line, col, text in _expectations(path):
        matching = [e for e in errors if Path(e.file).name == file and text in e.message]
        assert matching, f"no error containing {text!r} in {file}; got:\n{info.value}"
        assert (matching[0].line, matching[0].column) == (line, col), str(info.value)
    # The string form lists every error as file:line:col: message.
    assert str(info.value).splitlines() == [f"{e.file}:{e.line}:{e.column}: {e.message}" for e in errors]


def test_many_errors_are_reported_at_once():
    with pytest.raises(ConstitutionError) as info:
        load_constitution(DATA / "many-errors.yaml")
    lines = {e.line for e in info.value.errors}
    assert len(info.value.errors) == 6
    assert len(lines) == 6  # different places in one run, not just the first problem


def test_error_is_a_value_error_and_names_the_file():
    with pytest.raises(ValueError) as info:
        load_constitution(DATA / "unknown-top-key.yaml")
    assert "unknown-top-key.yaml:" in str(info.value)


def test_missing_file_and_unknown_shipped_name():
    with pytest.raises(ConstitutionError) as info:
        load_constitution("harmles")
    assert "did you mean 'harmless'" in str(info.value)
    with pytest.raises(ConstitutionError):
        load_constitution(DATA / "does-not-exist.yaml")


def test_parent_error_is_reported_in_the_parent_file():
    with pytest.raises(ConstitutionError) as info:
        load_constitution(DATA / "extends-broken-parent.yaml")
    files = {Path(e.file).name for e in info.value.errors}
    assert files == {"broken-parent.yaml"}


def test_missing_parent_does_not_flood_with_missing_keys():
    # The parent would have supplied version/description, so only the extends error shows.
    with pytest.raises(ConstitutionError) as info:
        load_constitution(DATA / "extends-missing.yaml")
    assert len(info.value.errors) == 1
    assert "cannot find" in info.value.errors[0].message


def test_yaml_anchors_and_merge_keys_behave_like_safe_load(tmp_path: Path):
    f = tmp_path / "anchors.yaml"
    body = ("schema: 1\nname: anchors\nversion: '1'\ndescription: d\n"
            "x-base: &base\n  revision_request: Rewrite it kindly.\n  comparison: Which is kinder?\n"
            "principles:\n  - <<: *base\n    id: a\n    critique_request: Critique a.\n")
    f.write_text(body)
    c = load_constitution(f)  # `x-` keys are ignored, so they can hold anchors
    assert c.principle("a").comparison == "Which is kinder?"
    f.write_text(body.replace("x-base", "base"))
    with pytest.raises(ConstitutionError) as info:
        load_constitution(f)
    assert [(e.line, e.column) for e in info.value.errors] == [(5, 1)]
    assert "unknown key 'base'" in info.value.errors[0].message


def test_unclosed_quote_points_at_where_it_opened():
    with pytest.raises(ConstitutionError) as info:
        load_constitution(DATA / "syntax-error.yaml")
    assert "quoted scalar" in info.value.errors[0].message
