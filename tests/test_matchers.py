"""Matchers and silences as people write them: the CLI's --match, the API's and inhibit's."""

from __future__ import annotations

import pytest

from balwatch.matchers import MatcherError, alert_fields, parse_matcher
from balwatch.silence import Silence, SilenceError, new_silence, parse_time

T0 = 1_800_000_000.0


def fields(**changes: str | None) -> dict[str, str]:
    given: dict[str, object] = {
        "rule": "low-available",
        "account": "bitso-treasury",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "severity": "critical",
        "instance": "prod",
        "labels": {"desk": "treasury"},
    }
    given.update(changes)
    return alert_fields(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "matched"),
    [
        ("rule=low-available", True),
        ("rule = low-available", True),
        ("rule!=low-available", False),
        ("account=~bitso-.*", True),
        ("account=~bitso", False),  # anchored at both ends
        ("account=~.*treasury", True),
        ("account!~bitso-.*", False),
        ("desk=treasury", True),  # a label
        ("team=", True),  # a label the alert lacks reads as ""
        ("team!=", False),
        ('desk="treasury"', True),
        ("severity=~warning|critical", True),  # alternation inside the anchors
    ],
)
def test_each_operator_over_fields_and_labels(text: str, matched: bool) -> None:
    assert parse_matcher(text).matches(fields()) is matched


def test_a_portfolio_or_account_scope_alert_reads_its_absent_fields_as_empty() -> None:
    group = fields(account=None, asset=None, venue=None)
    assert parse_matcher("account=").matches(group)
    assert parse_matcher("asset=~").matches(group)
    assert not parse_matcher("account=~bitso-.*").matches(group)
    assert parse_matcher("account!~bitso-.*").matches(group)


def test_a_field_wins_over_a_label_of_its_name() -> None:
    shadowed = alert_fields(
        rule="r", account="a", exchange="e", venue=None, asset=None, severity="info",
        instance="i", labels={"account": "label-value"},
    )  # fmt: skip
    assert shadowed["account"] == "a"


@pytest.mark.parametrize(
    "text",
    ["rule=low-available", "account=~bitso-.*", 'comment=" padded "', r'x="\"quoted\" start"'],
)
def test_text_reads_back_as_the_same_matcher(text: str) -> None:
    matcher = parse_matcher(text)
    assert parse_matcher(str(matcher)) == matcher


@pytest.mark.parametrize(
    ("text", "offset", "says"),
    [
        ("=x", 0, "field or label name"),
        ("rule", 4, "expected =, !=, =~ or !~"),
        ("rule~x", 4, "expected =, !=, =~ or !~"),
        ("account=~bitso-(", 15, "invalid regular expression"),
        ('rule="unterminated', 5, "JSON string"),
        ("rule=~" + "a" * 1001, 6, "at most 1000"),
    ],
)
def test_a_bad_matcher_says_what_and_where(text: str, offset: int, says: str) -> None:
    with pytest.raises(MatcherError) as caught:
        parse_matcher(text)
    assert says in caught.value.message
    assert caught.value.offset == offset


def silence(*matchers: str, **changes: object) -> Silence:
    settings: dict[str, object] = {
        "starts_at": T0,
        "ends_at": T0 + 3600,
        "author": "ana",
        "comment": "Bitso maintenance",
        "now": T0,
    }
    settings.update(changes)
    return new_silence(list(matchers), **settings)  # type: ignore[arg-type]


def test_a_silence_is_active_from_its_start_to_before_its_end() -> None:
    made = silence("rule=low-available", starts_at=T0 + 60)
    assert [made.state(t) for t in (T0, T0 + 60, T0 + 3599, T0 + 3600)] == [
        "pending", "active", "active", "expired",
    ]  # fmt: skip
    assert made.matches(fields()) and not made.matches(fields(rule="aml-lock"))
    ended = made.expired(T0 + 30)  # before it began: it never will
    assert (ended.starts_at, ended.ends_at) == (T0 + 30, T0 + 30)
    assert ended.state(T0 + 60) == "expired"
    assert ended.expired(T0 + 90) is ended


def test_a_silence_round_trips_through_its_record_and_shows_its_state() -> None:
    made = silence("rule=low-available", "account=~bitso-.*")
    assert Silence.from_record(made.to_record()) == made
    shown = made.to_json(T0 + 1)
    assert shown["matchers"] == ["rule=low-available", "account=~bitso-.*"]
    assert (shown["state"], shown["author"], shown["starts_at"]) == (
        "active", "ana", "2027-01-15T08:00:00Z"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("matchers", "changes", "key", "says"),
    [
        ((), {}, "matchers", "at least one matcher"),
        (("account=~.*",), {}, "matchers", "would mute every alert"),
        (("account=~(",), {}, "matchers", "invalid regular expression"),
        (("rule=x",), {"ends_at": T0}, "ends_at", "end after it starts"),
        (("rule=x",), {"now": T0 + 7200}, "ends_at", "over already"),
        (("rule=x",), {"ends_at": T0 + 400 * 86400}, "ends_at", "365 days"),
        (("rule=x",), {"author": " "}, "author", "needs a author"),
        (("rule=x",), {"comment": ""}, "comment", "needs a comment"),
        (("rule=x",), {"comment": "two\nlines"}, "comment", "one line"),
    ],
)
def test_a_silence_that_cannot_be_made_names_its_bad_part(
    matchers: tuple[str, ...], changes: dict[str, object], key: str, says: str
) -> None:
    with pytest.raises(SilenceError) as caught:
        silence(*matchers, **changes)
    assert caught.value.key == key and says in caught.value.message


def test_times_with_a_zone_and_local_ones() -> None:
    assert parse_time("2027-01-15T08:00:00Z", zone_required=True) == T0
    assert parse_time("2027-01-15T10:00:00+02:00", zone_required=True) == T0
    with pytest.raises(ValueError, match="with a zone"):
        parse_time("2027-01-15T08:00:00", zone_required=True)
    assert isinstance(parse_time("2027-01-15T08:00:00", zone_required=False), float)
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time("tomorrow", zone_required=False)
