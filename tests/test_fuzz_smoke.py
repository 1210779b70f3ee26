"""A short run of the fuzz targets in CI: every target, a few hundred cases, a fixed seed.

The full run (100,000 cases a target) is ``.venv/bin/python bench/fuzz.py``; this one keeps
the fuzz targets themselves working and catches the crashes that are easy to reach.
"""

from __future__ import annotations

import pytest

from tests import fuzzing as fuzz

CASES = 300
SEED = 20261125


@pytest.mark.parametrize("target", fuzz.TARGET_NAMES)
def test_no_uncaught_exception(target: str) -> None:
    outcome = fuzz.run_named(target, CASES, SEED)
    assert outcome.report is None, f"{target}: uncaught exception\n{outcome.report}"
    assert outcome.cases >= CASES
    # The generators must reach past the first checks, not only produce rejected input.
    assert outcome.accepted > 0, f"{target}: no input was accepted in {outcome.cases} cases"


def test_reproducer_is_printed_for_a_failure() -> None:
    """A target that raises is reported with its input, not swallowed."""

    def check(case: object) -> bool:
        if isinstance(case, str) and "(" in case:
            raise RuntimeError("planted bug")
        return True

    target = fuzz.Target("planted", fuzz.expression_text, check)
    outcome = fuzz.run_target(target, CASES, SEED)
    assert outcome.report is not None
    assert "planted bug" in outcome.report
    assert "input: " in outcome.report
