"""Rule expressions (``when``/``clear``): tokenizer, parser, type checker, closure compiler.

A rule file is user input, so the language is parsed by hand here and never handed to
Python's ``eval``/``compile``/``ast``: the only things an expression can do are the ones
this module builds closures for (read a metric, read a history window, read ``age`` and
``failures``, Decimal arithmetic and comparisons). There is no attribute access, no
indexing, no strings, no calls other than the five functions below, and no ``**``.

Grammar, lowest precedence first (implemented as precedence climbing over a table)::

    or_expr  := and_expr ('or' and_expr)*
    and_expr := not_expr ('and' not_expr)*
    not_expr := 'not' not_expr | compare
    compare  := sum [CMP sum]          CMP: < <= > >= == !=  ("a < b < c" is an error)
    sum      := product (('+' | '-') product)*       all binary operators left-associative
    product  := unary (('*' | '/') unary)*
    unary    := '-' unary | primary
    primary  := NUMBER | DURATION | NAME | FUNC '(' or_expr (',' or_expr)* ')'
              | '(' or_expr ')'

``NUMBER`` is plain decimal (``5000``, ``0.25``; no exponent, so no huge literals by
accident). ``DURATION`` is a number with a unit (``500ms``, ``30s``, ``15m``, ``2h``,
``1d``). Names are the metrics of :data:`balwatch.model.METRICS` plus the account-scope
``age`` (seconds since the last good poll) and ``failures`` (consecutive failed polls).
Functions: ``usd(m)`` = ``m * rate_usd``; ``delta``, ``pct_change``, ``max_over``,
``min_over`` take ``(metric, window)`` where the metric is a bare metric name and the window
a duration literal, ``0 < window <= 30d`` (semantics in :mod:`balwatch.rules.history`).

Aggregates, for rules with ``group_by`` (:mod:`balwatch.rules.groups`): ``sum(x)``,
``min(x)``, ``max(x)``, ``avg(x)`` over an amount ``x`` read from each row of the group (any
row expression: ``usd(total)``, ``available - pending_withdrawal``), and ``count()``. The
window functions also take an aggregate instead of a metric (``pct_change(sum(total), 1h)``):
a history kept per group. Aggregates do not nest, and ``age``/``failures`` (account values,
not row values) cannot be aggregated. Which expressions may use aggregates (only grouped
rules), and that a grouped rule reads rows only through them, is the rule's check
(:class:`~balwatch.rules.rule.Rule`): this module records where each kind of read is
(:attr:`Expression.row_read`, :attr:`Expression.aggregate_offset`) so the error can point at it.

Types are checked when the rule is loaded, so a typo fails ``balwatch check`` rather than
paging at 3 a.m.:

* amount: metrics, numbers, ``failures``, ``usd()`` and the history functions;
* duration: duration literals and ``age``;
* condition: comparisons and ``and``/``or``/``not``. The whole expression must be one.

Durations support only what reads naturally: ``d + d``, ``d - d``, ``-d``, ``d * n``,
``n * d``, ``d / n`` give durations, ``d / d`` gives a plain ratio. A duration compares only
with a duration: ``age > 300`` is an error that says to write ``age > 5m``.

An expression that reads nothing (``1 < 2``) is rejected: it could never change. Sources
longer than :data:`MAX_LENGTH` or nested deeper than :data:`MAX_DEPTH` are rejected too,
which bounds parse time and the recursion of the compiled closures.

Evaluation is exact Decimal under a private context (34 digits, half-even), independent of
the thread's decimal context; amounts never pass through float (only window lengths are
handed to the history as float seconds). The result is ``True``, ``False`` or
``None`` = no data: any value the expression reads is missing (metric ``None``, history
window not yet full, ``age`` unknown), a division by zero, or an arithmetic overflow /
invalid operation. No data is strict on purpose, also under ``and``/``or``: a rule never
fires or resolves on a partial view of its inputs (docs/rules.md, "No data": a metric
that is None makes the rule no data for that row).
"""

from __future__ import annotations

import decimal
import difflib
import keyword
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import Enum
from typing import Final, Literal, Protocol, cast

from balwatch.durations import format_duration
from balwatch.model import METRICS, Metric

WindowFunc = Literal["delta", "pct_change", "max_over", "min_over"]
WINDOW_FUNCS: Final[tuple[WindowFunc, ...]] = ("delta", "pct_change", "max_over", "min_over")
AggregateFunc = Literal["sum", "min", "max", "avg", "count"]
AGGREGATE_FUNCS: Final[tuple[AggregateFunc, ...]] = ("sum", "min", "max", "avg", "count")

# Longer sources and deeper nesting are rejected so parsing and evaluation stay bounded
# (the parser and the compiled closures recurse; Python's recursion limit is ~1000).
MAX_LENGTH: Final = 2000
MAX_DEPTH: Final = 64
# History lives in memory; a month of samples per series is already generous.
MAX_WINDOW: Final = Decimal(30 * 86400)

