"""Fake Bitso public market data, as ccxt's ``bitso`` reads it: books, catalogues, ticker.

Prices come from ``state.tickers["bitso"]`` (``"USDT/MXN": "17.25"``), each pair a Bitso book
``usdt_mxn`` (docs.bitso.com: List Available Books, Ticker). Public: no authentication, no
rate limit. Wire shapes:

* ``GET /api/v3/available_books/``: ``{"success": true, "payload": [{"book", "minimum_amount",
  ..., "fees": {"flat_rate": {"maker", "taker"}, "structure": []}}]}``, one per pair;
* ``GET /api/v3/catalogues/``: the currency catalogue, here with no currencies (ccxt then
  names them by their upper-cased book codes);
* ``GET /api/v3/ticker/?book=usdt_mxn``: ``{"success": true, "payload": {"book", "last",
  "bid", "ask", "high", "low", "vwap", "volume", "created_at", "change_24"}}``, every price the
  pair's; an unknown book is HTTP 400 with error 0301 (unknown order book).

Each path is also served without its trailing slash, as ccxt asks for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from balwatch.simulator.respond import json_text
from balwatch.simulator.state import SimState

SOURCE: Final = "bitso"


def book_of(pair: str) -> str:
    """``USDT/MXN`` -> ``usdt_mxn``."""
    return pair.replace("/", "_").lower()


def _success(payload: Any) -> web.Response:
    return json_text(200, json.dumps({"success": True, "payload": payload}))


def _book(pair: str) -> dict[str, Any]:
    return {
        "book": book_of(pair),
        "minimum_amount": "0.00000001",
        "maximum_amount": "1000000",
        "minimum_price": "0.01",
        "maximum_price": "10000000",
        "minimum_value": "1",
        "maximum_value": "100000000",
        "tick_size": "0.01",
        "default_chart": "candle",
        "fees": {"flat_rate": {"maker": "0.500", "taker": "0.650"}, "structure": []},
    }


def routes(state: SimState) -> list[web.RouteDef]:
    def prices() -> dict[str, str]:
        return state.tickers.get(SOURCE, {})

    async def available_books(request: web.Request) -> web.Response:
        return _success([_book(pair) for pair in prices()])

    async def catalogues(request: web.Request) -> web.Response:
        return _success({"currencies": {"metadata": []}})

    async def ticker(request: web.Request) -> web.Response:
        by_book = {book_of(pair): price for pair, price in prices().items()}
        book = request.query.get("book", "")
        if book not in by_book:
            error = {"code": "0301", "message": f"Unknown OrderBook {book}"}
            return json_text(400, json.dumps({"success": False, "error": error}))
        price = by_book[book]
        created = datetime.fromtimestamp(state.wall_clock(), UTC).isoformat(timespec="seconds")
        return _success(
            {
                "book": book,
                "last": price,
                "bid": price,
                "ask": price,
                "high": price,
                "low": price,
                "vwap": price,
                "volume": "0",
                "created_at": created,
                "change_24": "0",
            }
        )

    found = []
    for path, handler in (
        ("/api/v3/available_books/", available_books),
        ("/api/v3/catalogues/", catalogues),
        ("/api/v3/ticker/", ticker),
    ):
        found += [web.get(path, handler), web.get(path.rstrip("/"), handler)]
    return found
