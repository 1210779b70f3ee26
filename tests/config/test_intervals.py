"""Named time intervals at the moments that are easy to get wrong: midnight, DST changes.

The clock is injected: each check is an instant, built from a wall-clock time in the zone
(with ``fold`` for the hour that a fall-back repeats) or from UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from balwatch.config import load_config
from balwatch.config.intervals import TimeInterval, muted_at
from balwatch.errors import ConfigError
from balwatch.rules.load import load_rule_set

KYIV = ZoneInfo("Europe/Kyiv")
MEXICO = ZoneInfo("America/Mexico_City")


def interval(*periods: dict[str, Any]) -> TimeInterval:
    return TimeInterval.model_validate({"name": "quiet", "time_intervals": list(periods)})


def at(text: str, zone: ZoneInfo, fold: int = 0) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_a_range_across_midnight_belongs_to_the_day_it_starts() -> None:
    friday_night = interval(
        {"weekdays": ["friday"], "times": [{"start_time": "22:00", "end_time": "06:00"}],
         "location": "Europe/Kyiv"}
    )  # fmt: skip
    inside = ["2026-11-27T22:00", "2026-11-27T23:59", "2026-11-28T00:00", "2026-11-28T05:59"]
    outside = ["2026-11-27T21:59", "2026-11-28T06:00", "2026-11-28T22:30", "2026-11-27T03:00"]
    assert [friday_night.contains(at(t, KYIV)) for t in inside] == [True] * 4
    assert [friday_night.contains(at(t, KYIV)) for t in outside] == [False] * 4


def test_kyiv_spring_forward_skips_the_missing_hour() -> None:
    """29 March 2026, 03:00 EET becomes 04:00 EEST: 00:00 to 01:00 UTC is 02:00 to 04:00."""
    night = interval(
        {"times": [{"start_time": "02:00", "end_time": "04:00"}], "location": "Europe/Kyiv"}
    )
    assert night.contains(utc("2026-03-29T00:00:00"))  # 02:00 EET
    assert night.contains(utc("2026-03-29T00:59:59"))  # 02:59:59 EET
    assert not night.contains(utc("2026-03-29T01:00:00"))  # 04:00 EEST: one hour long
    # A range that lies wholly in the skipped hour never happens that day.
    skipped = interval(
        {"times": [{"start_time": "03:00", "end_time": "03:30"}], "location": "Europe/Kyiv"}
    )
    day = utc("2026-03-28T22:00:00")
    assert not any(skipped.contains(day + minute * 60) for minute in range(24 * 60))
    assert skipped.contains(at("2026-03-30T03:10", KYIV))  # the next day it does


def test_kyiv_fall_back_counts_the_repeated_hour_twice() -> None:
    """25 October 2026, 04:00 EEST becomes 03:00 EET: 03:xx happens twice."""
    window = interval(
        {"times": [{"start_time": "03:00", "end_time": "04:00"}], "location": "Europe/Kyiv"}
    )
    assert window.contains(at("2026-10-25T03:15", KYIV, fold=0))  # 00:15 UTC
    assert window.contains(at("2026-10-25T03:15", KYIV, fold=1))  # 01:15 UTC
    assert not window.contains(utc("2026-10-25T02:00:00"))  # 04:00 EET
    assert sum(window.contains(utc("2026-10-24T23:00:00") + m * 60) for m in range(240)) == 120


def test_mexico_city_changes_of_2022_and_none_since() -> None:
    """Mexico City left DST after 30 October 2022: 02:00 CDT became 01:00 CST."""
    office = interval(
        {"weekdays": ["monday:friday"], "times": [{"start_time": "09:00", "end_time": "17:00"}],
         "location": "America/Mexico_City"}
    )  # fmt: skip
    # Summer 2022, CDT (UTC-5): 09:00 local is 14:00 UTC.
    assert office.contains(utc("2022-06-01T14:00:00"))
    assert not office.contains(utc("2022-06-01T13:59:59"))
    # Summer 2023, no DST any more (UTC-6): 09:00 local is 15:00 UTC.
    assert not office.contains(utc("2023-06-01T14:30:00"))
    assert office.contains(utc("2023-06-01T15:00:00"))
    # The fall-back night itself: 01:00-02:00 local happened twice.
    late = interval(
        {"times": [{"start_time": "01:00", "end_time": "02:00"}], "location": "America/Mexico_City"}
    )
    assert late.contains(at("2022-10-30T01:30", MEXICO, fold=0))  # 06:30 UTC
    assert late.contains(at("2022-10-30T01:30", MEXICO, fold=1))  # 07:30 UTC
    # The spring-forward morning, 3 April 2022: 02:00 CST became 03:00 CDT.
    early = interval(
        {"times": [{"start_time": "02:00", "end_time": "03:00"}], "location": "America/Mexico_City"}
    )
    day = utc("2022-04-03T06:00:00")
    assert not any(early.contains(day + m * 60) for m in range(24 * 60))


def test_days_of_month_months_years_and_wrapping_ranges() -> None:
    month_end = interval({"days_of_month": ["-2:-1"], "location": "UTC"})
    assert month_end.contains(utc("2027-02-27T12:00:00"))  # February has 28 days in 2027
    assert not month_end.contains(utc("2027-02-26T12:00:00"))
    assert month_end.contains(utc("2028-02-29T12:00:00"))
    winter = interval({"months": ["november:february"], "years": ["2026:2027"]})
    assert winter.contains(utc("2027-01-10T00:00:00"))
    assert not winter.contains(utc("2027-03-01T00:00:00"))
    assert not winter.contains(utc("2028-01-10T00:00:00"))
    weekend = interval({"weekdays": ["saturday:sunday"]})
    assert weekend.contains(utc("2026-11-28T12:00:00")) and not weekend.contains(
        utc("2026-11-30T12:00:00")
    )


def test_mute_during_and_active_during() -> None:
    intervals = {"nights": interval({"times": [{"start_time": "22:00", "end_time": "06:00"}]})}
    night, day = utc("2026-11-27T23:00:00"), utc("2026-11-27T12:00:00")
    assert muted_at(night, intervals, ["nights"], []) and not muted_at(
        day, intervals, ["nights"], []
    )
    assert muted_at(day, intervals, [], ["nights"]) and not muted_at(
        night, intervals, [], ["nights"]
    )
    assert not muted_at(day, intervals, [], [])


# --- what `check` reports -----------------------------------------------------------------

CONFIG = """\
state_dir: state
rules: [rules.yaml]
time_intervals:
  - name: nights
    time_intervals:
      - times: [{start_time: "22:00", end_time: "06:00"}]
        location: Europe/Kyiv