# Arithmetic goes through this context's methods, never the Decimal operators, so the
# result does not depend on whatever decimal context the calling thread has set.
DECIMAL_CONTEXT: Final = decimal.Context(
    prec=34,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
_CTX: Final = DECIMAL_CONTEXT


class EvalContext(Protocol):
    """What an expression may read while evaluated; the engine implements it per row."""

    def metric(self, name: Metric) -> Decimal | None:
        """Current value of a metric of this row; ``None`` when the source lacks it."""
        ...

    def window_value(self, func: WindowFunc, metric: Metric, window: float) -> Decimal | None:
        """``func`` over the last ``window`` seconds of ``metric`` (see rules.history)."""
        ...

    def age(self) -> Decimal | None:
        """Seconds since the account's last good poll; ``None`` before the first one."""
        ...

    def failures(self) -> int:
        """Consecutive failed polls of the account."""
        ...

    def aggregate(self, text: str) -> Decimal | None:
        """The value of the aggregate spelt ``text`` (``sum(available)``) over the group."""
        ...

    def aggregate_window(self, func: WindowFunc, text: str, window: float) -> Decimal | None:
        """``func`` over the last ``window`` seconds of the group's aggregate ``text``."""
        ...


class RowContextBase:
    """Base of the contexts of one row or one account: they have no group, and rules whose
    expressions read aggregates are grouped rules, evaluated in a group's context instead."""

    __slots__ = ()

    def aggregate(self, text: str) -> Decimal | None:
        return None

    def aggregate_window(self, func: WindowFunc, text: str, window: float) -> Decimal | None:
        return None


class ExprError(Exception):
    """An expression that cannot be loaded. ``offset`` is the 0-based index in the source."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def line_col(self, source: str) -> tuple[int, int]:
        """1-based (line, column) of ``offset`` inside a possibly multi-line ``source``."""
        before = source[: self.offset]
        line = before.count("\n") + 1
        return line, self.offset - (before.rfind("\n") + 1) + 1

    def pointer(self, source: str) -> str:
        """The offending line of ``source`` with a caret under the error position."""
        start = source.rfind("\n", 0, self.offset) + 1
        end = source.find("\n", self.offset)
        line = source[start : len(source) if end < 0 else end]
        return f"{line}\n{' ' * (self.offset - start)}^"


# --------------------------------------------------------------------------- tokenizer

_UNITS: Final = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
# ``tail`` swallows whatever sticks to a number so "1e6", "15min", "1_000" and "1.2.3" are
# reported as one bad literal instead of a confusing number-then-name error.
_TOKEN_RE: Final = re.compile(
    r"(?P<ws>[ \t\r\n]+)"
    r"|(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d)?(?P<tail>[A-Za-z0-9_.]*)"
    r"|(?P<name>[A-Za-z][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/<>(),])"
)
_KEYWORDS: Final = frozenset({"and", "or", "not"})
_CHAR_HINTS: Final = {
    ".": "attribute access is not supported",
    "[": "indexing and lists are not supported",
    "]": "indexing and lists are not supported",
    "{": "braces are not supported",
    "}": "braces are not supported",
    "'": "strings are not supported",
    '"': "strings are not supported",
    "_": "names start with a letter",
    "=": "use '==' to compare",
    "!": "use 'not' to negate a condition",
    "&": "use 'and'",
    "|": "use 'or'",
    "~": "use 'not'",
    "%": "only + - * / are supported",
    "^": "only + - * / are supported",
    "@": "only + - * / are supported",
    ":": "lambdas and slices are not supported",
}


class _Kind(Enum):
    NUMBER = "number"
    DURATION = "duration"
    NAME = "name"
    KEYWORD = "keyword"
    OP = "operator"
    END = "end"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    offset: int
    value: Decimal | None = None  # numbers: the amount; durations: seconds

    def describe(self) -> str:
        return "the end of the expression" if self.kind is _Kind.END else f"'{self.text}'"


def _tokenize(source: str) -> Iterator[_Token]:
    """Tokens on demand, so the parser reports the leftmost problem first."""
    pos = 0
    prev: _Token | None = None
    while pos < len(source):
        match = _TOKEN_RE.match(source, pos)
        if match is None:
            char = source[pos]
            hint = _CHAR_HINTS.get(char)
            if char == "." and source[pos + 1 : pos + 2].isdigit():
                hint = "write numbers with a leading digit, like 0.5"
            raise ExprError(f"unexpected character {char!r}" + (f"; {hint}" if hint else ""), pos)
        text = match.group(0)
        tok: _Token | None = None
        if match.group("num") is not None:
            tok = _literal(match, pos)
        elif match.group("name") is not None:
            if text in _UNITS and prev is not None and prev.kind is _Kind.NUMBER:
                raise ExprError(f"write durations without a space, like {prev.text}{text}", pos)
            tok = _Token(_Kind.KEYWORD if text in _KEYWORDS else _Kind.NAME, text, pos)
        elif match.group("op") is not None:
            tok = _Token(_Kind.OP, text, pos)
        if tok is not None:
            yield tok
            prev = tok
        pos = match.end()
    yield _Token(_Kind.END, "", len(source))


def _literal(match: re.Match[str], pos: int) -> _Token:
    text, digits, unit = match.group(0), match.group("num"), match.group("unit")
    if match.group("tail"):
        if unit:
            raise ExprError(
                f"invalid duration '{text}'; write durations like 500ms, 30s, 5m, 2h or 1d", pos
            )
        raise ExprError(
            f"invalid number '{text}'; write numbers like 5000 or 0.25 (no exponent or "
            "separators) and durations like 500ms, 30s, 5m, 2h or 1d",
            pos,
        )
    if unit:
        seconds = _CTX.multiply(Decimal(digits), _UNITS[unit])
        return _Token(_Kind.DURATION, text, pos, seconds)
    return _Token(_Kind.NUMBER, text, pos, Decimal(digits))


# --------------------------------------------------------------------------- typed nodes


class _Type(Enum):
    AMOUNT = "an amount"
    DURATION = "a duration"
    CONDITION = "a condition"


NumFn = Callable[[EvalContext], Decimal | None]
CondFn = Callable[[EvalContext], bool | None]


@dataclass(frozen=True, slots=True)
class _Node:
    """A type-checked, already-compiled subexpression."""

    type: _Type
    offset: int
    depth: int
    num: NumFn | None = None  # amounts and durations
    cond: CondFn | None = None  # conditions
    const: Decimal | None = None  # set when the value is known at load time
    literal: bool = False  # exactly one literal token (windows must be)
    name: str | None = None  # a bare metric, age or failures
    aggregate: str | None = None  # exactly one aggregate call: its canonical text


def _num(node: _Node) -> NumFn:
    assert node.num is not None
    return node.num


def _cond(node: _Node) -> CondFn:
    assert node.cond is not None
    return node.cond


def _const_fn(value: Decimal) -> NumFn:
    return lambda ctx: value


def _metric_fn(name: Metric) -> NumFn:
    return lambda ctx: ctx.metric(name)


def _age(ctx: EvalContext) -> Decimal | None:
    return ctx.age()


def _failures(ctx: EvalContext) -> Decimal | None:
    return Decimal(ctx.failures())


def _usd_fn(name: Metric) -> NumFn:
    def usd(ctx: EvalContext) -> Decimal | None:
        value = ctx.metric(name)
        if value is None:
            return None
        rate = ctx.metric("rate_usd")
        if rate is None:
            return None
        return _CTX.multiply(value, rate)

    return usd


def _window_fn(func: WindowFunc, name: Metric, window: float) -> NumFn:
    return lambda ctx: ctx.window_value(func, name, window)


def _aggregate_fn(text: str) -> NumFn:
    return lambda ctx: ctx.aggregate(text)


def _aggregate_window_fn(func: WindowFunc, text: str, window: float) -> NumFn:
    return lambda ctx: ctx.aggregate_window(func, text, window)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate of an expression: ``func`` over ``arg`` evaluated on each row of a group.

    ``text`` is the canonical spelling (``sum(available - pending_withdrawal)``): the key of
    its value in alerts and of its history. ``arg`` is None for ``count()``.
    ``row_windows``: ``arg`` reads a window function, so a row's contribution changes with
    time, not only when the row does.
    """

    func: AggregateFunc
    text: str
    arg: NumFn | None
    row_windows: bool


_ARITH: Final[dict[str, Callable[[Decimal, Decimal], Decimal]]] = {
    "+": _CTX.add,
    "-": _CTX.subtract,
    "*": _CTX.multiply,
    "/": _CTX.divide,
}
_COMPARE: Final[dict[str, Callable[[Decimal, Decimal], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_CMP_PREC: Final = 4
_NOT_PREC: Final = 3
_UNARY_PREC: Final = 7
_BINARY: Final[dict[str, int]] = {
    "or": 1,
    "and": 2,
    **dict.fromkeys(_COMPARE, _CMP_PREC),
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
}
_OP_VERBS: Final = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_ACCOUNT_NAMES: Final = ("age", "failures")
_NAMES_HINT: Final = f"expected a metric ({', '.join(METRICS)}), age or failures"
_FUNCS_HINT: Final = (
    "expected usd, delta, pct_change, max_over, min_over, or an aggregate "
    "(sum, min, max, avg, count)"
)


def _arith_fn(text: str, left: _Node, right: _Node) -> NumFn:
    op = _ARITH[text]
    lf, rf = _num(left), _num(right)
    divide = text == "/"
    if right.const is not None:
        c = right.const  # a constant zero divisor was rejected at load time

        def arith_const(ctx: EvalContext) -> Decimal | None:
            a = lf(ctx)
            return None if a is None else op(a, c)

        return arith_const
    if divide:

        def div(ctx: EvalContext) -> Decimal | None:
            a = lf(ctx)
            if a is None:
                return None
            b = rf(ctx)
            if not b:  # None, or zero: no data rather than an exception
                return None
            return op(a, b)

        return div

    def arith(ctx: EvalContext) -> Decimal | None:
        a = lf(ctx)
        if a is None:
            return None
        b = rf(ctx)
        if b is None:
            return None
        return op(a, b)

    return arith


def _compare_fn(text: str, left: _Node, right: _Node) -> CondFn:
    op = _COMPARE[text]
    lf, rf = _num(left), _num(right)
    if right.const is not None:
        c = right.const
        if left.name in METRICS:  # the common "available < 5000": one call fewer
            name = left.name

            def metric_vs_const(ctx: EvalContext) -> bool | None:
                a = ctx.metric(name)
                return None if a is None else op(a, c)

            return metric_vs_const

        def vs_const(ctx: EvalContext) -> bool | None:
            a = lf(ctx)
            return None if a is None else op(a, c)

        return vs_const
    if left.const is not None:
        k = left.const

        def const_vs(ctx: EvalContext) -> bool | None:
            b = rf(ctx)
            return None if b is None else op(k, b)

        return const_vs

    def compare(ctx: EvalContext) -> bool | None:
        a = lf(ctx)
        if a is None:
            return None
        b = rf(ctx)
        if b is None:
            return None
        return op(a, b)

    return compare


def _logic_fn(text: str, left: _Node, right: _Node) -> CondFn:
    lf, rf = _cond(left), _cond(right)
    # Both sides are always evaluated: a missing input on either side is no data (strict).
    if text == "and":

        def and_(ctx: EvalContext) -> bool | None:
            a = lf(ctx)
            if a is None:
                return None
            b = rf(ctx)
            if b is None:
                return None
            return a and b

        return and_

    def or_(ctx: EvalContext) -> bool | None:
        a = lf(ctx)
        if a is None:
            return None
        b = rf(ctx)
        if b is None:
            return None
        return a or b

    return or_


def _not_fn(operand: _Node) -> CondFn:
    f = _cond(operand)

    def not_(ctx: EvalContext) -> bool | None:
        a = f(ctx)
        return None if a is None else not a

    return not_


def _neg_fn(operand: _Node) -> NumFn:
    f = _num(operand)

    def neg(ctx: EvalContext) -> Decimal | None:
        a = f(ctx)
        return None if a is None else _CTX.minus(a)

    return neg


def _fragment(text: str, limit: int = 20) -> str:
    """``text`` quoted on one line, cut at a word boundary after ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = (text[:limit].rsplit(" ", 1)[0] or text[:limit]) + "..."
    return repr(text)


def _canonical(source: str) -> str:
    """One spelling of a (checked) fragment whatever its spacing: ``sum( a-b )`` reads
    ``sum(a - b)``. Names the aggregate in alert values and keys its history, so an edit that
    only changes spaces keeps both."""
    out: list[str] = []
    prev: _Token | None = None
    for tok in _tokenize(source):
        if tok.kind is _Kind.END:
            break
        text = tok.text
        if prev is None or (prev.kind is _Kind.OP and prev.text == "("):
            space = ""
        elif tok.kind is _Kind.OP and tok.text in "(),":
            space = " " if tok.text == "(" and prev.kind is _Kind.OP and prev.text != ")" else ""
        elif prev.kind is _Kind.OP and prev.text == "-" and _unary(out):
            space = ""
        else:
            space = " "
        out.append(space + text)
        prev = tok
    return "".join(out)


def _unary(out: list[str]) -> bool:
    """Whether the '-' just written (last in ``out``) is a sign rather than a subtraction."""
    if len(out) < 2:
        return True
    before = out[-2].strip()
    return before in _KEYWORDS or before in ("(", ",", *_COMPARE, *_ARITH)


def _suggest(word: str, candidates: tuple[str, ...]) -> str:
    if word.lower() in candidates:
        return f"; names are lowercase: did you mean '{word.lower()}'?"
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------- parser


class _Parser:
    """Precedence climbing over ``_BINARY``; builds closures while it type-checks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lexer = _tokenize(source)
        self.tokens: list[_Token] = [next(self.lexer)]
        self.pos = 0
        self.nesting = 0
        self.metrics: set[str] = set()
        self.history_metrics: set[str] = set()
        self.account_names: set[str] = set()
        self.window = 0.0
        # Key -> getter for Expression.values, in order of first appearance.
        self.refs: dict[str, NumFn] = {}
        # Aggregates by canonical text; the one being parsed (they do not nest) and whether
        # its argument reads a window function.
        self.aggregates: dict[str, Aggregate] = {}
        self.inside: str | None = None
        self.inside_windows = False
        self.group_windows: set[str] = set()
        # Where a row or account value is read outside any aggregate, and the first aggregate.
        self.row_read: tuple[int, str] | None = None
        self.aggregate_offset: int | None = None

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        """Move past the current token (never past the end token)."""
        tok = self.tokens[self.pos]
        if tok.kind is not _Kind.END:
            self.tokens.append(next(self.lexer))
            self.pos += 1
        return tok

    def is_op(self, text: str) -> bool:
        tok = self.tokens[self.pos]
        return tok.kind is _Kind.OP and tok.text == text

    def node(
        self,
        type_: _Type,
        offset: int,
        *children: _Node,
        num: NumFn | None = None,
        cond: CondFn | None = None,
        const: Decimal | None = None,
        literal: bool = False,
        name: str | None = None,
        aggregate: str | None = None,
    ) -> _Node:
        depth = 1 + max((c.depth for c in children), default=0)
        if depth > MAX_DEPTH:
            raise ExprError(f"expression is nested too deeply (over {MAX_DEPTH} levels)", offset)
        return _Node(type_, offset, depth, num, cond, const, literal, name, aggregate)

    def read_row(self, offset: int, what: str) -> None:
        """Note a row or account value read outside an aggregate (grouped rules may not)."""
        if self.inside is None and self.row_read is None:
            self.row_read = (offset, what)

    # -- entry point

    def parse(self) -> _Node:
        if not self.source.strip():
            raise ExprError("empty expression; expected a condition like 'available < 5000'", 0)
        root = self.expr(0)
        tok = self.tok
        if tok.kind is not _Kind.END:
            raise ExprError(self.unexpected_after_value(tok), tok.offset)
        if root.type is not _Type.CONDITION:
            raise ExprError(
                "a rule expression must be a condition that is true or false, like "
                f"'available < 5000'; this one is {root.type.value}",
                0,
            )
        if not self.metrics and not self.account_names and not self.aggregates:
            raise ExprError("expression uses no metric, age or failures, so it never changes", 0)
        return root

    def unexpected_after_value(self, tok: _Token) -> str:
        if tok.kind is _Kind.OP and tok.text == "(":
            functions = _FUNCS_HINT.removeprefix("expected ")
            return f"unexpected '('; only functions are called: {functions}"
        if tok.kind is _Kind.NAME and tok.text.lower() in _KEYWORDS:
            return (
                f"unexpected '{tok.text}'; names are lowercase: did you mean '{tok.text.lower()}'?"
            )
        return (
            f"unexpected {tok.describe()}; expected an operator (+ - * / < <= > >= == !=), "
            "'and', 'or', ')' or the end of the expression"
        )

    # -- precedence climbing

    def expr(self, min_prec: int) -> _Node:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise ExprError(
                f"expression is nested too deeply (over {MAX_DEPTH} levels)", self.tok.offset
            )
        left = self.prefix()
        while True:
            tok = self.tok
            if tok.kind is _Kind.OP and tok.text in ("**", "//"):
                what = "'**' (power)" if tok.text == "**" else "'//' (floor division)"
                raise ExprError(f"{what} is not supported; only + - * / are", tok.offset)
            prec = _BINARY.get(tok.text) if tok.kind in (_Kind.OP, _Kind.KEYWORD) else None
            if prec is None or prec < min_prec:
                break
            self.advance()
            right = self.expr(prec + 1)  # + 1: every binary operator is left-associative
            left = self.binary(tok, left, right)
            if prec == _CMP_PREC and self.tok.kind is _Kind.OP and self.tok.text in _COMPARE:
                raise ExprError(
                    "comparisons cannot be chained; write 'a < b and b < c'", self.tok.offset
                )
        self.nesting -= 1
        return left

    def prefix(self) -> _Node:
        tok = self.tok
        if tok.kind is _Kind.KEYWORD and tok.text == "not":
            self.advance()
            operand = self.expr(_NOT_PREC)
            if operand.type is not _Type.CONDITION:
                raise ExprError(
                    f"'not' needs a condition, got {operand.type.value}", operand.offset
                )
            return self.node(_Type.CONDITION, tok.offset, operand, cond=_not_fn(operand))
        if tok.kind is _Kind.OP and tok.text == "-":
            self.advance()
            operand = self.expr(_UNARY_PREC)
            if operand.type is _Type.CONDITION:
                raise ExprError("cannot negate a condition with '-'; use 'not'", tok.offset)
            if operand.const is not None:
                value = _CTX.minus(operand.const)
                return self.node(
                    operand.type,
                    tok.offset,
                    num=_const_fn(value),
                    const=value,
                    literal=operand.literal,  # so "-5m" as a window says "longer than zero"
                )
            return self.node(operand.type, tok.offset, operand, num=_neg_fn(operand))
        return self.primary()

    def primary(self) -> _Node:
        tok = self.tok
        if tok.kind in (_Kind.NUMBER, _Kind.DURATION):
            self.advance()
            assert tok.value is not None
            type_ = _Type.AMOUNT if tok.kind is _Kind.NUMBER else _Type.DURATION
            return self.node(
                type_, tok.offset, num=_const_fn(tok.value), const=tok.value, literal=True
            )
        if tok.kind is _Kind.NAME:
            if keyword.iskeyword(tok.text) or keyword.issoftkeyword(tok.text):
                # Checked before looking further: "lambda: 1" is about lambda, not ':'.
                raise ExprError(
                    f"'{tok.text}' is a Python keyword, not part of the rule language; use "
                    "metrics, numbers, durations, + - * /, comparisons, and, or, not",
                    tok.offset,
                )
            self.advance()
            if self.is_op("("):
                return self.call(tok)
            return self.name(tok)
        if tok.kind is _Kind.OP and tok.text == "(":
            self.advance()
            inner = self.expr(0)
            if not self.is_op(")"):
                # Quoted, not counted: a column inside the expression reads as a file column.
                opened = _fragment(self.source[tok.offset + 1 : self.tok.offset])
                raise ExprError(
                    f"expected ')' to close the '(' opened before {opened}, "
                    f"got {self.tok.describe()}",
                    self.tok.offset,
                )
            self.advance()
            return replace(inner, offset=tok.offset)
        if tok.kind is _Kind.END:
            raise ExprError(
                "unexpected end of the expression; expected a metric, number, duration or '('",
                tok.offset,
            )
        raise ExprError(
            f"unexpected {tok.describe()}; expected a metric, number, duration or '('",
            tok.offset,
        )

    def name(self, tok: _Token) -> _Node:
        word = tok.text
        if word in METRICS:
            metric = word
            self.metrics.add(word)
            self.read_row(tok.offset, word)
            fn = _metric_fn(metric)
            self.refs.setdefault(word, fn)
            return self.node(_Type.AMOUNT, tok.offset, num=fn, name=word)
        if word in _ACCOUNT_NAMES and self.inside is not None:
            raise ExprError(
                f"{word} belongs to an account, not to a row, so {self.inside}() cannot take it; "
                "aggregates read row values like available or usd(total)",
                tok.offset,
            )
        if word == "age":
            self.account_names.add(word)
            self.read_row(tok.offset, word)
            self.refs.setdefault(word, _age)
            return self.node(_Type.DURATION, tok.offset, num=_age, name=word)
        if word == "failures":
            self.account_names.add(word)
            self.read_row(tok.offset, word)
            self.refs.setdefault(word, _failures)
            return self.node(_Type.AMOUNT, tok.offset, num=_failures, name=word)
        if word in _FUNC_ARGS:
            raise ExprError(
                f"{word}() is a function; call it like {_FUNC_EXAMPLES[word]}", tok.offset
            )
        candidates = (*METRICS, *_ACCOUNT_NAMES, *_KEYWORDS)
        raise ExprError(
            f"unknown name '{word}'; {_NAMES_HINT}{_suggest(word, candidates)}", tok.offset
        )

    def call(self, tok: _Token) -> _Node:
        func = tok.text
        if func not in _FUNC_ARGS:
            if func in METRICS or func in _ACCOUNT_NAMES:
                raise ExprError(f"'{func}' is a value, not a function; {_FUNCS_HINT}", tok.offset)
            raise ExprError(
                f"unknown function '{func}'; {_FUNCS_HINT}{_suggest(func, tuple(_FUNC_ARGS))}",
                tok.offset,
            )
        if func in AGGREGATE_FUNCS:
            return self.aggregate_call(tok, func)
        self.advance()  # '('
        args: list[_Node] = []
        if self.is_op(")"):
            self.advance()
        else:
            while True:
                args.append(self.expr(0))
                if self.is_op(","):
                    self.advance()
                    continue
                if self.is_op(")"):
                    self.advance()
                    break
                raise ExprError(
                    f"expected ',' or ')' in the arguments of {func}(), got {self.tok.describe()}",
                    self.tok.offset,
                )
        params = _FUNC_ARGS[func]
        if len(args) != len(params):
            plural = "argument" if len(params) == 1 else "arguments"
            raise ExprError(
                f"{func}() takes {len(params)} {plural} ({', '.join(params)}), got {len(args)}",
                tok.offset,
            )
        if func == "usd":
            metric = self.metric_arg(func, args[0])
            if metric == "rate_usd":
                raise ExprError(
                    "usd(rate_usd) is meaningless: rate_usd is already the USD price",
                    args[0].offset,
                )
            self.metrics.update((metric, "rate_usd"))
            fn = _usd_fn(metric)
            self.refs.setdefault(f"usd({metric})", fn)
            return self.node(_Type.AMOUNT, tok.offset, num=fn)
        window = args[1]
        if not window.literal or window.type is not _Type.DURATION or window.const is None:
            raise ExprError("window must be a duration like 15m", window.offset)
        if window.const <= 0:
            raise ExprError("window must be longer than zero, like 15m", window.offset)
        if window.const > MAX_WINDOW:
            raise ExprError("window must be at most 30d (history is kept in memory)", window.offset)
        seconds = float(window.const)
        wfunc = cast(WindowFunc, func)
        self.window = max(self.window, seconds)
        series = args[0].aggregate
        if series is not None:  # a group's history: pct_change(sum(total), 1h)
            self.group_windows.add(series)
            fn = _aggregate_window_fn(wfunc, series, seconds)
        else:
            metric = self.metric_arg(func, args[0])
            self.metrics.add(metric)
            self.history_metrics.add(metric)
            self.inside_windows = True
            series = metric
            fn = _window_fn(wfunc, metric, seconds)
        self.refs.setdefault(f"{func}({series}, {format_duration(seconds)})", fn)
        return self.node(_Type.AMOUNT, tok.offset, num=fn)

    def aggregate_call(self, tok: _Token, func: AggregateFunc) -> _Node:
        """``func(x)`` over the rows of a group; ``x`` is checked as a row expression."""
        if self.inside is not None:
            raise ExprError(
                f"aggregates cannot be nested: {func}() inside {self.inside}(); an aggregate "
                "takes a row expression like available or usd(total)",
                tok.offset,
            )
        self.advance()  # '('
        arg: _Node | None = None
        if func != "count":
            outer_refs, self.refs = self.refs, {}  # the aggregate stands for what it reads
            self.inside, self.inside_windows = func, False
            if self.is_op(")"):
                raise ExprError(
                    f"{func}() takes 1 argument (a row expression like available), got 0",
                    tok.offset,
                )
            arg = self.expr(0)
            self.inside, self.refs = None, outer_refs
        if not self.is_op(")"):
            if self.is_op(","):
                takes = "no arguments" if arg is None else "1 argument"
                raise ExprError(f"{func}() takes {takes}", self.tok.offset)
            if arg is None:
                raise ExprError(
                    "count() takes no arguments; it counts the rows of the group",
                    self.tok.offset,
                )
            raise ExprError(
                f"expected ')' to close {func}(, got {self.tok.describe()}", self.tok.offset
            )
        end = self.advance().offset + 1
        if arg is not None:
            if arg.type is not _Type.AMOUNT:
                raise ExprError(
                    f"{func}() needs an amount read from each row, like {func}(available); "
                    f"this is {arg.type.value}",
                    arg.offset,
                )
            if arg.const is not None:
                raise ExprError(
                    f"{func}() needs a value read from each row, like {func}(available), "
                    "not a constant",
                    arg.offset,
                )
        text = _canonical(self.source[tok.offset : end])
        if text not in self.aggregates:
            self.aggregates[text] = Aggregate(
                func, text, None if arg is None else _num(arg), self.inside_windows
            )
        if self.aggregate_offset is None:
            self.aggregate_offset = tok.offset
        fn = _aggregate_fn(text)
        self.refs.setdefault(text, fn)
        return self.node(
            _Type.AMOUNT, tok.offset, *(() if arg is None else (arg,)), num=fn, aggregate=text
        )

    def metric_arg(self, func: str, arg: _Node) -> Metric:
        if arg.name in METRICS:
            return arg.name
        if arg.name in _ACCOUNT_NAMES:
            raise ExprError(
                f"{func}() needs a balance metric like total; {arg.name} is account-scope",
                arg.offset,
            )
        if func == "usd":
            hint = (
                "; to add up USD values write sum(usd(total))" if arg.aggregate is not None else ""
            )
            raise ExprError(
                f"the first argument of usd() must be a metric name like total{hint}", arg.offset
            )
        raise ExprError(
            f"the first argument of {func}() must be a metric name like total or an aggregate "
            "like sum(total), not an expression",
            arg.offset,
        )

    # -- binary operators: type rules and constant folding

    def binary(self, tok: _Token, left: _Node, right: _Node) -> _Node:
        text = tok.text
        if text in ("and", "or"):
            for side, operand in (("left", left), ("right", right)):
                if operand.type is not _Type.CONDITION:
                    raise ExprError(
                        f"'{text}' combines conditions, but its {side} side is "
                        f"{operand.type.value}; did you mean a comparison like 'total > 0'?",
                        operand.offset,
                    )
            return self.node(
                _Type.CONDITION, left.offset, left, right, cond=_logic_fn(text, left, right)
            )
        if left.type is _Type.CONDITION or right.type is _Type.CONDITION:
            what = "compare conditions with" if text in _COMPARE else "use"
            raise ExprError(
                f"cannot {what} '{text}' on a condition; combine conditions with and, or, not",
                tok.offset,
            )
        if text in _COMPARE:
            return self.comparison(tok, left, right)
        return self.arithmetic(tok, left, right)

    def comparison(self, tok: _Token, left: _Node, right: _Node) -> _Node:
        if left.type is not right.type:
            duration, amount = (left, right) if left.type is _Type.DURATION else (right, left)
            fix = (
                "compare age with a duration like 5m"
                if duration.name == "age"
                else "both sides must be durations (like 5m) or both amounts"
            )
            raise ExprError(f"cannot compare a duration with an amount; {fix}", amount.offset)
        return self.node(
            _Type.CONDITION,
            left.offset,
            left,
            right,
            cond=_compare_fn(tok.text, left, right),
        )

    def arithmetic(self, tok: _Token, left: _Node, right: _Node) -> _Node:
        text = tok.text
        result = _arith_type(text, left.type, right.type)
        if result is None:
            raise ExprError(
                f"cannot {_OP_VERBS[text]} {left.type.value} and {right.type.value}"
                if text in ("+", "-")
                else f"cannot {_OP_VERBS[text]} {left.type.value} by {right.type.value}",
                tok.offset,
            )
        if text == "/" and right.const is not None and not right.const:
            raise ExprError("division by zero", right.offset)
        if left.const is not None and right.const is not None:
            try:
                value = _ARITH[text](left.const, right.const)
            except ArithmeticError:
                raise ExprError("the value of this constant is out of range", tok.offset) from None
            return self.node(result, left.offset, num=_const_fn(value), const=value)
        return self.node(result, left.offset, left, right, num=_arith_fn(text, left, right))


def _arith_type(text: str, left: _Type, right: _Type) -> _Type | None:
    """The type of ``left text right``; ``None`` when durations make no sense there."""
    amount, duration = _Type.AMOUNT, _Type.DURATION
    if left is amount and right is amount:
        return amount
    if text in ("+", "-"):
        return duration if left is duration and right is duration else None
    if text == "*":
        return duration if duration in (left, right) and left is not right else None
    # "/": a duration split n ways is a duration; a duration over a duration is a ratio.
    if left is duration:
        return duration if right is amount else amount
    return None


_FUNC_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "usd": ("metric",),
    **{func: ("metric", "window") for func in WINDOW_FUNCS},
    **{func: ("row expression",) for func in AGGREGATE_FUNCS if func != "count"},
    "count": (),
}
_FUNC_EXAMPLES: Final = {
    "usd": "usd(total)",
    "delta": "delta(total, 15m)",
    "pct_change": "pct_change(total, 15m)",
    "max_over": "max_over(total, 1h)",
    "min_over": "min_over(total, 1h)",
    "sum": "sum(available)",
    "min": "min(available)",
    "max": "max(available)",
    "avg": "avg(available)",
    "count": "count()",
}


# --------------------------------------------------------------------------- public


class Expression:
    """A loaded, type-checked condition compiled to closures.

    ``metrics``: every metric read, directly or through a function (``usd`` adds
    ``rate_usd``). ``history_metrics``: metrics whose history a window function reads,
    i.e. what the engine must record. ``windows``: the longest window in seconds (0 if
    none). ``account_scope``: only ``age``/``failures`` are used, so the rule is evaluated
    once per account rather than per row.

    Aggregates (module docstring): ``aggregates`` in order of first appearance,
    ``group_windows`` the texts of those whose history a window function reads,
    ``aggregate_offset`` where the first one is, ``row_read`` (offset, name) of the first row
    or account value read outside any aggregate: a grouped rule may not have one.
    """

    __slots__ = (
        "_fn",
        "_refs",
        "account_scope",
        "aggregate_offset",
        "aggregates",
        "group_windows",
        "history_metrics",
        "metrics",
        "row_read",
        "source",
        "windows",
    )

    def __init__(self, source: str) -> None:
        """Parse and check ``source``; raises :class:`ExprError`."""
        if len(source) > MAX_LENGTH:
            raise ExprError(
                f"expression is too long ({len(source)} characters; the limit is {MAX_LENGTH})",
                MAX_LENGTH,
            )
        parser = _Parser(source)
        root = parser.parse()
        self.source: Final = source
        self.metrics: Final = frozenset(parser.metrics)
        self.history_metrics: Final = frozenset(parser.history_metrics)
        self.windows: Final = parser.window
        self.aggregates: Final = tuple(parser.aggregates.values())
        self.group_windows: Final = frozenset(parser.group_windows)
        self.aggregate_offset: Final = parser.aggregate_offset
        self.row_read: Final = parser.row_read
        self.account_scope: Final = not parser.metrics and not parser.aggregates
        self._fn: Final = _cond(root)
        self._refs: Final = dict(parser.refs)

    def evaluate(self, ctx: EvalContext) -> bool | None:
        """``True``/``False``, or ``None`` for no data (the rule neither fires nor resolves)."""
        try:
            return self._fn(ctx)
        except ArithmeticError:  # overflow, NaN/infinity from a source: no usable data
            return None

    def values(self, ctx: EvalContext) -> dict[str, Decimal]:
        """Every metric/function the expression reads, for the alert's ``values`` field.

        Keys are canonical spellings (``available``, ``usd(total)``,
        ``pct_change(total, 15m)``, ``age``, ``failures``) in order of first appearance;
        a function's metric argument is listed too (the current ``total`` next to its
        change reads better in an alert). Values that are missing (no data) are left out.
        """
        out: dict[str, Decimal] = {}
        for key, fn in self._refs.items():
            try:
                value = fn(ctx)
            except ArithmeticError:
                continue
            if value is not None:
                out[key] = value
        return out

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def parse_expression(source: str) -> Expression:
    """Parse, type-check and compile ``source``; raises :class:`ExprError` with an offset."""
    return Expression(source)
