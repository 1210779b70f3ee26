"""Rule expressions: grammar, types, errors with offsets, no-data, exactness, safety."""

from __future__ import annotations

import ast
import decimal
import inspect
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balwatch.model import METRICS
from balwatch.rules import expr as expr_module
from balwatch.rules.expr import (
    MAX_DEPTH,
    MAX_LENGTH,
    WINDOW_FUNCS,
    ExprError,
    Expression,
    parse_expression,
)

D = Decimal


@dataclass
class Ctx:
    """A row as the engine would present it; records every read."""

    metrics: dict[str, Decimal | None] = field(default_factory=dict)
    windows: dict[tuple[str, str, float], Decimal | None] = field(default_factory=dict)
    age_s: Decimal | None = None
    fails: int = 0
    reads: list[tuple[str, ...]] = field(default_factory=list)

    def metric(self, name: str) -> Decimal | None:
        self.reads.append(("metric", name))
        return self.metrics.get(name)

    def window_value(self, func: str, metric: str, window: float) -> Decimal | None:
        self.reads.append(("window_value", func, metric, str(window)))
        return self.windows.get((func, metric, window))

    def age(self) -> Decimal | None:
        self.reads.append(("age",))
        return self.age_s

    def failures(self) -> int:
        self.reads.append(("failures",))
        return self.fails


def row(**metrics: str | None) -> Ctx:
    return Ctx({k: None if v is None else D(v) for k, v in metrics.items()})


def ev(source: str, ctx: Ctx) -> bool | None:
    return parse_expression(source).evaluate(ctx)


def err(source: str) -> ExprError:
    with pytest.raises(ExprError) as info:
        parse_expression(source)
    return info.value


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    "source",
    [
        "total - 2 * 3 == 4",  # * before -
        "total - 3 - 2 == 5",  # left-associative, not 10 - (3 - 2)
        "total / 2 / 5 == 1",  # left-associative, not 10 / (2 / 5)
        "(total - 3) * 2 == 14",
        "-total * 2 == -20",  # unary minus binds tighter than *
        "- total - 1 == -11",
        "--total == 10",
        "total > 5 or total > 1 and total > 100",  # and binds tighter than or
        "not total > 50",  # not applies to the whole comparison
        "not not total > 5",
        "not total > 50 and total > 5",  # (not ...) and ...
        "total + 1 > total",
        "0.25 * total == 2.5",
        "total >= 10 and total <= 10 and total == 10 and total != 11",
        "total\n  > 5\tand available < 5",  # newlines and tabs are whitespace
    ],
)
def test_precedence_and_associativity(source: str) -> None:
    assert ev(source, row(total="10", available="1")) is True


def test_or_is_lowest_and_not_sits_above_and() -> None:
    ctx = row(total="10")
    # (not (total > 50)) or (total > 50) is always true; not (... or ...) would be false.
    assert ev("not total > 50 or total > 5", ctx) is True
    assert ev("not (total > 50 or total > 5)", ctx) is False


@pytest.mark.parametrize(
    ("source", "age"),
    [
        ("age > 5m", "301"),
        ("age == 500ms", "0.5"),
        ("age == 1.5h", "5400"),
        ("age == 1d", "86400"),
        ("age == 30s + 1m", "90"),
        ("age == 2 * 1m", "120"),
        ("age == 1m * 2", "120"),
        ("age == 1h / 4", "900"),
        ("age / 1m == 2", "120"),
        ("-age < -1m", "61"),
        ("age - 1m > 0s", "61"),
    ],
)
def test_durations(source: str, age: str) -> None:
    ctx = Ctx(age_s=D(age))
    assert ev(source, ctx) is True


def test_account_scope_names() -> None:
    e = parse_expression("age > 5m or failures >= 3")
    assert e.account_scope is True
    assert e.metrics == frozenset()
    assert e.evaluate(Ctx(age_s=D(10), fails=3)) is True
    assert e.evaluate(Ctx(age_s=D(10), fails=2)) is False


