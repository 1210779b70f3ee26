from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.config import load_yaml
from balwatch.errors import ConfigError, Problem

WriteFile = Callable[..., Path]


def only_problem(path: Path) -> Problem:
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    [problem] = caught.value.problems
    return problem


def test_data_and_positions_of_keys_and_values(write: WriteFile) -> None:
    path = write(
        """
        accounts:
          - name: a
            credentials:
              api_key: k
          - {name: b, labels: {desk: x}}
        list: [1, 2]
        """
    )
    doc = load_yaml(path)
    assert doc.data == {
        "accounts": [
            {"name": "a", "credentials": {"api_key": "k"}},
            {"name": "b", "labels": {"desk": "x"}},
        ],
        "list": [1, 2],
    }
    assert doc.position(("accounts", 0, "credentials", "api_key"), key=True) == (4, 7)
    assert doc.position(("accounts", 0, "credentials", "api_key")) == (4, 16)
    assert doc.position(("accounts", 0)) == (2, 5)  # a block mapping starts at its first key
    assert doc.position(("accounts", 1, "labels", "desk")) == (5, 30)
    assert doc.position(("list", 1)) == (6, 11)


def test_position_falls_back_to_nearest_ancestor(write: WriteFile) -> None:
    doc = load_yaml(write("accounts:\n  - name: a\n"))
    assert doc.position(("accounts", 0, "exchange")) == (2, 5)
    assert doc.position(("accounts", 0, "exchange"), key=True) == (2, 5)
    assert doc.position(("nothing", "here")) == (1, 1)


def test_scalar_keys_are_indexed_as_the_data_types_them(write: WriteFile) -> None:
    doc = load_yaml(write("codes:\n  1: one\n"))
    assert doc.data == {"codes": {1: "one"}}
    assert doc.position(("codes", 1)) == (2, 6)


def test_empty_file_is_none(write: WriteFile) -> None:
    doc = load_yaml(write("# only a comment\n"))
    assert doc.data is None
    assert doc.position(("anything",)) == (1, 1)


def test_missing_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path / "nope.yaml")
    assert (problem.line, problem.column) == (1, 1)
    assert problem.message == "cannot read file: No such file or directory"
    assert problem.file == str(tmp_path / "nope.yaml")


def test_duplicate_key_is_reported_at_the_second_key(write: WriteFile) -> None:
    problem = only_problem(write("accounts:\n  - name: a\n    name: b\n"))
    assert (problem.line, problem.column) == (3, 5)
    assert problem.message.startswith("duplicate key 'name' (first defined at line 2)")


def test_every_duplicate_key_is_reported(write: WriteFile) -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml(write("a: 1\nb: 2\na: 3\nb: 4\n"))
    assert [(p.line, p.column) for p in caught.value.problems] == [(3, 1), (4, 1)]


def test_merge_key_override_is_not_a_duplicate(write: WriteFile) -> None:
    doc = load_yaml(write("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  x: 3\n"))
    assert doc.data["use"] == {"x": 3, "y": 2}
    assert doc.position(("use", "x")) == (4, 6)


def test_an_alias_inside_its_own_anchor_is_an_error(write: WriteFile) -> None:
    # The data would be infinitely deep: every later walk over it would recurse forever.
    with pytest.raises(ConfigError) as info:
        load_yaml(write("a: &x [1, *x]\n"))
    [problem] = info.value.problems
    assert (problem.line, problem.column) == (1, 4)
    assert "alias refers to a value that contains it" in problem.message


def test_empty_value_in_a_flow_mapping_is_placed_after_its_colon(write: WriteFile) -> None:
    # libyaml (yaml.CSafeLoader) places it one column later, on the brace: a reason the
    # parser stays pyyaml's own.
    doc = load_yaml(write("select: {accounts: [a], assets: }\n"))
    assert doc.data == {"select": {"accounts": ["a"], "assets": None}}
    assert doc.position(("select", "assets")) == (1, 32)


def test_tab_after_a_colon_is_rejected(write: WriteFile) -> None:
    # libyaml would accept it: another reason the parser stays pyyaml's own.
    problem = only_problem(write("a:\tb\n"))
    assert (problem.line, problem.column) == (1, 3)
    assert problem.message == "tab character here; YAML separates with spaces"


def test_tab_in_indentation(write: WriteFile) -> None:
    problem = only_problem(write("log:\n\tlevel: info\n"))
    assert (problem.line, problem.column) == (2, 1)
    assert problem.message == "tab character in indentation; YAML needs spaces"


def test_bad_indentation(write: WriteFile) -> None:
    problem = only_problem(write("accounts:\n  - name: a\n    exchange: bitso\n   labels: {}\n"))
    assert (problem.line, problem.column) == (4, 4)
    assert problem.message.startswith("bad indentation")


def test_value_with_colon_space(write: WriteFile) -> None:
    problem = only_problem(write("summary: low: balance\n"))
    assert (problem.line, problem.column) == (1, 13)
    assert "needs quotes" in problem.message


def test_unterminated_quote(write: WriteFile) -> None:
    problem = only_problem(write("a: 'abc\nb: 2\n"))
    assert problem.message == "unterminated quoted string started at line 1"


def test_non_printable_character(write: WriteFile) -> None:
    problem = only_problem(write("a: 1\nb: x\x07\n"))
    assert (problem.line, problem.column) == (2, 5)
    assert "not allowed in YAML" in problem.message


def test_second_document_is_rejected(write: WriteFile) -> None:
    problem = only_problem(write("a: 1\n---\nb: 2\n"))
    assert (problem.line, problem.column) == (2, 1)
    assert "only one YAML document" in problem.message


def test_unicode_escape_beyond_unicode(write: WriteFile) -> None:
    problem = only_problem(write('a: 1\nb: "x\\U00267089"\n'))
    assert (problem.line, problem.column) == (2, 6)
    assert "beyond the last Unicode character" in problem.message


def test_a_control_character_is_named_by_its_code_point(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('a: 1\nb: "x\x01y"\n')
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.column, problem.message) == (
        2,
        6,
        "character U+0001 is not allowed in YAML",
    )
