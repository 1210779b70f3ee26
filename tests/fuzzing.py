"""Fuzz targets for the code that reads hostile or hand-written input, and their generators.

``bench/fuzz.py`` runs them at length (100,000 cases a target) and ``tests/test_fuzz_smoke.py``
briefly in CI. Targets:

* ``bitso``, ``coinapi``, ``kunacore``, ``coinw``: the response parsers
  (``parse_balances(body, account)``) on arbitrary JSON values, on near-valid bodies of the
  source's own shape with arbitrary amount values (text, huge and negative numbers, NaN,
  exponents, wrong types, missing and extra fields, repeated assets), and on response text
  (mutated, truncated, deeply nested) read through ``Response.json`` as the adapter does.
  Only :class:`~balwatch.errors.BadResponse` may come out, or rows that hold the documented
  invariants (finite, non-negative amounts within ``balwatch.money``'s bounds, required
  metrics present, totals that add up exactly, unique assets, text-only extras).
* ``config``: ``load_config`` on arbitrary text and bytes, and on config-shaped YAML (mutated
  too: duplicate lines, tabs, anchors, tags, ``${...}`` references) written to a file. Only
  :class:`~balwatch.errors.ConfigError` or a :class:`~balwatch.config.Config` whose secrets,
  account specs and poll intervals can be read.
* ``rules``: ``load_rule_set`` the same way with rule-shaped YAML (and the example rules and
  the rule-test corpus, mutated). Only ConfigError or a RuleSet.
* ``expr``: ``parse_expression`` on arbitrary text, token soup of the rule language, and
  well-typed expressions (mutated too). Only :class:`~balwatch.rules.expr.ExprError` or an
  Expression; every parsed expression is then evaluated on random contexts (missing values,
  zero, huge, negative, NaN, infinite) where ``evaluate`` must return True, False or None and
  ``values`` a dict of Decimals, never raise.

Each generator is written once against a small :class:`Source` of choices. One case in twenty
draws every choice from hypothesis (so a failure shrinks to a small input); the rest
draw them from a ``random.Random`` seeded by hypothesis, which is some 30 times cheaper and
what makes 100,000 cases a target a matter of minutes.

:func:`run_target` feeds a target its cases and reports the first input that raised anything
else, or returned output that breaks an invariant, with hypothesis' falsifying example and a
``@reproduce_failure`` blob.
"""

from __future__ import annotations

import datetime
import functools
import json
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation
from pathlib import Path
from random import Random
from typing import Any, Final, Protocol, TypeVar

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from balwatch.adapters import REPORTED_METRICS, bitso, coinapi, coinw, kunacore
from balwatch.adapters.http import Response
from balwatch.config import Config, load_config
from balwatch.errors import BadResponse, ConfigError
from balwatch.model import METRICS, Balance
from balwatch.rules.expr import WINDOW_FUNCS, ExprError, Expression, parse_expression
from balwatch.rules.load import RuleSet, load_rule_set

ROOT: Final = Path(__file__).resolve().parent.parent
ACCOUNT: Final = "fuzz-account"
T = TypeVar("T")


class InvalidOutput(AssertionError):
    """A target returned normally, but what it returned breaks a documented invariant."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidOutput(message)


# --------------------------------------------------------------------------- choices


class Source(Protocol):
    """Where a generator's choices come from: hypothesis, or a seeded ``random.Random``."""

    def below(self, n: int) -> int:
        """A whole number in ``[0, n)``."""
        ...

    def integer(self, low: int, high: int) -> int: ...

    def text(self, max_size: int) -> str: ...

    def binary(self, max_size: int) -> bytes: ...

    def real(self) -> float:
        """Any float, NaN and infinities included."""
        ...