def test_metadata() -> None:
    e = parse_expression(
        "pct_change(total, 15m) <= -20 and usd(available) > 5000 and delta(hold, 1h) > 0"
        " and age < 10m"
    )
    assert e.source.startswith("pct_change")
    assert e.metrics == {"total", "available", "rate_usd", "hold"}
    assert e.history_metrics == {"total", "hold"}
    assert e.windows == 3600.0
    assert e.account_scope is False
    simple = parse_expression("available < 5000")
    assert (simple.windows, simple.history_metrics) == (0.0, frozenset())
    assert repr(simple) == "Expression('available < 5000')"


def test_every_metric_is_a_name() -> None:
    for name in METRICS:
        assert parse_expression(f"{name} > 0").metrics == {name}


@pytest.mark.parametrize("func", WINDOW_FUNCS)
def test_window_functions_read_the_context(func: str) -> None:
    ctx = Ctx(windows={(func, "total", 900.0): D(-25)})
    e = parse_expression(f"{func}(total, 15m) < -20")
    assert e.evaluate(ctx) is True
    assert ("window_value", func, "total", "900.0") in ctx.reads


def test_usd_multiplies_by_rate() -> None:
    assert ev("usd(total) == 20.5", row(total="10", rate_usd="2.05")) is True
    assert ev("usd(total) > 1", row(total="10")) is None  # no rate: no data


# --------------------------------------------------------------------------- values


def test_values_are_canonical_in_order_and_skip_missing() -> None:
    # A function's metric argument is listed too: "total 800, pct_change(total, 15m) -20".
    e = parse_expression(
        "available < 0.1 * total or pct_change(total, 900s) < -20 or usd(total) > 1"
        " or available > 0 or max_over(hold, 90m) > 0 or age > 1m or failures > 1"
    )
    ctx = Ctx(
        {"available": D(5), "total": D(100), "rate_usd": D("0.5")},
        windows={("pct_change", "total", 900.0): D(-30)},
        age_s=D(75),
        fails=2,
    )
    assert e.values(ctx) == {
        "available": D(5),
        "total": D(100),
        "pct_change(total, 15m)": D(-30),
        "usd(total)": D(50),
        "age": D(75),
        "failures": D(2),
    }
    assert list(e.values(ctx)) == [
        "available",
        "total",
        "pct_change(total, 15m)",
        "usd(total)",
        "age",
        "failures",
    ]


def test_values_skip_overflowing_entries() -> None:
    e = parse_expression("usd(total) > 1")
    assert e.values(row(total="9e999999", rate_usd="10")) == {"total": D("9e999999")}


# --------------------------------------------------------------------------- no data


@pytest.mark.parametrize(
    ("source", "ctx"),
    [
        ("available < 5000", row()),
        ("available < 5000", row(available=None)),
        ("pending_withdrawal > 0.25 * total", row(pending_withdrawal="1")),
        ("pending_withdrawal > 0.25 * total", row(total="1")),
        ("available / total < 0.1", row(available="1", total="0")),  # division by zero
        ("available / (total - hold) < 0.1", row(available="1", total="5", hold="5")),
        ("pct_change(total, 15m) <= -20", row(total="1")),  # window not full
        ("age > 5m", Ctx(age_s=None)),  # never polled successfully
        # Strict: a missing input is no data even where and/or could decide without it.
        ("available < 5000 or aml_locked > 0", row(available="1")),
        ("available > 5000 and aml_locked > 0", row(available="1")),
        ("aml_locked > 0 or available < 5000", row(available="1")),
        ("not aml_locked > 0", row()),
        ("-aml_locked < 0", row()),
        ("1 < aml_locked", row()),
        ("aml_locked + 1 > 1", row()),
        ("1 + aml_locked > 1", row()),
        ("available - aml_locked > 1", row(available="5")),
    ],
)
def test_missing_inputs_are_no_data(source: str, ctx: Ctx) -> None:
    assert ev(source, ctx) is None


def test_present_inputs_still_decide() -> None:
    assert ev("available < 5000 or aml_locked > 0", row(available="1", aml_locked="0")) is True
    assert ev("available / total < 0.1", row(available="1", total="20")) is True


