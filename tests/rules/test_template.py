"""Templates: load-time validation with offsets, rendering that never raises."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balwatch.model import METRICS
from balwatch.rules.template import FIELDS, Template, TemplateError, duration_text

D = Decimal


def test_renders_fields_and_literal_text() -> None:
    t = Template("{account} {asset}: only {available} available")
    assert t.fields == {"account", "asset", "available"}
    assert t.render({"account": "bitso-treasury", "asset": "USDT", "available": D("4210.55")}) == (
        "bitso-treasury USDT: only 4210.55 available"
    )


def test_every_documented_name_is_allowed() -> None:
    names = ["account", "exchange", "venue", "asset", "rule", "severity", "age", "failures"]
    names += ["values", "group", "members"]
    for name in [*names, *METRICS]:
        assert Template(f"{{{name}}}").fields == {name}
    assert set(FIELDS) == {*names, *METRICS}


def test_missing_values_render_as_na() -> None:
    t = Template("{total}/{hold}/{asset}")
    assert t.render({"total": None}) == "n/a/n/a/n/a"


def test_decimals_render_in_plain_notation() -> None:
    t = Template("{total} {available} {locked}")
    values = {"total": D("1E+3"), "available": D("1E-8"), "locked": D("-0.50")}
    assert t.render(values) == "1000 0.00000001 -0.50"


def test_braces_escape() -> None:
    t = Template("{{literal}} {asset} }}")
    assert t.fields == {"asset"}
    assert t.render({"asset": "BTC"}) == "{literal} BTC }"


def test_no_fields_and_empty() -> None:
    assert Template("").render({}) == ""
    assert Template("plain").render({"asset": "x"}) == "plain"


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("{account.name}", "attribute access in template fields is not supported", 8),
        ("x {asset[0]}", "indexing in template fields is not supported", 8),
        ("{asset!r}", "conversions like !r in template fields are not supported", 6),
        ("{available:.2f}", "format specs in template fields are not supported", 10),
        ("{}", "empty field", 1),
        ("{0}", "plain names", 1),
        ("{ asset}", "plain names", 1),
        ("{!r}", "conversions", 1),
        ("ab {acount}", "did you mean 'account'", 4),
        ("{foo}", "expected one of", 1),
        ("only { here", "never closed", 5),
        ("a } b", "single '}'", 2),
        ("{a{b}", "nested fields in template fields are not supported", 2),
    ],
)
def test_bad_templates_name_the_problem_and_its_offset(
    text: str, message: str, offset: int
) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        Template(text)
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)  # the loader catches ValueError


@given(
    st.text(max_size=40), st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none() | st.text())
)
def test_render_never_raises(text: str, values: dict[str, object]) -> None:
    try:
        t = Template(text)
    except TemplateError:
        return
    assert isinstance(t.render(values), str)


def test_equality_by_text() -> None:
    assert Template("{asset}") == Template("{asset}")
    assert Template("{asset}") != Template("{account}")
    assert len({Template("{asset}"), Template("{asset}")}) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        ("0", "0s"),
        ("-3", "0s"),
        ("59.9", "59s"),
        ("60", "1m"),
        ("3725", "1h2m5s"),
        ("90000", "1d1h"),
    ],
)
def test_duration_text(seconds: str, text: str) -> None:
    assert duration_text(D(seconds)) == text
