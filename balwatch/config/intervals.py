"""Named time intervals (``time_intervals:``), and the inhibit rules (``inhibit:``) of the config.

An interval is Alertmanager's: a name and a list of periods, each of which may restrict
``times`` of day, ``weekdays``, ``days_of_month``, ``months`` and ``years``, read in the
period's ``location`` (an IANA time zone, default UTC). A moment is in the interval when it
is in any of its periods, and in a period when every restriction given holds (one left out
holds always).

Times are of the wall clock in that zone, ``start_time`` inclusive and ``end_time``
exclusive, ``00:00`` to ``24:00``. A range whose end is before its start crosses midnight
and belongs to the day it starts: ``weekdays: [friday]`` with ``22:00`` to ``06:00`` runs
from Friday 22:00 to Saturday 06:00. On a day the clocks go forward the skipped hour never
comes (``02:00``-``04:00`` in Kyiv on the last Sunday of March lasts one hour); on a day
they go back the repeated hour counts twice.

Ranges of weekdays and months may wrap (``saturday:monday``, ``november:february``); a day of
the month below zero counts from the month's end (``-1`` is its last day).
"""

from __future__ import annotations

import calendar
import re
import zoneinfo
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from balwatch.config.problems import field_error
from balwatch.matchers import EXAMPLE, Matcher, MatcherError, parse_matcher

_WEEKDAYS: Final = tuple(day.lower() for day in calendar.day_name)  # monday first
_MONTHS: Final = tuple(month.lower() for month in calendar.month_name[1:])
_TIME_RE: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_DAY_SECONDS: Final = 86_400
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _interval_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise field_error("expected a name of letters, digits, '_', '.' and '-', got {input}")
    return value


def _time_of_day(value: object) -> int:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise field_error("expected a time of day HH:MM from 00:00 to 24:00, got {input}")
    if value == "24:00":
        return _DAY_SECONDS
    hours, minutes = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60


TimeOfDay = Annotated[
    int,
    PlainValidator(_time_of_day),
    WithJsonSchema({"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"}),
]


class TimeRange(_Model, title="times"):
    """From ``start_time`` to ``end_time`` (exclusive); an end before the start crosses
    midnight. Seconds since midnight inside."""

    start_time: TimeOfDay
    end_time: TimeOfDay

    @model_validator(mode="after")
    def _not_empty(self) -> TimeRange:
        if self.start_time % _DAY_SECONDS == self.end_time % _DAY_SECONDS:
            raise field_error("a time range needs an end_time different from its start_time")
        return self