@pytest.mark.parametrize(
    ("source", "ctx"),
    [
        ("total * 10 > 1", row(total="9e999999")),  # overflow
        ("total - available > 1", row(total="Infinity", available="Infinity")),  # inf - inf
        ("total > 1", row(total="NaN")),
        ("total == 1", row(total="sNaN")),
        ("available / total > 1", row(available="Infinity", total="Infinity")),
    ],
)
def test_arithmetic_trouble_is_no_data_not_an_exception(source: str, ctx: Ctx) -> None:
    assert ev(source, ctx) is None


# --------------------------------------------------------------------------- exactness


def test_decimal_is_exact() -> None:
    assert ev("available + 0.1 == 0.3", row(available="0.2")) is True
    assert ev("available * 3 == 0.3", row(available="0.1")) is True
    big = "12345678901234567890.123456789"
    assert ev(f"total == {big}", row(total=big)) is True
    assert ev(f"total > {big}", row(total="12345678901234567890.12345678900001")) is True


def test_division_rounds_to_34_digits() -> None:
    # Documented limit: one third is rounded, so a third times three is not one.
    assert ev("total / 3 * 3 == 1", row(total="1")) is False
    assert ev("total / 3 == 0.3333333333333333333333333333333333", row(total="1")) is True


def test_result_does_not_depend_on_the_thread_decimal_context() -> None:
    e = parse_expression("available + 0.0001 > available")
    with decimal.localcontext() as local:
        local.prec = 3
        local.traps[decimal.Inexact] = True
        assert e.evaluate(row(available="1000")) is True