@functools.cache
def _below(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


class DrawSource:
    """Every choice is a hypothesis draw: slow, but a failure shrinks to a small input."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def below(self, n: int) -> int:
        return self._draw(_below(n))

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def text(self, max_size: int) -> str:
        return self._draw(st.text(max_size=max_size))

    def binary(self, max_size: int) -> bytes:
        return self._draw(st.binary(max_size=max_size))

    def real(self) -> float:
        return self._draw(st.floats())


# Characters a RandomSource writes: mostly ASCII, some whitespace and controls, some of the
# rest of Unicode (surrogates included: they reach files as undecodable bytes).
_ASCII: Final = "".join(chr(c) for c in range(32, 127))
_SPECIAL: Final = "\t\n\r\x00\x0b\x0c\x1b\x7f\x85\xa0\u2028\ufeff\ufffd"
_REALS: Final = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, 5e-324, 0.1]


class RandomSource:
    """Choices from a seeded ``random.Random``: cheap; the case itself is the reproducer."""

    def __init__(self, seed: int) -> None:
        self._rng = Random(seed)

    def below(self, n: int) -> int:
        return self._rng.randrange(n)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def text(self, max_size: int) -> str:
        rng = self._rng
        chars = []
        for _ in range(rng.randint(0, max_size)):
            kind = rng.randrange(10)
            if kind < 7:
                chars.append(rng.choice(_ASCII))
            elif kind < 8:
                chars.append(rng.choice(_SPECIAL))
            else:
                chars.append(chr(rng.randrange(0x80, 0x110000)))
        return "".join(chars)

    def binary(self, max_size: int) -> bytes:
        return self._rng.randbytes(self._rng.randint(0, max_size))

    def real(self) -> float:
        if self._rng.randrange(2):
            return self._rng.choice(_REALS)
        return self._rng.uniform(-1e20, 1e20)


def pick(src: Source, items: Sequence[T]) -> T:
    return items[src.below(len(items))]


def cases(generate: Callable[[Source], T]) -> st.SearchStrategy[T]:
    """Hypothesis-drawn cases one time in twenty, seeded fast ones the rest."""
    drawn = st.composite(lambda draw: generate(DrawSource(draw)))()
    fast = st.integers(0, 2**64 - 1).map(lambda seed: generate(RandomSource(seed)))
    return st.one_of(drawn, *[fast] * 19)


def mutate(src: Source, text: str, tokens: Sequence[str]) -> str:
    """``text`` with up to three edits: cut a span, insert a token, truncate, repeat a line."""
    for _ in range(src.below(4)):
        where = src.below(len(text) + 1)
        kind = src.below(4)
        if kind == 0:
            text = text[:where] + text[where + 1 + src.below(20) :]
        elif kind == 1:
            text = text[:where] + pick(src, tokens) + text[where:]
        elif kind == 2:
            text = text[:where]
        else:
            lines = text.split("\n")
            line = where % len(lines)
            lines.insert(line, lines[line])
            text = "\n".join(lines)
    return text


# --------------------------------------------------------------------------- JSON values

EDGE_INTS: Final = [0, -1, 2**63, 2**140, 2**141, -(2**140), 10**40, 10**41, 10**4000]
EDGE_AMOUNT_TEXT: Final = [
    "0", "-0", "+0", "0.0", "1", "1.5", "1e3", "1E+40", "1E+41", "9" * 41, "9" * 42,
    "0." + "0" * 39 + "1", "0." + "0" * 40 + "1", "1e-40", "1e-41", "0E-1000", "0E+100000",
    "-1", "-0.00000001", "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", " 1",
    "1 ", "\t1", "1\n", "1_000", "1,5", "0x10", "١٢٣", "𝟙", "", ".", "e5", "1e", "--1",
    "1" * 101, "0" * 100 + "1",
]  # fmt: skip
EDGE_DECIMALS: Final = [
    Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-0"), Decimal("1E-41"),
    Decimal("0E+999999999"), Decimal("0E-999999999"), Decimal("1E+999999999"),
]  # fmt: skip
KEYS: Final = ["currency", "total", "balance", "data", "code", "asset", "payload", "balances"]


def json_int(src: Source) -> int:
    kind = src.below(3)
    if kind == 0:
        return src.integer(-(10**6), 10**6)
    if kind == 1:
        return src.integer(-(2**600), 2**600)
    return pick(src, EDGE_INTS)


def number_text(src: Source, *, fraction: bool = False) -> str:
    """Text of a JSON number: sign, up to 46 digits, fraction, exponent."""
    text = ("-" if src.below(4) == 0 else "") + str(src.integer(0, 10**45))
    if fraction or src.below(2):
        text += "." + str(src.integer(0, 10**45)).zfill(src.below(46))
    if src.below(3) == 0:
        text += pick(src, ["e", "E", "e+", "e-", "E-"]) + str(src.integer(0, 10**12))
    return text


def json_decimal(src: Source) -> Decimal:
    """A Decimal as ``json.loads(parse_float=Decimal)`` makes one (any exponent, finite)."""
    return Decimal(number_text(src, fraction=True))


def amount_text(src: Source) -> str:
    kind = src.below(4)
    if kind == 0:
        return number_text(src)
    if kind == 1:
        return pick(src, ["+", "", " ", "0"]) + number_text(src)
    if kind == 2:
        return pick(src, EDGE_AMOUNT_TEXT)
    return src.text(40)


def amount(src: Source) -> Any:
    """What a source might send for an amount: mostly text or a number, sometimes not."""
    kind = src.below(12)
    if kind < 4:
        return amount_text(src)
    if kind < 6:
        return json_int(src)
    if kind < 8:
        return json_decimal(src)
    if kind == 8:
        return pick(src, EDGE_DECIMALS)
    if kind == 9:
        return src.real()  # never from json.loads(parse_float=Decimal): must still be refused
    return pick(src, [True, False, None, [], {}])


def json_scalar(src: Source) -> Any:
    kind = src.below(6)
    if kind == 0:
        return pick(src, [None, True, False])
    if kind == 1:
        return json_int(src)
    if kind == 2:
        return json_decimal(src)
    if kind == 3:
        return amount_text(src)
    return src.text(20)


def json_value(src: Source, depth: int = 0) -> Any:
    if depth >= 3 or src.below(3):
        return json_scalar(src)
    if src.below(2):
        return [json_value(src, depth + 1) for _ in range(src.below(4))]
    return {
        (pick(src, KEYS) if src.below(2) else src.text(10)): json_value(src, depth + 1)
        for _ in range(src.below(4))
    }


Gen = Callable[[Source], Any]


def record(src: Source, fields: dict[str, Gen], extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON object: each of ``fields`` present or not (sometimes of a wrong type), plus a
    member or two more."""
    out: dict[str, Any] = {}
    for _ in range(src.below(3) // 2 + src.below(3) // 2):
        key = pick(src, [*fields, *extra_keys]) if src.below(2) else src.text(10)
        out[key] = json_scalar(src)
    for name, generate in fields.items():
        if src.below(6):
            out[name] = generate(src) if src.below(8) else json_value(src)
    return out


def sometimes(src: Source, generate: Gen) -> Any:
    """``generate`` mostly, an arbitrary JSON value otherwise (a wrong type)."""
    return generate(src) if src.below(6) else json_value(src)


ASSET_CODES: Final = ["btc", "BTC", "Btc", "usdt", "USDT", "mxn", "eth", "ß", "ǆ", "ﬀ", "", " "]


def asset_code(src: Source) -> Any:
    return sometimes(src, lambda s: pick(s, ASSET_CODES) if s.below(2) else s.text(8))


def entries(src: Source, generate: Gen, most: int = 5) -> Any:
    return sometimes(src, lambda s: [generate(s) for _ in range(s.below(most + 1))])


BITSO_AMOUNTS: Final = ("total", "available", "locked", "pending_deposit", "pending_withdrawal")


def bitso_loose(src: Source) -> Any:
    def entry(s: Source) -> Any:
        fields: dict[str, Gen] = {"currency": asset_code}
        fields.update(dict.fromkeys(BITSO_AMOUNTS, amount))
        return sometimes(s, lambda t: record(t, fields))

    def payload(s: Source) -> Any:
        return sometimes(s, lambda t: record(t, {"balances": lambda u: entries(u, entry)}))

    def success(s: Source) -> Any:
        return True if s.below(4) else json_value(s)

    return record(src, {"success": success, "payload": payload, "error": json_value})


def coinapi_loose(src: Source) -> Any:
    fields: dict[str, Gen] = {"asset_id_coinapi": asset_code, "asset_id_exchange": asset_code}
    fields.update(dict.fromkeys(coinapi.AMOUNT_FIELDS, amount))

    def row(s: Source) -> Any:
        return sometimes(s, lambda t: record(t, fields, ["traded", "last_updated_by"]))

    def venue(s: Source) -> Any:
        venue_fields: dict[str, Gen] = {
            "exchange_id": lambda t: sometimes(t, lambda u: pick(u, ["KRAKEN", "BINANCE", ""])),
            "data": lambda t: entries(t, row, 4),
        }
        return sometimes(s, lambda t: record(t, venue_fields))

    return entries(src, venue, 3)


def kunacore_loose(src: Source) -> Any:
    fields: dict[str, Gen] = {"asset": asset_code, "depositAddress": json_value}
    fields.update(dict.fromkeys(kunacore.WIRE_METRICS, amount))

    def item(s: Source) -> Any:
        return sometimes(s, lambda t: record(t, fields, ["settlementBalance"]))

    return sometimes(src, lambda s: record(s, {"data": lambda t: entries(t, item)}))


def coinw_loose(src: Source) -> Any:
    def balance(s: Source) -> Any:
        return sometimes(s, lambda t: record(t, {"available": amount, "onOrders": amount}))

    def data(s: Source) -> Any:
        return sometimes(
            s,
            lambda t: {
                (pick(t, ASSET_CODES) if t.below(2) else t.text(8)): balance(t)
                for _ in range(t.below(6))
            },
        )

    def code(s: Source) -> Any:
        if s.below(3):
            return pick(s, ["200", 200, Decimal("200"), Decimal("200.0"), "29001", -1, True])
        return json_value(s)

    return record(src, {"code": code, "data": data, "msg": json_value, "success": json_value})


def valid_amount(src: Source) -> str:
    """Amount text as sources send it: up to 12 integer digits, up to 18 decimals."""
    text = str(src.integer(0, 10**12))
    if src.below(2):
        text += "." + str(src.integer(0, 10**18)).zfill(1 + src.below(18))
    return text


def distinct_codes(src: Source) -> list[str]:
    codes = ["BTC", "USDT", "ETH", "MXN", "UAH", "SOL", "XRP", "TRX", "EUR", "USD"]
    return [codes[i] for i in sorted({src.below(len(codes)) for _ in range(src.below(6))})]


def bitso_valid(src: Source) -> Any:
    rows = [
        {"currency": code.lower(), **{name: valid_amount(src) for name in BITSO_AMOUNTS}}
        for code in distinct_codes(src)
    ]
    return {"success": True, "payload": {"balances": rows}}


def coinapi_valid(src: Source) -> Any:
    def number(s: Source) -> Any:
        text = valid_amount(s)
        return Decimal(text) if "." in text else int(text)

    def row(code: str) -> dict[str, Any]:
        amounts = {name: number(src) for name in coinapi.AMOUNT_FIELDS}
        extra = {"traded": number(src), "last_updated_by": "EXCHANGE"}
        return {"asset_id_exchange": code.lower(), "asset_id_coinapi": code, **amounts, **extra}

    venues = ["KRAKEN", "BINANCESPOT", "COINBASE"][: 1 + src.below(3)]
    return [{"exchange_id": v, "data": [row(c) for c in distinct_codes(src)]} for v in venues]


def kunacore_valid(src: Source) -> Any:
    def item(code: str) -> dict[str, Any]:
        amounts = {name: valid_amount(src) for name in kunacore.WIRE_METRICS}
        address = {"TRC20": {"address": "T" + "x" * 33, "memo": None}}
        return {"asset": code, **amounts, "depositAddress": address}

    return {"data": [item(code) for code in distinct_codes(src)]}


def coinw_valid(src: Source) -> Any:
    data = {
        code: {"available": valid_amount(src), "onOrders": valid_amount(src)}
        for code in distinct_codes(src)
    }
    return {"code": "200", "data": data, "msg": "SUCCESS", "success": True, "failed": False}


def corrupt(src: Source, body: Any) -> Any:
    """``body`` with one member changed: replaced by an odd amount or any JSON value,
    removed, repeated (a list entry twice), or upper/lower-cased (a text value)."""
    places: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                places.append((node, key))
                walk(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                places.append((node, index))
                walk(value)

    walk(body)
    if not places:
        return json_value(src)
    container, key = pick(src, places)
    kind = src.below(6)
    if kind < 2:
        container[key] = amount(src)
    elif kind == 2:
        container[key] = json_value(src)
    elif kind == 3:
        del container[key]
    elif kind == 4 and isinstance(container, list):
        container.append(container[key])
    elif isinstance(container[key], str):
        container[key] = container[key].swapcase()
    else:
        container[key] = pick(src, [None, "", [], {}, True])
    return body


def body_of(valid: Gen, loose: Gen) -> Gen:
    """A valid body (a fifth), one with up to three corruptions, or a loosely built one."""

    def generate(src: Source) -> Any:
        kind = src.below(5)
        if kind == 0:
            return valid(src)
        if kind < 3:
            body = valid(src)
            for _ in range(1 + src.below(3)):
                body = corrupt(src, body)
            return body
        return loose(src)

    return generate


def to_json_text(value: Any) -> str:
    """JSON text of a generated body; Decimals and floats as bare text (NaN gives bad JSON)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(Decimal(value))  # str(int) refuses more than 4300 digits
    if isinstance(value, Decimal | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(to_json_text(item) for item in value) + "]"
    return "{" + ",".join(f"{json.dumps(k)}:{to_json_text(v)}" for k, v in value.items()) + "}"


PATHOLOGICAL_TEXT: Final = [
    "", " ", "null", "[]", "{}", "NaN", "-Infinity", '{"a": NaN}', "\ufeff{}", '"\\ud800"',
    "1" * 5000, "[" * 100_000, '{"a":' * 50_000, "<html><body>502 Bad Gateway</body></html>",
    '{"a": 1e1000000000000000000}', "-1.5E-99999999999999999999",
]  # fmt: skip
JSON_TOKENS: Final = [
    '"', ",", ":", "{", "}", "[", "]", "null", "true", "1e999", "-", "\\", "NaN",
    "1e99999999999999999999",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class WireText:
    """A response body as text: parsed through ``Response.json`` first, as the adapter does."""

    text: str

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 200 else f"{self.text[:200]}...({len(self.text)})"
        return f"WireText({text!r})"


def parser_case(body: Gen) -> Gen:
    def generate(src: Source) -> Any:
        kind = src.below(10)
        if kind < 5:
            return body(src)
        if kind == 5:
            return json_value(src)
        if kind < 9:
            return WireText(mutate(src, to_json_text(body(src)), JSON_TOKENS))
        return WireText(pick(src, PATHOLOGICAL_TEXT) if src.below(2) else src.text(80))

    return generate


# What each source must always report when it returns a row.
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "bitso": ("total", "available", "locked"),
    "coinapi": ("total",),
    "kunacore": ("available",),
    "coinw": ("total", "available", "locked"),
}
# balwatch.money: at most 40 decimal places, magnitudes below 1e41; a sum of three such
# amounts (Kuna Core's total) may reach one more digit.
MIN_EXPONENT: Final = -40
MAX_ADJUSTED: Final = 41
# Sums for the checks: exact for any amount within those bounds (the default context
# rounds to 28 digits).
EXACT: Final = Context(prec=400, traps=[Inexact, InvalidOperation])


def check_amount(row: Balance, name: str, value: object) -> None:
    where = f"{row.asset} {name}={value!r}"
    expect(value is None or type(value) is Decimal, f"{where}: not a Decimal or None")
    if not isinstance(value, Decimal):
        return
    expect(value.is_finite(), f"{where}: not finite")
    expect(not value or not value.is_signed(), f"{where}: negative")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    expect(exponent >= MIN_EXPONENT, f"{where}: more than {-MIN_EXPONENT} decimal places")
    top = value.adjusted() if value else exponent
    expect(top <= MAX_ADJUSTED, f"{where}: beyond 1e{MAX_ADJUSTED + 1}")


def check_rows(source: str, rows: object) -> None:
    expect(type(rows) is list, f"rows are a {type(rows).__name__}, not a list")
    assert isinstance(rows, list)
    seen: set[tuple[str, str]] = set()
    for row in rows:
        expect(type(row) is Balance, f"a row is a {type(row).__name__}")
        expect(row.account == ACCOUNT and row.exchange == source, f"{row}: wrong account/source")
        for name in ("venue", "asset", "raw_asset"):
            value = getattr(row, name)
            expect(isinstance(value, str) and bool(value), f"{row}: {name} is not a non-empty str")
        expect((row.venue, row.asset) not in seen, f"{row.venue}/{row.asset} listed twice")
        seen.add((row.venue, row.asset))
        for name in METRICS:
            check_amount(row, name, row.metric(name))
        for name in REQUIRED[source]:
            expect(row.metric(name) is not None, f"{row.asset}: required {name} is None")
        extras = row.extras
        expect(
            all(isinstance(k, str) and isinstance(v, str) for k, v in extras.items()),
            f"{row.asset}: extras are not text: {extras!r}",
        )
        if source == "coinw":
            parts = EXACT.add(row.available, row.locked)
            expect(row.total == parts, f"{row}: total != available + locked")
        if source == "kunacore":
            if row.hold is None or row.aml_locked is None:
                expect(row.total is None, f"{row}: total without all its parts")
            else:
                parts = EXACT.add(EXACT.add(row.available, row.hold), row.aml_locked)
                expect(row.total == parts, f"{row}: total is not the sum of its parts")
        json.dumps(row.to_json())  # what /api/balances serves


PARSERS: Final[dict[str, Callable[[Any, str], list[Balance]]]] = {
    "bitso": bitso.parse_balances,
    "coinapi": coinapi.parse_balances,
    "kunacore": kunacore.parse_balances,
    "coinw": coinw.parse_balances,
}
BODIES: Final[dict[str, Gen]] = {
    "bitso": body_of(bitso_valid, bitso_loose),
    "coinapi": body_of(coinapi_valid, coinapi_loose),
    "kunacore": body_of(kunacore_valid, kunacore_loose),
    "coinw": body_of(coinw_valid, coinw_loose),
}


def parse_case(source: str, case: Any) -> bool:
    """One parser input; True if rows came out (checked), False for a BadResponse."""
    try:
        if isinstance(case, WireText):
            case = Response(source, 200, {}, case.text).json()
        rows = PARSERS[source](case, ACCOUNT)
    except BadResponse:
        return False
    check_rows(source, rows)
    return True


# --------------------------------------------------------------------------- expressions

NUMBERS: Final = ["0", "1", "5000", "0.25", "1.5", "0.00000001", "9" * 40, "1" + "0" * 60]
DURATIONS: Final = ["500ms", "30s", "15m", "2h", "1d", "0s", "30d", "31d", "0ms", "720h"]
AMOUNT_NAMES: Final = [*METRICS, "failures"]
CMP: Final = ["<", "<=", ">", ">=", "==", "!="]
EXPR_TOKENS: Final = [
    *NUMBERS, *DURATIONS, *AMOUNT_NAMES, "usd", *WINDOW_FUNCS, "+", "-", "*", "/", *CMP, "(",
    ")", ",", "age", "and", "or", "not", "**", "//", "lambda", "import", "None", "True",
    "match", "_", "__import__", "1e6", "15min", "1_000", "1.2.3", ".5", "total.x", "[", "]",
    "{", "}", "'x'", '"', "=", "!", "&", "|", "~", "%", "^", "@", ":", "\x00", "é", "٣",
    "\n", "\t", "ms", "s", "m", "d",
]  # fmt: skip


def amount_expr(src: Source, depth: int) -> str:
    kind = src.below(4 if depth <= 0 else 10)
    if kind == 0:
        return pick(src, AMOUNT_NAMES)
    if kind == 1:
        return pick(src, NUMBERS)
    if kind == 2:
        return f"usd({pick(src, METRICS)})"
    if kind == 3:
        func = pick(src, WINDOW_FUNCS)
        return f"{func}({pick(src, METRICS)}, {pick(src, DURATIONS[:7])})"
    if kind == 4:
        return f"({amount_expr(src, depth - 1)})"
    if kind == 5:
        return f"-{amount_expr(src, depth - 1)}"
    if kind == 6:
        return f"{duration_expr(src, depth - 1)} / {duration_expr(src, depth - 1)}"
    op = pick(src, ["+", "-", "*", "/"])
    return f"{amount_expr(src, depth - 1)} {op} {amount_expr(src, depth - 1)}"


def duration_expr(src: Source, depth: int) -> str:
    kind = src.below(2 if depth <= 0 else 7)
    if kind == 0:
        return pick(src, DURATIONS[:7])
    if kind == 1:
        return "age"
    if kind == 2:
        return f"({duration_expr(src, depth - 1)})"
    if kind == 3:
        return f"-{duration_expr(src, depth - 1)}"
    if kind == 4:
        op = pick(src, ["+", "-"])
        return f"{duration_expr(src, depth - 1)} {op} {duration_expr(src, depth - 1)}"
    if kind == 5:
        op = pick(src, ["*", "/"])
        return f"{duration_expr(src, depth - 1)} {op} {amount_expr(src, depth - 1)}"
    return f"{amount_expr(src, depth - 1)} * {duration_expr(src, depth - 1)}"


def condition(src: Source, depth: int) -> str:
    kind = src.below(2 if depth <= 0 else 5)
    if kind == 0:
        return f"{amount_expr(src, depth - 1)} {pick(src, CMP)} {amount_expr(src, depth - 1)}"
    if kind == 1:
        return f"{duration_expr(src, depth - 1)} {pick(src, CMP)} {duration_expr(src, depth - 1)}"
    if kind == 2:
        op = pick(src, ["and", "or"])
        return f"{condition(src, depth - 1)} {op} {condition(src, depth - 1)}"
    if kind == 3:
        return f"not {condition(src, depth - 1)}"
    return f"({condition(src, depth - 1)})"


def token_soup(src: Source) -> str:
    gap = pick(src, [" ", " ", "", "\n"])
    return gap.join(pick(src, EXPR_TOKENS) for _ in range(src.below(26)))


def expression_text(src: Source) -> str:
    """Well-typed conditions (so evaluation gets work), mutated ones, soup, text, extremes."""
    kind = src.below(20)
    if kind < 9:
        return condition(src, src.below(6))
    if kind < 13:
        return mutate(src, condition(src, src.below(5)), EXPR_TOKENS)
    if kind < 16:
        return token_soup(src)
    if kind < 18:
        return src.text(60)
    nesting = src.below(80)
    return pick(
        src,
        [
            "(" * nesting + "total" + ")" * nesting + " > 0",
            "-" * nesting + "total > 0",
            "not " * nesting + "total > 0",
            "total > 0 and " * (nesting * 3) + "total > 0",  # past MAX_LENGTH at the top
        ],
    )


CONTEXT_VALUES: Final = [
    None, Decimal(0), Decimal("-0"), Decimal(1), Decimal("0.00000001"), Decimal(5000),
    Decimal("1E+40"), Decimal("9.999E+999999"), Decimal("-3.5"), Decimal("1E-40"),
    Decimal("1E-999999"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"),
    Decimal("-Infinity"), Decimal("123456789012345678901234567890.123456789"),
]  # fmt: skip
FAILURES: Final = [0, 1, 3, 10**6, 2**70]


class RandomContext:
    """An :class:`~balwatch.rules.expr.EvalContext` answering from a seeded pool."""

    def __init__(self, rng: Random) -> None:
        self.rng = rng

    def metric(self, name: str) -> Decimal | None:
        return self.rng.choice(CONTEXT_VALUES)

    def window_value(self, func: str, metric: str, window: float) -> Decimal | None:
        return self.rng.choice(CONTEXT_VALUES)

    def age(self) -> Decimal | None:
        return self.rng.choice(CONTEXT_VALUES)

    def failures(self) -> int:
        return self.rng.choice(FAILURES)


def expression_case(case: tuple[str, int]) -> bool:
    source, context_seed = case
    try:
        expr = parse_expression(source)
    except ExprError as exc:
        expect(0 <= exc.offset <= len(source), f"offset {exc.offset} outside the source")
        exc.pointer(source)  # what the loader shows
        exc.line_col(source)
        return False
    expect(type(expr) is Expression, f"parse_expression returned {type(expr).__name__}")
    rng = Random(context_seed)
    for _ in range(4):
        ctx = RandomContext(rng)
        result = expr.evaluate(ctx)
        expect(result is None or type(result) is bool, f"evaluate gave {result!r}")
        values = expr.values(ctx)
        expect(
            all(isinstance(k, str) and type(v) is Decimal for k, v in values.items()),
            f"values gave {values!r}",
        )
    return True


def expression_input(src: Source) -> tuple[str, int]:
    return expression_text(src), src.integer(0, 2**32)


# --------------------------------------------------------------------------- YAML files

YAML_TOKENS: Final = [
    ":", ": ", "- ", "&a ", "*a", "<<: *a\n", "!!python/object:os.system ", "!!binary ",
    "!!float ", "!!int ", "!!set ", "!!timestamp ", "\t", "'", '"', "{", "}", "[", "]", "${",
    "$${", "${API_KEY}", "---\n", "%YAML 1.1\n", "? ", "|\n", ">\n", "#", "\x00", "\ufeff",
    "~", "null", "yes", "0o17", "1e3", ".nan", "2026-01-01", "2026-02-30", "\n  ", "\r\n",
    "\\", "@", "1" * 5000,
]  # fmt: skip
REFERENCES: Final = [
    "${API_KEY}", "${NOPE}", "${file:secret.txt}", "${file:missing.txt}", "${file:}",
    "${file:creds}", "${cred:key}", "${cred:../key}", "${cred:}", "${cred:bad}", "${}", "${",
    "$${API_KEY}", "${a b}", "x${API_KEY}y${NOPE}",
]  # fmt: skip
NAMES: Final = ["main", "bitso-1", "ops", "chat", "a b", "", "x" * 80, "ünï"]
DURATION_TEXT: Final = ["30s", "500ms", "5m", "1d", "0s", "-5s", "30", "1y", "", "1e3s"]
URLS: Final = [
    "http://127.0.0.1:8080", "https://api.example.com/", "mqtt://user:pw@127.0.0.1:1883",
    "mqtts://broker:99999", "mqtt://[::1", "http://", "ftp://x", "${SIM_URL}", "${NOPE}/x",
    "https://hooks.example.com/services/T0/B0/xyz?token=1",
]  # fmt: skip


def yaml_scalar(src: Source) -> Any:
    kind = src.below(8)
    if kind == 0:
        return pick(src, [None, True, False])
    if kind == 1:
        return src.integer(-(10**30), 10**30)
    if kind == 2:
        return src.real()
    if kind == 3:
        return datetime.date(2000 + src.below(100), 1 + src.below(12), 1 + src.below(28))
    if kind == 4:
        return pick(src, REFERENCES)
    return src.text(16)


def yaml_value(src: Source, depth: int = 0) -> Any:
    if depth >= 2 or src.below(3):
        return yaml_scalar(src)
    if src.below(2):
        return [yaml_value(src, depth + 1) for _ in range(src.below(4))]
    return {
        (src.text(8) if src.below(4) else src.integer(-5, 5)): yaml_value(src, depth + 1)
        for _ in range(src.below(4))
    }


def choose(items: Sequence[Any]) -> Gen:
    return lambda src: pick(src, items)


def text_map(src: Source) -> dict[str, str]:
    return {src.text(5): src.text(5) for _ in range(src.below(3))}


def mapping(src: Source, fields: dict[str, Gen]) -> Any:
    """A YAML mapping: each field present or not, values sometimes of a wrong type, now and
    then an unknown key; sometimes not a mapping at all."""
    if src.below(12) == 0:
        return yaml_value(src)
    out: dict[Any, Any] = {}
    if src.below(6) == 0:
        out[src.text(6)] = yaml_scalar(src)
    for name, generate in fields.items():
        if src.below(2):
            out[name] = generate(src) if src.below(8) else yaml_value(src)
    return out


def listing(src: Source, generate: Gen, most: int) -> Any:
    if src.below(10) == 0:
        return yaml_value(src)
    return [generate(src) for _ in range(src.below(most + 1))]


def config_document(src: Source) -> Any:
    def credentials(s: Source) -> Any:
        keys = ["api_key", "api_secret", "merchant_id", "login", "password", "token"]
        return {
            pick(s, keys): pick(s, REFERENCES) if s.below(2) else s.text(10)
            for _ in range(s.below(5))
        }

    def options(s: Source) -> Any:
        values: list[Any] = ["login", "email", "KRAKEN", ["USDT", "BTC"], "", 5]
        keys = ["exchange_id", "wallet_id", "assets", "login_field", "bogus"]
        return {pick(s, keys): pick(s, values) for _ in range(s.below(4))}

    account: dict[str, Gen] = {
        "name": choose(NAMES),
        "exchange": choose(["bitso", "coinapi", "kunacore", "coinw", "binance"]),
        "base_url": choose(URLS),
        "poll_interval": choose(DURATION_TEXT),
        "timeout": choose(DURATION_TEXT),
        "credentials": credentials,
        "options": options,
        "labels": text_map,
    }
    sink: dict[str, Gen] = {
        "type": choose(["mqtt", "webhook", "email"]),
        "name": choose(NAMES),
        "url": choose(URLS),
        "topic_prefix": choose(["balwatch", "a/", "a/+", ""]),
        "qos": choose([0, 1, 2, 3]),
        "protocol": choose(["5", 5, "3.1.1", 3.1]),
        "ca_file": choose(["secret.txt", "missing.pem", "creds"]),
        "client_cert": choose(["secret.txt", "missing.pem"]),
        "client_key": choose(["secret.txt", "missing.pem"]),
        "min_severity": choose(["info", "warning", "critical", "debug"]),
        "send_resolved": choose([True, False]),
        "keepalive": choose(DURATION_TEXT),
        "format": choose(["generic", "slack", "telegram", "teams", "irc"]),
        "secret": choose(REFERENCES),
        "chat_id": choose([-100123, "-100123", "", 0]),
        "headers": lambda s: {s.text(5): pick(s, REFERENCES) for _ in range(s.below(3))},
        "timeout": choose(DURATION_TEXT),
        "verify_tls": choose([True, False]),
    }
    top: dict[str, Gen] = {
        "state_dir": lambda s: pick(s, REFERENCES) if s.below(2) else s.text(10),
        "rules": lambda s: [s.text(10) for _ in range(s.below(3))] if s.below(2) else s.text(5),
        "http": lambda s: mapping(
            s, {"listen": choose(["127.0.0.1:9464", "[::1]:80", ":1", "h:0", "x"])}
        ),
        "log": lambda s: mapping(
            s,
            {
                "format": choose(["auto", "json", "console", "xml"]),
                "level": choose(["debug", "info", "trace"]),
            },
        ),
        "defaults": lambda s: mapping(
            s, {"poll_interval": choose(DURATION_TEXT), "timeout": choose(DURATION_TEXT)}
        ),
        "accounts": lambda s: listing(s, lambda t: mapping(t, account), 4),
        "sinks": lambda s: listing(s, lambda t: mapping(t, sink), 3),
    }
    return mapping(src, top)


TEMPLATES: Final = [
    "{account} {asset}: {total}", "{values}", "{age} {failures}", "{bogus}", "{total:.2f}",
    "{a.b}", "{0}", "{{literal}}", "{", "}", "{account", "{venue} {rate_usd}",
]  # fmt: skip
GLOBS: Final = ["*", "bitso-*", "main", "[", "USDT", "**", "ops", "?"]


def rule_document(src: Source) -> Any:
    def globs(s: Source) -> Any:
        return [pick(s, GLOBS) for _ in range(s.below(3))]

    def expression(s: Source) -> Any:
        return condition(s, s.below(4)) if s.below(4) else token_soup(s)

    def notify(s: Source) -> Any:
        return [pick(s, ["ops", "chat", "opz"]) for _ in range(s.below(3))]

    severity = choose(["info", "warning", "critical", "fatal"])
    select: dict[str, Gen] = {
        "accounts": globs,
        "exchanges": globs,
        "venues": globs,
        "assets": globs,
        "exclude": lambda s: mapping(s, {"accounts": globs, "assets": globs, "bogus": globs}),
    }
    rule: dict[str, Gen] = {
        "name": choose(NAMES),
        "description": choose(TEMPLATES),
        "select": lambda s: mapping(s, select),
        "when": expression,
        "clear": expression,
        "for": choose(DURATION_TEXT),
        "repeat": choose(DURATION_TEXT),
        "severity": severity,
        "summary": choose(TEMPLATES),
        "labels": text_map,
        "notify": notify,
    }
    defaults: dict[str, Gen] = {
        "severity": severity,
        "for": choose(DURATION_TEXT),
        "notify": notify,
        "repeat": choose(DURATION_TEXT),
        "labels": text_map,
    }
    return mapping(
        src,
        {
            "defaults": lambda s: mapping(s, defaults),
            "rules": lambda s: listing(s, lambda t: mapping(t, rule), 4),
        },
    )


SPECIAL_YAML: Final = [
    "!!float", "!!int", "x: 2026-02-30", "x: " + "1" * 5000, "x: !!timestamp foo",
    "x: !!bool maybe", "x: !!int 0x", "2026-02-30: x", "? [a, b]\n: 1", "a: &a [*a]",
    "a: &a {b: *a}", "--- 1\n--- 2", "\ufeffa: 1", "a: !!binary '@@'",
]  # fmt: skip


def yaml_file(document: Gen, examples: Sequence[str]) -> Gen:
    """File contents: text, bytes, dumped documents and example files, mutated too."""

    def generate(src: Source) -> str | bytes:
        kind = src.below(10)
        if kind == 0:
            return src.text(120)
        if kind == 1:
            return src.binary(60)
        if kind == 2:
            return pick(src, SPECIAL_YAML)
        if kind < 5 and examples:
            return mutate(src, pick(src, examples), YAML_TOKENS)
        text = yaml.safe_dump(
            document(src),
            default_flow_style=bool(src.below(2)),
            sort_keys=False,
            allow_unicode=True,
        )
        return mutate(src, text, YAML_TOKENS) if src.below(2) else text

    return generate


def example_files(*patterns: str) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        found += [p.read_text(encoding="utf-8") for p in sorted(ROOT.glob(pattern)) if p.is_file()]
    return found


@dataclass
class Workdir:
    """Files the generated configs may reference: a secret file, credentials, a bad file."""

    path: Path
    environ: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.path / "secret.txt").write_text("s3cret\n")
        creds = self.path / "creds"
        creds.mkdir(exist_ok=True)
        (creds / "key").write_text("cred-value")
        (creds / "bad").write_bytes(b"\xff\xfe")
        self.environ = {
            "API_KEY": "k3y",
            "SIM_URL": "http://127.0.0.1:9",
            "CREDENTIALS_DIRECTORY": str(creds),
        }

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        return path


def config_case(work: Workdir, content: str | bytes) -> bool:
    path = work.write("balwatch.yaml", content)
    try:
        config = load_config(path, work.environ)
    except ConfigError as exc:
        expect(bool(exc.problems), "ConfigError without a problem")
        for problem in exc.problems:
            str(problem)
        return False
    expect(type(config) is Config, f"load_config returned {type(config).__name__}")
    # What the daemon reads right after loading.
    config.secrets()
    for account in config.accounts:
        config.account_spec(account)
        expect(config.poll_interval(account) > 0, "a poll interval is not positive")
    return True


SINK_NAMES: Final = frozenset({"ops", "chat"})
CONFIGURED: Final = {"main": "bitso", "bitso-1": "bitso", "ops": "coinw", "chat": "kunacore"}


def rules_case(work: Workdir, content: str | bytes) -> bool:
    path = work.write("fuzz.rules.yaml", content)
    try:
        rule_set = load_rule_set(
            [str(path)],
            sink_names=SINK_NAMES,
            accounts=CONFIGURED,
            reported_metrics=REPORTED_METRICS,
        )
    except ConfigError as exc:
        expect(bool(exc.problems), "ConfigError without a problem")
        expect(any(p.severity == "error" for p in exc.problems), "raised for warnings only")
        for problem in exc.problems:
            str(problem)
        return False
    expect(type(rule_set) is RuleSet, f"load_rule_set returned {type(rule_set).__name__}")
    for rule in rule_set.rules:
        expect(type(rule.when) is Expression, f"{rule.name}: when is not an Expression")
    return True


# --------------------------------------------------------------------------- running


@dataclass
class Target:
    name: str
    generate: Gen
    check: Callable[[Any], bool]  # True: accepted; False: refused as it should be


def make_targets(work: Workdir) -> dict[str, Target]:
    targets = {
        source: Target(source, parser_case(BODIES[source]), functools.partial(parse_case, source))
        for source in PARSERS
    }
    configs = example_files("rules/balwatch.example.yaml", "balwatch/demo/balwatch.yaml")
    rules = example_files(
        "rules/*.rules.yaml", "balwatch/demo/rules.yaml", "tests/rules/corpus/**/*.yaml"
    )
    targets["config"] = Target(
        "config", yaml_file(config_document, configs), lambda case: config_case(work, case)
    )
    targets["rules"] = Target(
        "rules", yaml_file(rule_document, rules), lambda case: rules_case(work, case)
    )
    targets["expr"] = Target("expr", expression_input, expression_case)
    return targets


TARGET_NAMES: Final = ("bitso", "coinapi", "kunacore", "coinw", "config", "rules", "expr")


@dataclass
class Outcome:
    name: str
    cases: int = 0
    accepted: int = 0
    seconds: float = 0.0
    report: str | None = None  # the failure: traceback, falsifying example, reproducer

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0


def run_target(target: Target, cases_wanted: int, seed: int | None = None) -> Outcome:
    """Feed ``cases_wanted`` inputs to ``target``; an unexpected exception ends in ``report``."""
    outcome = Outcome(target.name)

    def body(case: Any) -> None:
        outcome.cases += 1
        try:
            accepted = target.check(case)
        except Exception as exc:
            exc.add_note(f"input: {shown(case)}")
            raise
        outcome.accepted += accepted

    test = settings(
        max_examples=cases_wanted,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )(given(cases(target.generate))(body))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Generating overly large repr")
        try:
            test()
        except Exception as exc:
            outcome.report = "".join(traceback.format_exception(exc))
    outcome.seconds = time.perf_counter() - started
    return outcome


def run_named(name: str, cases_wanted: int, seed: int | None = None) -> Outcome:
    """One target in a work directory of its own (what a worker process runs)."""
    with tempfile.TemporaryDirectory(prefix="balwatch-fuzz-") as tmp:
        return run_target(make_targets(Workdir(Path(tmp)))[name], cases_wanted, seed)


def shown(case: Any, width: int = 2000) -> str:
    text = repr(case)
    return text if len(text) <= width else f"{text[:width]}... ({len(text):,} characters)"