def _named_range(names: tuple[str, ...], what: str) -> Any:
    """A validator of ``name`` or ``first:last`` (names, or numbers from 1) into index sets."""

    def index(text: str) -> int:
        text = text.strip().lower()
        if text.isdigit() and 1 <= int(text) <= len(names):
            return int(text) - 1
        if text in names:
            return names.index(text)
        raise field_error(
            f"expected a {what} like {names[0]} or a range like {names[0]}:{names[4]}, "
            "got {input}"
        )

    def validate(value: object) -> frozenset[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise field_error(f"expected a {what} as text, got {{input}}")
        first, colon, last = value.partition(":")
        start = index(first)
        end = index(last) if colon else start
        count = (end - start) % len(names) + 1  # wraps: saturday:monday is three days
        return frozenset((start + i) % len(names) for i in range(count))

    return validate


def _number_range(low: int, high: int, what: str, negative: bool) -> Any:
    """``n`` or ``a:b`` into an inclusive (first, last) pair."""

    def number(text: str) -> int:
        text = text.strip()
        allowed = re.fullmatch(r"-?[0-9]+", text) is not None
        n = int(text) if allowed else 0
        if not allowed or not (low <= n <= high or (negative and -high <= n <= -low)):
            span = f"{low} to {high}" + (
                f" (or -{high} to -{low} from the end)" if negative else ""
            )
            raise field_error(
                f"expected {what} {span}, or a range like {low}:{low + 4}, got {{input}}"
            )
        return n

    def validate(value: object) -> tuple[int, int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise field_error(f"expected {what} as a number or a range, got {{input}}")
        first, colon, last = value.partition(":")
        return number(first), number(last) if colon else number(first)

    return validate


Weekdays = Annotated[
    frozenset[int],
    PlainValidator(_named_range(_WEEKDAYS, "weekday")),
    WithJsonSchema({"type": "string", "description": "monday, or a range like monday:friday"}),
]
Months = Annotated[
    frozenset[int],
    PlainValidator(_named_range(_MONTHS, "month")),
    WithJsonSchema({"type": ["string", "integer"], "description": "may, 5, or may:august"}),
]
DaysOfMonth = Annotated[
    tuple[int, int],
    PlainValidator(_number_range(1, 31, "a day of the month", negative=True)),
    WithJsonSchema({"type": ["string", "integer"], "description": "1, -1 (last), or 1:5"}),
]
Years = Annotated[
    tuple[int, int],
    PlainValidator(_number_range(1970, 9999, "a year", negative=False)),
    WithJsonSchema({"type": ["string", "integer"], "description": "2026, or 2026:2027"}),
]


def _zone(value: object) -> zoneinfo.ZoneInfo:
    if isinstance(value, zoneinfo.ZoneInfo):
        return value
    if isinstance(value, str) and value and value == value.strip():
        try:
            return zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    raise field_error("unknown time zone {input}; expected an IANA name like Europe/Kyiv or UTC")


Location = Annotated[
    zoneinfo.ZoneInfo,
    PlainValidator(_zone),
    PlainSerializer(lambda zone: zone.key, return_type=str),
    WithJsonSchema({"type": "string", "description": "IANA time zone, like Europe/Kyiv"}),
]


class Period(_Model, title="time interval"):
    """One period of a named interval: every restriction given must hold."""

    times: tuple[TimeRange, ...] = ()
    weekdays: tuple[Weekdays, ...] = ()
    days_of_month: tuple[DaysOfMonth, ...] = ()
    months: tuple[Months, ...] = ()
    years: tuple[Years, ...] = ()
    location: Location = zoneinfo.ZoneInfo("UTC")

    def contains(self, moment: float) -> bool:
        local = datetime.fromtimestamp(moment, self.location)
        day = local.date()
        if not self.times:
            return self._day(day)
        second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        for span in self.times:
            if span.start_time < span.end_time:
                if span.start_time <= second < span.end_time and self._day(day):
                    return True
            elif second >= span.start_time:  # across midnight: the day it started counts
                if self._day(day):
                    return True
            elif second < span.end_time and self._day(day - timedelta(days=1)):
                return True
        return False

    def _day(self, day: date) -> bool:
        if self.weekdays and not any(day.weekday() in days for days in self.weekdays):
            return False
        if self.months and not any(day.month - 1 in months for months in self.months):
            return False
        if self.years and not any(first <= day.year <= last for first, last in self.years):
            return False
        if self.days_of_month:
            length = calendar.monthrange(day.year, day.month)[1]
            if not any(
                _day_of(first, length) <= day.day <= _day_of(last, length)
                for first, last in self.days_of_month
            ):
                return False
        return True


def _day_of(n: int, length: int) -> int:
    """Day ``n`` of a month of ``length`` days; negative counts from the end (-1: last)."""
    return n if n > 0 else length + 1 + n


class TimeInterval(_Model, title="time interval"):
    """A named interval that rules and sinks use as ``mute_during`` or ``active_during``."""

    name: Annotated[str, AfterValidator(_interval_name)]
    time_intervals: tuple[Period, ...] = Field(min_length=1)

    def contains(self, moment: float) -> bool:
        return any(period.contains(moment) for period in self.time_intervals)


def muted_at(
    moment: float,
    intervals: dict[str, TimeInterval],
    mute_during: Sequence[str],
    active_during: Sequence[str],
) -> bool:
    """Whether a rule or sink with these settings is muted at ``moment``: inside any of
    ``mute_during``, or outside every one of ``active_during`` (when it names any). A name
    not in ``intervals`` counts as never."""
    if any(name in intervals and intervals[name].contains(moment) for name in mute_during):
        return True
    return bool(active_during) and not any(
        name in intervals and intervals[name].contains(moment) for name in active_during
    )


# --- inhibit rules ---------------------------------------------------------------------


def _matcher(value: object) -> Matcher:
    if not isinstance(value, str):
        raise field_error(f"expected a matcher as text ({EXAMPLE}), got {{input}}")
    try:
        return parse_matcher(value)
    except MatcherError as exc:
        raise field_error(exc.message, exc.offset) from None


MatcherText = Annotated[
    Matcher,
    PlainValidator(_matcher),
    WithJsonSchema({"type": "string", "description": EXAMPLE}),
]


def _text_list(value: object) -> object:
    """``equal: account`` means ``[account]``."""
    return [value] if isinstance(value, str) else value


class InhibitRule(_Model, title="inhibit rule"):
    """While an alert matching ``source`` fires, alerts matching ``target`` whose ``equal``
    fields and labels have the same values as that alert's are muted."""

    source: tuple[MatcherText, ...] = Field(min_length=1)
    target: tuple[MatcherText, ...] = Field(min_length=1)
    equal: Annotated[tuple[str, ...], BeforeValidator(_text_list)] = ()