def test_no_float_anywhere() -> None:
    source = inspect.getsource(expr_module)
    # Only window lengths (seconds, from duration literals) become float, for the context.
    assert source.count("float(") == 1
    assert "seconds = float(window.const)" in source


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        # names
        ("availble < 5000", 0, "unknown name 'availble'; expected a metric (total, available"),
        ("availble < 5000", 0, "age or failures; did you mean 'available'?"),
        ("total > 0 and Available < 1", 14, "names are lowercase: did you mean 'available'?"),
        (
            "total > 0 AND total < 1",
            10,
            "unexpected 'AND'; names are lowercase: did you mean 'and'",
        ),
        ("NOT total < 1", 0, "unknown name 'NOT'"),
        ("delta > 3", 0, "delta() is a function; call it like delta(total, 15m)"),
        # calls and arity
        ("delta(total) > 0", 0, "delta() takes 2 arguments (metric, window), got 1"),
        ("pct_change() > 0", 0, "pct_change() takes 2 arguments (metric, window), got 0"),
        ("max_over(total, 1h, 2h) > 0", 0, "max_over() takes 2 arguments"),
        ("usd(total, 1) > 0", 0, "usd() takes 1 argument (metric), got 2"),
        ("total > 1 and dleta(total, 1m) < 0", 14, "unknown function 'dleta'"),
        ("total > 1 and dleta(total, 1m) < 0", 14, "did you mean 'delta'?"),
        ("total(3) > 1", 0, "'total' is a value, not a function"),
        ("age(1) > 1m", 0, "'age' is a value, not a function"),
        ("delta(total 15m) > 0", 12, "expected ',' or ')' in the arguments of delta()"),
        ("delta(total, 15m", 16, "expected ',' or ')' in the arguments of delta(), got the end"),
        ("usd(total)(1) > 0", 10, "unexpected '('"),
        # windows
        ("delta(total, 15) > 0", 13, "window must be a duration like 15m"),
        ("delta(total, total) > 0", 13, "window must be a duration like 15m"),
        ("delta(total, 10m + 5m) > 0", 13, "window must be a duration like 15m"),
        ("delta(total, 0m) > 0", 13, "window must be longer than zero"),
        ("delta(total, -5m) > 0", 13, "window must be longer than zero"),
        ("delta(total, 31d) > 0", 13, "window must be at most 30d"),
        ("delta(total, " + "9" * 400 + "d) > 0", 13, "window must be at most 30d"),
        ("delta(1, 15m) > 0", 6, "first argument of delta() must be a metric name"),
        ("delta(total + 1, 15m) > 0", 6, "first argument of delta() must be a metric name"),
        ("delta(usd(total), 15m) > 0", 6, "first argument of delta() must be a metric name"),
        ("delta(age, 15m) > 0", 6, "delta() needs a balance metric like total; age is"),
        ("usd(failures) > 0", 4, "usd() needs a balance metric"),
        ("usd(rate_usd) > 0", 4, "rate_usd is already the USD price"),
        # types
        ("age > 300", 6, "cannot compare a duration with an amount; compare age with a dur"),
        ("300 < age", 0, "compare age with a duration like 5m"),
        ("total > 5m", 0, "cannot compare a duration with an amount; both sides must be"),
        ("(age) > (300)", 8, "compare age with a duration like 5m"),
        ("delta(total, 1h) > 1h", 0, "cannot compare a duration with an amount"),
        ("age + 5 > 1m", 4, "cannot add a duration and an amount"),
        ("age - total > 1m", 4, "cannot subtract a duration and an amount"),
        ("age * 1m > 1m", 4, "cannot multiply a duration by a duration"),
        ("total / 1m > 1", 6, "cannot divide an amount by a duration"),
        ("total", 0, "must be a condition that is true or false, like 'available < 5000'"),
        ("total + 1", 0, "this one is an amount"),
        ("age", 0, "this one is a duration"),
        ("total and available > 1", 0, "'and' combines conditions, but its left side is an"),
        ("total > 1 or available", 13, "its right side is an amount"),
        ("not total", 4, "'not' needs a condition, got an amount"),
        ("-(total > 1)", 0, "cannot negate a condition with '-'; use 'not'"),
        ("(total > 1) + 1 > 0", 12, "cannot use '+' on a condition"),
        ("(total > 1) == (available > 1)", 12, "cannot compare conditions with '=='"),
        ("total > 1 < 2", 10, "comparisons cannot be chained; write 'a < b and b < c'"),
        ("1 < total + 1 < 2", 14, "comparisons cannot be chained"),
        ("total / 0 > 1", 8, "division by zero"),
        ("total / (1 - 1) > 1", 8, "division by zero"),
        ("1 < 2", 0, "uses no metric, age or failures"),
        # syntax
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("total >", 7, "unexpected end of the expression; expected a metric, number"),
        ("total > > 1", 8, "unexpected '>'; expected a metric, number, duration or '('"),
        ("and total > 1", 0, "unexpected 'and'"),
        ("(total > 1", 10, "expected ')' to close the '(' opened before 'total > 1', got the end"),
        (
            "(total > 1) and (available < 5000 or age > 5m",
            45,
            "to close the '(' opened before 'available < 5000 or...', got the end",
        ),
        (
            "((total) > 1 and age > 5m",
            25,
            "to close the '(' opened before '(total) > 1 and age...'",
        ),
        ("(total\n  > 1 5", 13, "to close the '(' opened before 'total > 1', got '5'"),
        ("total > 1)", 9, "unexpected ')'; expected an operator"),
        ("total 5000", 6, "unexpected '5000'; expected an operator"),
        ("age > 5 m", 8, "write durations without a space, like 5m"),
        ("total > 1,", 9, "unexpected ','"),
        # lexical
        ("total > 1e6", 8, "invalid number '1e6'; write numbers like 5000 or 0.25"),
        ("total > 1_000", 8, "invalid number '1_000'"),
        ("total > 1.2.3", 8, "invalid number '1.2.3'"),
        ("total > 1.", 8, "invalid number '1.'"),
        ("total > .5", 8, "unexpected character '.'; write numbers with a leading digit"),
        ("age > 15min", 6, "invalid duration '15min'; write durations like 500ms, 30s, 5m"),
        ("age > 5M", 6, "invalid number '5M'"),
        ("age > 1m30s", 6, "invalid duration '1m30s'"),
        ("total = 1", 6, "unexpected character '='; use '==' to compare"),
        ("!(total > 1)", 0, "unexpected character '!'; use 'not'"),
        ("total > 1 && total < 2", 10, "unexpected character '&'; use 'and'"),
        ("total > 1 || total < 2", 10, "unexpected character '|'; use 'or'"),
        ("total % 2 == 0", 6, "unexpected character '%'"),
        ("total > 1 # comment", 10, "unexpected character '#'"),
        ("total > \u0661", 8, "unexpected character '\u0661'"),  # Arabic-Indic digit one
        ("total > 1\x00", 9, "unexpected character '\\x00'"),
    ],
)
def test_errors_name_the_problem_and_its_offset(source: str, offset: int, message: str) -> None:
    error = err(source)
    assert message in error.message, error.message
    assert error.offset == offset, (error.offset, error.message)
    assert str(error) == error.message


