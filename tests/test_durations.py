from __future__ import annotations

import pytest

from balwatch.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (0.0004, "0s"),  # under half a millisecond rounds to zero
        (0.5, "500ms"),
        (1.5, "1500ms"),
        (30, "30s"),
        (90, "90s"),
        (900, "15m"),
        (7200, "2h"),
        (86_400, "1d"),
        (30 * 86_400, "30d"),
    ],
)
def test_format_duration_spells_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["0s", "500ms", "1500ms", "90s", "15m", "2h", "1d", "30d"])
def test_format_duration_reads_back_as_the_same_duration(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
