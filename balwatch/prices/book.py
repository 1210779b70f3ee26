"""The price book: the latest quotes of every price source, and the USD prices they give.

Between the pollers and the rule engine: every row gets a ``rate_usd`` from the book (see
:func:`stamp`) before anything reads it, unless its own source gave one (a source's own rate
wins).

A price of an asset comes, in this order, from

1. ``static:`` in config (pegs and stablecoins, exact); USD itself is 1;
2. a quote of the sources, in the order they are listed, fewest conversions first: a pair
   ``BASE/QUOTE`` at price p gives BASE = p x QUOTE when QUOTE has a price, and QUOTE =
   BASE / p when BASE has one (so ``USDT/MXN`` prices MXN through USDT's static 1). The
   ``rows`` source quotes each asset at the ``rate_usd`` its rows carried (CoinAPI's).

A quote older than ``max_age`` is no quote, so a price that depends on it is no price: the
row's ``rate_usd`` is then null and ``usd()`` of it no data, never 0. Products are exact;
a quotient (an inverted pair) is rounded to :data:`DIGITS` significant digits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Final

from balwatch.config.model import USD, PricesConfig, RowsPriceSource
from balwatch.model import Balance

# Significant digits of a price got by division; far beyond any market's precision.
DIGITS: Final = 34
_DIVIDE: Final = Context(prec=DIGITS)
_MULTIPLY: Final = Context(prec=200)  # exact for any two prices a config or ticker holds

Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Quote:
    price: Decimal  # units of the pair's quote asset per unit of its base asset
    at: float  # when it was fetched (the book's clock)


class PriceBook:
    """Quotes per source, and the USD prices they give now. One event loop; cheap to read."""

    def __init__(self, config: PricesConfig | None, *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._quotes: list[dict[Pair, Quote]] = []
        self.config = PricesConfig()
        self.configure(config)

    def configure(self, config: PricesConfig | None) -> None:
        """Use ``config`` (a reload); a source listed as before keeps its quotes."""
        config = config or PricesConfig()
        old = self.config.sources
        self._quotes = [
            self._quotes[index] if index < len(old) and old[index] == source else {}
            for index, source in enumerate(config.sources)
        ]
        self.config = config
        self._rows_index = next(
            (i for i, source in enumerate(config.sources) if isinstance(source, RowsPriceSource)),
            None,
        )

    @property
    def active(self) -> bool:
        """Whether any row can get a price from the book."""
        return bool(self.config.static or self.config.sources)

    def record(self, source: int, quotes: Mapping[Pair, Decimal], at: float | None = None) -> None:
        """New quotes of source number ``source`` (its place in ``prices.sources``)."""
        at = self._clock() if at is None else at
        book = self._quotes[source]
        for pair, price in quotes.items():
            book[pair] = Quote(price, at)

    def learn(self, rows: Iterable[Balance], at: float | None = None) -> None:
        """The ``rate_usd`` rows carry, as quotes of the ``rows`` source (if one is listed)."""
        if self._rows_index is None:
            return
        at = self._clock() if at is None else at
        book = self._quotes[self._rows_index]
        for row in rows:
            if row.rate_usd is not None and row.rate_usd > 0:
                book[(row.asset, USD)] = Quote(row.rate_usd, at)

    def usd_prices(self, now: float | None = None) -> dict[str, Decimal]:
        """Every asset's USD price from quotes no older than ``max_age`` (module docstring)."""
        now = self._clock() if now is None else now
        oldest = now - self.config.max_age
        prices: dict[str, Decimal] = {USD: Decimal(1), **self.config.static}
        fresh = [
            (pair, quote.price)
            for quotes in self._quotes
            for pair, quote in quotes.items()
            if quote.at >= oldest
        ]
        while fresh:
            known = dict(prices)  # one round: only prices known before it, fewest hops win
            for (base, quote), price in fresh:
                if base not in prices and quote in known:
                    prices[base] = _MULTIPLY.multiply(price, known[quote])
                elif quote not in prices and base in known:
                    prices[quote] = _DIVIDE.divide(known[base], price)
            if len(prices) == len(known):
                break
        return prices


def stamp(rows: Sequence[Balance], prices: Mapping[str, Decimal]) -> list[Balance]:
    """``rows`` with ``rate_usd`` from ``prices`` where the row has none of its own. Pure."""
    return [
        row._replace(rate_usd=prices[row.asset])
        if row.rate_usd is None and row.asset in prices
        else row
        for row in rows
    ]