def test_too_long_and_too_deep() -> None:
    assert "too long" in err("total > " + "9" * MAX_LENGTH).message
    deep_parens = "(" * 200 + "total > 1" + ")" * 200
    assert "nested too deeply" in err(deep_parens).message
    assert "nested too deeply" in err("not " * 200 + "total > 1").message
    assert "nested too deeply" in err("-" * 1000 + "total > 1").message
    assert "nested too deeply" in err("usd(" * 200 + "total" + ")" * 200 + " > 1").message
    long_sum = " + ".join(["total"] * (MAX_DEPTH + 5)) + " > 1"  # left-deep, no recursion
    assert "nested too deeply" in err(long_sum).message
    ok_sum = " + ".join(["total"] * 40) + " > 39"
    assert ev(ok_sum, row(total="1")) is True


def test_error_position_helpers() -> None:
    source = "total > 1 and\n  availble < 5"
    error = err(source)
    assert error.offset == 16
    assert error.line_col(source) == (2, 3)
    assert error.pointer(source) == "  availble < 5\n  ^"


# --------------------------------------------------------------------------- security

ATTACKS = [
    # attribute access
    "total.__class__ > 0",
    "total.real > 0",
    "(total).__class__.__bases__ > 0",
    "total > 0 and ().__class__",
    # dunder names and builtins
    "__import__('os').system('id') > 0",
    "__builtins__ > 0",
    "_ > 0",
    "eval('1') > 0",
    "exec('import os') > 0",
    "open('/etc/passwd') > 0",
    "getattr(total, 'real') > 0",
    "globals() > 0",
    "compile('1', 'x', 'eval') > 0",
    "breakpoint() > 0",
    # lambdas, comprehensions, generators, walrus, conditionals
    "(lambda: 1)() > 0",
    "lambda x: x",
    "[x for x in (1, 2)] > 0",
    "{x: 1 for x in total} > 0",
    "sum(x for x in total) > 0",
    "(total := 1) > 0",
    "total if total else 1 > 0",
    "total > 0 if True else False",
    "import os",
    "True",
    "None == total",
    # strings, indexing, containers, f-strings, escapes
    "'a' > 0",
    '"a" > 0',
    "f'{total}' > 0",
    "total[0] > 0",
    "total > {1}",
    "total > [1]",
    "total > \\x41",
    "total > `1`",
    # huge numbers and exponents
    "2 ** 99999999 > total",
    "9 ** 9 ** 9 > total",
    "total ** 2 > 0",
    "total > 1e999999999",
    "total > 1E10",
    "total // 1 > 0",
    "total * 10 ** 1000000 > 0",
    "total > 0x10",
    "total > 1j",
    # statements
    "total > 0; import os",
    "total > 0\nimport os",
    "del total",
    "total += 1",
]


@pytest.mark.parametrize("source", ATTACKS)
def test_attacks_are_rejected_at_load_time(source: str) -> None:
    error = err(source)
    assert 0 <= error.offset <= len(source)


def test_evaluation_reads_only_the_context_protocol() -> None:
    ctx = Ctx(
        {m: D(1) for m in METRICS},
        windows={(f, "total", 60.0): D(1) for f in WINDOW_FUNCS},
        age_s=D(1),
        fails=1,
    )
    e = parse_expression(
        "total + usd(available) - delta(total, 1m) * pct_change(total, 1m) /"
        " max_over(total, 1m) > min_over(total, 1m) and age < 1h and failures < 9"
    )
    assert e.evaluate(ctx) is not None
    allowed_metrics = set(METRICS)
    for read in ctx.reads:
        assert read[0] in {"metric", "window_value", "age", "failures"}
        if read[0] == "metric":
            assert read[1] in allowed_metrics


