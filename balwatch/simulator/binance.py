"""Fake Binance spot: the signed ``GET /api/v3/account``, and the market data ccxt reads.

Written from Binance's Spot REST API documentation (General API Information, Request
Security, Limits, Error Codes, Account information, Market Data endpoints), for balwatch's
ccxt source; balwatch has no Binance adapter of its own.

Signed requests (``/api/v3/account``), checked in this order:

1. header ``X-MBX-APIKEY`` missing or empty: HTTP 401, -2014 (API-key format invalid);
2. request weight (below): over the limit, 429 or 418;
3. a key no ``binance`` account holds: 401, -2015 (invalid API-key, IP, or permissions);
4. ``timestamp`` missing or not a whole number of milliseconds: 400, -1102; ``recvWindow``
   (default 5000) not a number, or above 60000: 400, -1131;
5. ``signature`` missing: 400, -1102; not the lower- or upper-case hex HMAC-SHA256, keyed by
   the secret, of the query string without the ``signature`` parameter followed by the body:
   400, -1022 (the signature is not case sensitive);
6. timing: a ``timestamp`` 1000 ms or more ahead of the server's clock, or more than
   ``recvWindow`` behind it: 400, -1021.

Then the account's delay and faults apply, and the answer is the account document with one
``balances`` entry per asset of the account's ``binance`` venue: ``free`` = available,
``locked`` = locked, as stored (one that is missing is derived from ``total``), as strings.

Limits: request weight per IP (here: per simulator), ``state.rate_limits["binance"]``, default
the documented 6000 per minute: account 20, exchangeInfo 20, ticker/24hr 2 for one symbol
(for a list: 2 up to 20 symbols, 40 up to 100, else 80; 80 for all), ticker/price 2 (4 for
a list or all). The request over it gets 429 with a Retry-After
(seconds until the window has room) and counts nothing; asking again before that time is up
bans the IP: 418 with a Retry-After of two minutes, doubling for each further ban, for every
request until the ban ends.

Market data, from ``state.tickers["binance"]`` (``"BTC/USDT": "60000.5"``): ``exchangeInfo``
lists those pairs as TRADING spot symbols; ``ticker/24hr`` and ``ticker/price`` answer one
``symbol``, a JSON list of ``symbols``, or all; an unknown symbol is 400, -1121. The futures
``exchangeInfo`` (``/fapi/v1``, ``/dapi/v1``) list no symbols: ccxt loads them with spot.

Faults in Binance's shape: THROTTLE -> 429, -1003 (Retry-After: the fault's, else 60); AUTH
-> 401, -2015; STATUS -> that status with Binance's body for it (418 and 429: -1003, 401:
-2015, 5xx: -1001, else -1000), the fault's Retry-After sent; WRONG_TYPES -> 200 with
``free`` and ``locked`` as booleans. The rest use the generic forms.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import deque
from typing import Any, Final

from aiohttp import web

from balwatch.simulator.respond import (
    PLACEHOLDER_ASSETS,
    free_and_locked,
    json_text,
    serve_balances,
)
from balwatch.simulator.state import Fault, FaultKind, SimAccount, SimState

SOURCE: Final = "binance"
ACCOUNT_PATH: Final = "/api/v3/account"
KEY_HEADER: Final = "X-MBX-APIKEY"
DEFAULT_LIMIT: Final = (6000, 60.0)
DEFAULT_RECV_WINDOW: Final = 5000
MAX_RECV_WINDOW: Final = 60000
AHEAD_MS: Final = 1000
FIRST_BAN_SECONDS: Final = 120
THROTTLE_RETRY_AFTER: Final = "60"

_MESSAGES: Final = {
    -1000: "An unknown error occurred while processing the request.",
    -1001: "Internal error; unable to process your request. Please try again.",
    -1021: "Timestamp for this request is outside of the recvWindow.",
    -1022: "Signature for this request is not valid.",
    -1121: "Invalid symbol.",
    -1131: "recvWindow must be less than 60000",
    -2014: "API-key format invalid.",
    -2015: "Invalid API-key, IP, or permissions for action.",
}
_AHEAD: Final = "Timestamp for this request was 1000ms ahead of the server's time."
_MANDATORY: Final = "Mandatory parameter '{}' was not sent, was empty/null, or malformed."
_TOO_MUCH: Final = (
    "Too much request weight used; current limit is {} request weight per 1 MINUTE. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)
_BANNED: Final = (
    "Way too much request weight used; IP banned until {}. "
    "Please use WebSocket Streams for live updates to avoid bans."
)
ACCOUNT_WEIGHT: Final = 20
EXCHANGE_INFO_WEIGHT: Final = 20


def error_response(
    status: int, code: int, msg: str | None = None, retry_after: str | None = None
) -> web.Response:
    """Binance's error payload ``{"code", "msg"}``."""
    body = json.dumps({"code": code, "msg": _MESSAGES[code] if msg is None else msg})
    return json_text(status, body, {"Retry-After": retry_after} if retry_after else None)


