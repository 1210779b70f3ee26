"""docs/rules.md holds to the rule language: its examples run, and it names every key,
metric, function and template field there is.

Every YAML example that names a file (``# file: NAME``) is written out; each rule test among
them runs as ``balwatch test`` runs it and must pass, and each rule file must be the subject
of one. A YAML block that names no file must load as a rule file on its own. The expressions
of ``text`` blocks must parse. So a wrong example, or a page that falls behind the language,
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from balwatch.model import METRICS
from balwatch.rules.expr import WINDOW_FUNCS, parse_expression
from balwatch.rules.load import RuleFile, load_rule_set
from balwatch.rules.ruletest import RuleTestFile, run_file, run_tests
from balwatch.rules.template import FIELDS
from balwatch.schema import schema
from tests.docpages import (
    blocks,
    duration_ranges,
    key_problems,
    page,
    schema_keys,
    spans,
    tables,
)

PAGE = "rules.md"


@pytest.fixture
def examples(tmp_path: Path) -> dict[str, Path]:
    """Every file the page shows, written to ``tmp_path``: name -> path."""
    written: dict[str, Path] = {}
    for block in blocks(page(PAGE), "yaml"):
        name = block.file
        if name is None:
            continue
        assert name not in written, f"docs/{PAGE}:{block.line}: a second {name}"
        written[name] = tmp_path / name
        written[name].write_text(block.code)
    return written


def test_every_rule_test_on_the_page_passes(examples: dict[str, Path]) -> None:
    tests = [path for name, path in examples.items() if name.endswith(".test.yaml")]
    assert len(tests) >= 5
    tested: set[str] = set()
    for path in tests:
        result = run_file(path)
        report = [str(p) for p in result.problems] + [
            f"at {check.at}s: missing {check.missing}, unexpected {check.unexpected}, "
            f"different {check.different}"
            for check in result.checks
            if not check.ok
        ]
        assert result.ok and result.checks and not result.problems, "\n".join(report)
        test = RuleTestFile.model_validate(yaml.safe_load(path.read_text()))
        tested |= {Path(glob).name for glob in test.rule_files}
    rule_files = {name for name in examples if name.endswith(".rules.yaml")}
    assert rule_files <= tested, f"rule files no test on the page runs: {rule_files - tested}"
    assert set(examples) == rule_files | {path.name for path in tests}


def test_a_block_that_names_no_file_is_a_rule_file_that_loads(tmp_path: Path) -> None:
    for block in blocks(page(PAGE), "yaml"):
        if block.file is None:
            path = tmp_path / f"line-{block.line}.yaml"
            path.write_text(block.code)
            load_rule_set([str(path)])  # raises ConfigError with every problem


def test_the_shown_output_of_balwatch_test_is_what_it_prints(
    examples: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (shell,) = blocks(page(PAGE), "sh")
    command, *output = shell.code.strip().split("\n")
    name = command.removeprefix("balwatch test ")
    monkeypatch.chdir(examples[name].parent)
    assert run_tests([Path(name)]) == 0
    assert capsys.readouterr().out.strip().split("\n") == [line[2:] for line in output]


def test_every_expression_shown_parses() -> None:
    shown = [line for b in blocks(page(PAGE), "text") for line in b.code.strip().split("\n")]
    assert len(shown) >= 5
    for source in shown:
        parse_expression(source)


def test_every_rule_file_and_rule_test_key_has_a_row() -> None:
    keys = schema_keys(schema("rules")) + schema_keys(schema("tests"))
    ranges = {**duration_ranges(RuleFile), **duration_ranges(RuleTestFile)}
    problems = key_problems(keys, ranges, page(PAGE), f"docs/{PAGE}")
    assert not problems, "docs/rules.md is behind the rule files:\n" + "\n".join(problems)


def _first_column(header: str) -> set[str]:
    """The code spans in the first column of the tables whose first header is ``header``."""
    return {
        span
        for head, rows in tables(page(PAGE))
        if head[0] == header
        for row in rows
        for span in spans(row[0])
    }


def test_every_metric_function_and_template_field_is_documented() -> None:
    assert _first_column("metric") >= set(METRICS)
    functions = {re.sub(r"\(.*", "", span) for span in _first_column("function")}
    assert functions >= {"usd", *WINDOW_FUNCS, "age", "failures"}
    fields = {span.strip("{}") for span in _first_column("field")}
    assert fields == set(FIELDS), f"missing {set(FIELDS) - fields}, extra {fields - set(FIELDS)}"