def test_module_never_uses_dynamic_code_execution() -> None:
    tree = ast.parse(inspect.getsource(expr_module))
    forbidden = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "globals", "vars"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in forbidden, node.func.id
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = {alias.name for alias in node.names} | {getattr(node, "module", None)}
            assert not names & {"ast", "builtins", "importlib", "pickle", "marshal"}


# --------------------------------------------------------------------------- properties

TOKENS = [
    *METRICS,
    "age",
    "failures",
    "usd",
    "delta",
    "pct_change",
    "max_over",
    "min_over",
    "and",
    "or",
    "not",
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "!=",
    "0",
    "1",
    "0.5",
    "5000",
    "15m",
    "500ms",
    "1h",
    "30d",
    "9" * 40 + "d",
    "9" * 40,
    "0.000000000000000000000000000000000000001",
    "**",
    ".",
    "_",
    "x",
    "lambda",
    "'",
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join)
values = (
    st.none()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.sampled_from([D(0), D("-0"), D("1e-999999"), D("9e999999"), D("-9e999999")])
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80) | token_soup)
def test_any_text_parses_or_raises_expr_error(source: str) -> None:
    try:
        parse_expression(source)
    except ExprError as error:
        assert 0 <= error.offset <= len(source)
        assert error.message


def _parses(source: str) -> Expression | None:
    try:
        return parse_expression(source)
    except ExprError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.one_of(
        token_soup,
        st.sampled_from(
            [
                "total / available > hold - locked * 2",
                "pct_change(total, 15m) <= -20 or usd(total) / hold > 1",
                "-(total - available) * 1000000 >= max_over(total, 1h) / min_over(hold, 1m)",
                "not (age > 5m and failures > 3) and available != 0",
            ]
        ),
    )
    .map(_parses)
    .filter(lambda e: e is not None),
    st.dictionaries(st.sampled_from(METRICS), values),
    values,
    values,
    st.integers(min_value=0, max_value=10**6),
)
def test_evaluation_never_raises(
    e: Expression | None,
    metrics: dict[str, Decimal | None],
    window: Decimal | None,
    age: Decimal | None,
    fails: int,
) -> None:
    assert e is not None
    windows: dict[tuple[str, str, float], Decimal | None] = {
        (f, m, w): window for f in WINDOW_FUNCS for m in METRICS for w in (900.0, 60.0)
    }
    windows.update({(f, "total", 3600.0): window for f in WINDOW_FUNCS})
    ctx = Ctx(dict(metrics), windows, age, fails)
    assert e.evaluate(ctx) in (True, False, None)
    assert all(isinstance(v, Decimal) for v in e.values(ctx).values())


finite = st.decimals(allow_nan=False, allow_infinity=False, places=8, max_value=10**20)


@given(finite, finite)
def test_comparisons_and_sums_match_decimal(a: Decimal, b: Decimal) -> None:
    ctx = Ctx({"available": a, "total": b})
    assert ev("available < total", ctx) is (a < b)
    assert ev("available == total", ctx) is (a == b)
    with decimal.localcontext() as local:
        local.prec = 34
        expected = a + b
    literal = ("-" if expected < 0 else "") + format(expected.copy_abs(), "f")
    assert ev(f"available + total == {literal}", ctx) is True


# --------------------------------------------------------------------------- aggregates


@dataclass
class GroupCtx(Ctx):
    """A group as the engine presents it: aggregates by canonical text, and their windows."""

    aggregates: dict[str, Decimal | None] = field(default_factory=dict)
    group_windows: dict[tuple[str, str, float], Decimal | None] = field(default_factory=dict)

    def aggregate(self, text: str) -> Decimal | None:
        self.reads.append(("aggregate", text))
        return self.aggregates.get(text)

    def aggregate_window(self, func: str, text: str, window: float) -> Decimal | None:
        self.reads.append(("aggregate_window", func, text, str(window)))
        return self.group_windows.get((func, text, window))