def signature(secret: str, total_params: str) -> str:
    """Hex HMAC-SHA256 of ``totalParams`` (query string, then body), keyed by the secret."""
    return hmac.new(secret.encode(), total_params.encode(), hashlib.sha256).hexdigest()


def symbol_of(pair: str) -> str:
    """``BTC/USDT`` -> ``BTCUSDT``."""
    return pair.replace("/", "")


class _Weights:
    """Binance's request-weight limit for one IP, with its 429-then-418 escalation."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._used: deque[tuple[float, int]] = deque()
        self._throttled_until = 0.0
        self._banned_until = 0.0
        self._bans = 0

    def refusal(self, weight: int) -> web.Response | None:
        """The 429 or 418 for a request of ``weight`` now, or None (then it is counted)."""
        limit, per_seconds = self.state.rate_limits.get(SOURCE, DEFAULT_LIMIT)
        now = self.state.clock()
        if now < self._banned_until:
            return self._banned(now)
        if now < self._throttled_until:  # asked again before the Retry-After was up
            self._bans += 1
            ban = FIRST_BAN_SECONDS * 2 ** (self._bans - 1)
            self._banned_until = now + ban
            return self._banned(now)
        while self._used and now - self._used[0][0] >= per_seconds:
            self._used.popleft()
        if sum(w for _, w in self._used) + weight > limit:
            wait = per_seconds - (now - self._used[0][0]) if self._used else per_seconds
            retry_after = max(1, math.ceil(wait))
            self._throttled_until = now + retry_after
            return error_response(429, -1003, _TOO_MUCH.format(limit), str(retry_after))
        self._used.append((now, weight))
        return None

    def _banned(self, now: float) -> web.Response:
        left = max(1, math.ceil(self._banned_until - now))
        until_ms = int((self.state.wall_clock() + left) * 1000)
        return error_response(418, -1003, _BANNED.format(until_ms), str(left))


def ticker_weight(kind: str, symbols: int | None) -> int:
    """Weight of a ticker request for ``symbols`` named (None: all, 1: the ``symbol`` form)."""
    if kind == "price":
        return 2 if symbols == 1 else 4
    if symbols is None or symbols > 100:
        return 80
    return 2 if symbols <= 20 else 40


def _total_params(raw_query: str, body: str) -> tuple[str, str | None]:
    """(the signed text, the signature): the query without ``signature``, then the body."""
    kept: list[str] = []
    found: str | None = None
    for part in raw_query.split("&") if raw_query else ():
        name, _, value = part.partition("=")
        if name == "signature":
            found = value
        else:
            kept.append(part)
    return "&".join(kept) + body, found


def _whole_ms(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _recv_window(value: str | None) -> float | None:
    """recvWindow in ms (up to three decimals are allowed), or None when it is not a number."""
    if value is None:
        return DEFAULT_RECV_WINDOW
    head, _, tail = value.partition(".")
    if not (head.isascii() and head.isdigit()) or not (tail == "" or tail.isdigit()):
        return None
    if len(tail) > 3:
        return None
    return float(value)


def account_document(account: SimAccount, *, wrong_types: bool = False) -> str:
    assets = account.balances.get(SOURCE, {})
    if wrong_types and not assets:
        assets = PLACEHOLDER_ASSETS
    balances: list[dict[str, Any]] = []
    for asset, fields in assets.items():
        free, locked = free_and_locked(fields)
        entry: dict[str, Any] = {"asset": asset, "free": free, "locked": locked}
        if wrong_types:
            entry.update(free=True, locked=False)
        balances.append(entry)
    return json.dumps(
        {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": "0.00100000",
                "taker": "0.00100000",
                "buyer": "0.00000000",
                "seller": "0.00000000",
            },
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": 0,
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
            "uid": 0,
        }
    )


def render_ok(account: SimAccount) -> web.Response:
    return json_text(200, account_document(account))


def render_fault(fault: Fault, account: SimAccount) -> web.Response | None:
    match fault.kind:
        case FaultKind.THROTTLE:
            retry_after = fault.retry_after or THROTTLE_RETRY_AFTER
            return error_response(429, -1003, _TOO_MUCH.format(DEFAULT_LIMIT[0]), retry_after)
        case FaultKind.AUTH:
            return error_response(401, -2015)
        case FaultKind.STATUS:
            status = fault.status
            if status in (418, 429):
                message = _BANNED.format(0) if status == 418 else _TOO_MUCH.format(DEFAULT_LIMIT[0])
                return error_response(status, -1003, message, fault.retry_after)
            code = -2015 if status == 401 else -1001 if status >= 500 else -1000
            return error_response(status, code, retry_after=fault.retry_after)
        case FaultKind.WRONG_TYPES:
            return json_text(200, account_document(account, wrong_types=True))
        case _:
            return None


def _spot_symbol(pair: str) -> dict[str, Any]:
    base, _, quote = pair.partition("/")
    return {
        "symbol": symbol_of(pair),
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [],
        "permissions": [],
        "permissionSets": [["SPOT"]],
    }


def _ticker_24hr(pair: str, price: str, now_ms: int) -> dict[str, Any]:
    return {
        "symbol": symbol_of(pair),
        "priceChange": "0",
        "priceChangePercent": "0",
        "weightedAvgPrice": price,
        "prevClosePrice": price,
        "lastPrice": price,
        "lastQty": "0",
        "bidPrice": price,
        "bidQty": "0",
        "askPrice": price,
        "askQty": "0",
        "openPrice": price,
        "highPrice": price,
        "lowPrice": price,
        "volume": "0",
        "quoteVolume": "0",
        "openTime": now_ms - 86_400_000,
        "closeTime": now_ms,
        "firstId": 0,
        "lastId": 0,
        "count": 0,
    }


def routes(state: SimState) -> list[web.RouteDef]:
    weights = _Weights(state)

    def now_ms() -> int:
        return int(state.wall_clock() * 1000)

    async def account(request: web.Request) -> web.StreamResponse:
        key = request.headers.get(KEY_HEADER, "")
        if not key:
            return error_response(401, -2014)
        refused = weights.refusal(ACCOUNT_WEIGHT)
        if refused is not None:
            return refused
        holder = state.by_key(SOURCE, key)
        if holder is None or holder.api_secret is None:
            return error_response(401, -2015)
        state.record(holder)
        query = request.query
        timestamp = _whole_ms(query.get("timestamp"))
        if timestamp is None:
            return error_response(400, -1102, _MANDATORY.format("timestamp"))
        window = _recv_window(query.get("recvWindow"))
        if window is None or window > MAX_RECV_WINDOW:
            return error_response(400, -1131)
        signed, given = _total_params(request.rel_url.raw_query_string, await request.text())
        if not given:
            return error_response(400, -1102, _MANDATORY.format("signature"))
        expected = signature(holder.api_secret, signed)
        if not hmac.compare_digest(expected.encode(), given.lower().encode()):
            return error_response(400, -1022)
        server = now_ms()
        if timestamp >= server + AHEAD_MS:
            return error_response(400, -1021, _AHEAD)
        if server - timestamp > window:
            return error_response(400, -1021)
        return await serve_balances(state, request, holder, render_ok, render_fault)

    def prices() -> dict[str, str]:
        return state.tickers.get(SOURCE, {})

    def selected(request: web.Request) -> tuple[list[str] | None, web.Response | None]:
        """The pairs a ticker request names (None: all), or the -1121 answer."""
        by_symbol = {symbol_of(pair): pair for pair in prices()}
        names: list[Any]
        if "symbol" in request.query:
            names = [request.query["symbol"]]
        elif "symbols" in request.query:
            try:
                names = json.loads(request.query["symbols"])
            except ValueError:
                return None, error_response(400, -1121)
            if not isinstance(names, list):
                return None, error_response(400, -1121)
        else:
            return None, None
        if any(not isinstance(name, str) or name not in by_symbol for name in names):
            return None, error_response(400, -1121)
        return [by_symbol[name] for name in names], None

    async def ticker(request: web.Request, kind: str) -> web.Response:
        pairs, invalid = selected(request)
        refused = weights.refusal(ticker_weight(kind, None if pairs is None else len(pairs)))
        if refused is not None:
            return refused
        if invalid is not None:
            return invalid
        table = prices()
        chosen = list(table) if pairs is None else pairs
        stamp = now_ms()
        items = [
            _ticker_24hr(pair, table[pair], stamp)
            if kind == "24hr"
            else {"symbol": symbol_of(pair), "price": table[pair]}
            for pair in chosen
        ]
        single = "symbol" in request.query
        return json_text(200, json.dumps(items[0] if single else items))

    async def ticker_24hr(request: web.Request) -> web.Response:
        return await ticker(request, "24hr")

    async def ticker_price(request: web.Request) -> web.Response:
        return await ticker(request, "price")

    async def exchange_info(request: web.Request) -> web.Response:
        refused = weights.refusal(EXCHANGE_INFO_WEIGHT)
        if refused is not None:
            return refused
        symbols = [_spot_symbol(pair) for pair in prices()]
        return json_text(200, _exchange_info(symbols, now_ms()))

    async def futures_exchange_info(request: web.Request) -> web.Response:
        return json_text(200, _exchange_info([], now_ms()))

    return [
        web.get(ACCOUNT_PATH, account),
        web.get("/api/v3/exchangeInfo", exchange_info),
        web.get("/api/v3/ticker/24hr", ticker_24hr),
        web.get("/api/v3/ticker/price", ticker_price),
        web.get("/fapi/v1/exchangeInfo", futures_exchange_info),
        web.get("/dapi/v1/exchangeInfo", futures_exchange_info),
    ]


def _exchange_info(symbols: list[dict[str, Any]], server_ms: int) -> str:
    return json.dumps(
        {
            "timezone": "UTC",
            "serverTime": server_ms,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": DEFAULT_LIMIT[0],
                }
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        }
    )