sinks:
  - {name: chat, type: webhook, url: "https://chat.example/hook", mute_during: [nights]}
"""


def problems(tmp_path: Path, config: str, rules: str = "rules: []\n") -> list[str]:
    (tmp_path / "balwatch.yaml").write_text(config)
    (tmp_path / "rules.yaml").write_text(rules)
    try:
        loaded = load_config(tmp_path / "balwatch.yaml", environ={})
        load_rule_set(loaded.rules, interval_names=[i.name for i in loaded.time_intervals])
    except ConfigError as exc:
        return [str(p).replace(f"{tmp_path}/", "") for p in exc.problems]
    return []


def test_a_good_interval_and_its_uses_load(tmp_path: Path) -> None:
    rules = "rules:\n  - {name: low, when: available < 5, mute_during: [nights]}\n"
    assert problems(tmp_path, CONFIG, rules) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('"22:00"', '"22:61"'), "balwatch.yaml:6:30: error: expected a time of day HH:MM"),
        ("location: Europe/Kyiv", "balwatch.yaml:7:19: error: unknown time zone 'Europe/Kiev2'"),
        (
            ("        location", "        weekdays: [fryday]\n        location"),
            "balwatch.yaml:7:20: error: expected a weekday like monday",
        ),
        (
            ("mute_during: [nights]", "mute_during: [night]"),
            "balwatch.yaml:9:81: error: unknown time interval 'night'",
        ),
    ],
)
def test_check_reports_bad_intervals_at_file_line_col(
    tmp_path: Path, change: tuple[str, str] | str, expected: str
) -> None:
    old, new = change if isinstance(change, tuple) else (change, "location: Europe/Kiev2")
    [problem] = problems(tmp_path, CONFIG.replace(old, new))
    assert problem.startswith(expected), problem


def test_check_reports_a_rule_naming_an_unknown_interval(tmp_path: Path) -> None:
    rules = "rules:\n  - {name: low, when: available < 5, active_during: [office]}\n"
    [problem] = problems(tmp_path, CONFIG, rules)
    assert problem.startswith(
        "rules.yaml:2:54: error: unknown time interval 'office'; defined in time_intervals: nights"
    ), problem


def test_check_reports_bad_inhibit_matchers_at_the_character(tmp_path: Path) -> None:
    config = CONFIG + (
        "inhibit:\n"
        "  - source: ['rule=exchange-down']\n"
        "    target: ['rule=~account-(stale']\n"
        "    equal: [exchange]\n"
    )
    [problem] = problems(tmp_path, config)
    assert problem.startswith("balwatch.yaml:12:29: error: invalid regular expression"), problem
