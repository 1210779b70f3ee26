"""Live price sources: fetch each ccxt ticker source on its interval into the price book.

A failed fetch is logged (``price_fetch_failed``, with the error kind) and retried at the
next interval; it never fails a poll and never raises. Its quotes just age, and past
``max_age`` the prices that depend on them are no price.

Each source has one ccxt exchange object, kept across fetches (ccxt loads the exchange's
markets on the first fetch: tickers are named by market). Prices are each ticker's ``last``
(else ``close``), read exactly like balances (see :mod:`balwatch.adapters.ccxtsource`).
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import aiohttp
import structlog

from balwatch.adapters.ccxtsource import new_exchange, source_error
from balwatch.config.model import CcxtPriceSource, PricesConfig
from balwatch.errors import BadResponse, SourceError
from balwatch.money import parse_amount
from balwatch.prices.book import Pair, PriceBook

log = structlog.get_logger(__name__)


class TickerSource:
    """One ``type: ccxt`` price source: its exchange object and one fetch of its pairs."""

    def __init__(
        self, config: CcxtPriceSource, session: aiohttp.ClientSession, default_timeout: float
    ) -> None:
        self.config = config
        self.name = f"prices:{config.id}"
        self._exchange = new_exchange(
            config.id,
            session=session,
            timeout=config.timeout or default_timeout,
            base_url=config.base_url or "",
            ccxt_options=config.ccxt_options,
            load_markets=True,
        )

    async def fetch(self) -> dict[Pair, Decimal]:
        """The pairs' prices now; SourceError if the exchange failed or answered nonsense."""
        exchange = self._exchange
        symbols = ["/".join(pair) for pair in self.config.pairs]
        exchange.last_response_headers = None
        exchange.balwatch_status = None
        try:
            if exchange.has.get("fetchTickers"):
                tickers: dict[str, Any] = await exchange.fetch_tickers(symbols)
            else:
                tickers = {symbol: await exchange.fetch_ticker(symbol) for symbol in symbols}
        except Exception as exc:  # every failure of a ccxt call becomes a typed error
            raise source_error(exc, self.name, (), exchange) from None
        quotes: dict[Pair, Decimal] = {}
        for pair, symbol in zip(self.config.pairs, symbols, strict=True):
            ticker = tickers.get(symbol) if isinstance(tickers, dict) else None
            if not isinstance(ticker, dict):
                continue  # not listed: this pair's price ages out
            text = ticker.get("last") or ticker.get("close")
            if text is None:
                continue
            price = parse_amount(text, source=self.name, asset=symbol, field="last")
            if not price:
                raise BadResponse(self.name, "a price of 0", asset=symbol, field="last")
            quotes[pair] = price
        return quotes


class PriceFeeds:
    """Runs the book's live sources; ``apply`` a new config on reload."""

    def __init__(
        self, book: PriceBook, session: aiohttp.ClientSession, *, default_timeout: float
    ) -> None:
        self._book = book
        self._session = session
        self._default_timeout = default_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._running: PricesConfig | None = None

    def _sources(self, config: PricesConfig) -> list[tuple[int, TickerSource]]:
        return [
            (index, TickerSource(source, self._session, self._default_timeout))
            for index, source in enumerate(config.sources)
            if isinstance(source, CcxtPriceSource)
        ]

    async def refresh(self) -> None:
        """Fetch every live source once, concurrently (``balwatch balances`` and ``eval``)."""
        await asyncio.gather(
            *(self._refresh(index, source) for index, source in self._sources(self._book.config))
        )

    async def _refresh(self, index: int, source: TickerSource) -> None:
        try:
            quotes = await source.fetch()
        except SourceError as exc:
            log.warning(
                "price_fetch_failed", source=source.name, kind=str(exc.kind), error=str(exc)
            )
            return
        self._book.record(index, quotes)
        missing = len(source.config.pairs) - len(quotes)
        if missing:
            log.warning("price_pairs_missing", source=source.name, missing=missing)

    async def _run(self, index: int, source: TickerSource) -> None:
        while True:
            await self._refresh(index, source)
            await asyncio.sleep(source.config.interval)

    async def apply(self, config: PricesConfig | None) -> None:
        """Fetch on the intervals of ``config`` (the book's own, configured by the caller);
        unchanged, the running fetchers go on."""
        config = config or PricesConfig()
        if config == self._running:
            return
        await self.stop()
        self._running = config
        self._tasks = [
            asyncio.create_task(self._run(index, source), name=f"prices:{index}")
            for index, source in self._sources(config)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._running = None