def test_aggregates_are_named_one_way_whatever_the_spacing() -> None:
    expr = parse_expression(
        "pct_change( sum( usd(total) ),1h ) <= -10 and min(available-pending_withdrawal) < 0 "
        "and count( ) > 2 and avg(-available * -2) > 0 and max(available - -1) > 0"
    )
    assert [a.text for a in expr.aggregates] == [
        "sum(usd(total))",
        "min(available - pending_withdrawal)",
        "count()",
        "avg(-available * -2)",
        "max(available - -1)",
    ]
    assert [a.func for a in expr.aggregates] == ["sum", "min", "count", "avg", "max"]
    assert expr.group_windows == {"sum(usd(total))"}
    assert expr.windows == 3600
    assert (expr.row_read, expr.aggregate_offset, expr.account_scope) == (None, 12, False)
    # rows are read inside aggregates: the loader's warnings about metrics still see them
    assert expr.metrics == {"total", "rate_usd", "available", "pending_withdrawal"}


def test_aggregates_and_their_windows_read_the_group() -> None:
    ctx = GroupCtx(
        aggregates={"sum(available)": D(40000), "count()": D(3)},
        group_windows={("pct_change", "sum(available)", 3600.0): D(-12)},
    )
    source = "sum(available) < 50000 and count() >= 3 and pct_change(sum(available), 1h) < -10"
    expr = parse_expression(source)
    assert expr.evaluate(ctx) is True
    assert expr.values(ctx) == {
        "sum(available)": D(40000),
        "count()": D(3),
        "pct_change(sum(available), 1h)": D(-12),
    }
    ctx.aggregates["sum(available)"] = None  # no data for the group
    assert expr.evaluate(ctx) is None


def test_an_aggregate_argument_is_a_row_expression_evaluated_per_row() -> None:
    [agg] = parse_expression("sum(available - pending_withdrawal) > 0").aggregates
    assert agg.arg is not None
    assert agg.arg(row(available="10", pending_withdrawal="2.5")) == D("7.5")
    assert agg.arg(row(available="10", pending_withdrawal=None)) is None
    [timed] = parse_expression("sum(delta(total, 15m)) < 0").aggregates
    assert timed.row_windows


@pytest.mark.parametrize(
    ("source", "offset", "fragment"),
    [
        ("sum(max(total)) > 0", 4, "aggregates cannot be nested: max() inside sum()"),
        ("sum(failures) > 0", 4, "failures belongs to an account"),
        ("count(total) > 0", 6, "count() takes no arguments"),
        ("sum() > 0", 0, "sum() takes 1 argument"),
        ("sum(total, 1h) > 0", 9, "sum() takes 1 argument"),
        ("sum(total > 1) > 0", 4, "needs an amount read from each row"),
        ("avg(5m) > 0", 4, "this is a duration"),
        ("min(2) > 0", 4, "not a constant"),
        ("usd(sum(total)) > 0", 4, "to add up USD values write sum(usd(total))"),
        ("delta(sum(total) + 1, 1h) > 0", 6, "or an aggregate like sum(total)"),
        ("total(x) > 0", 0, "is a value, not a function"),
        ("mean(total) > 0", 0, "or an aggregate (sum, min, max, avg, count)"),
    ],
)
def test_aggregate_errors(source: str, offset: int, fragment: str) -> None:
    error = err(source)
    assert error.offset == offset
    assert fragment in error.message


def test_where_rows_and_aggregates_are_read_for_the_rules_checks() -> None:
    assert parse_expression("sum(total) > 0.5 * total").row_read == (19, "total")
    assert parse_expression("age > 5m or count() > 1").row_read == (0, "age")
    assert parse_expression("usd(total) > 1 or count() > 1").row_read == (4, "total")
    assert parse_expression("available < 5").aggregate_offset is None
    assert parse_expression("count() > 1").metrics == frozenset()
