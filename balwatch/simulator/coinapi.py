"""Fake CoinAPI EMS gateway: ``GET /v1/balances`` as the real REST API answers it.

Authentication: the key in ``X-CoinAPI-Key`` (or the ``apikey`` query parameter, which the
real API also accepts). A presented key must belong to a coinapi account, else 401; a request
without one is served from the coinapi account that has no ``api_key`` (a self-hosted gateway
runs without auth), else 401. EMS does not document its 401 body: we answer
``{"message": "..."}``, never echoing the key.

Rendering the store (venue -> asset -> normalized field -> text) as the wire format: one
array element per venue, in store order; the ``exchange_id`` query keeps only that venue (an
unknown one gives ``[]``). Per asset: ``asset_id_coinapi`` is the store's asset key,
``asset_id_exchange`` the stored field of that name or else the asset key; ``balance`` =
total, ``available``, ``locked``, ``rate_usd``, each null when the store lacks it (the docs
show ``"rate_usd": null`` for an unknown rate); ``last_updated_by`` defaults to EXCHANGE;
other stored wire fields (``traded`` ...) pass through; normalized metrics EMS has no field
for (hold, referral ...) are dropped. Amounts are written as JSON numbers straight from their
stored text, never through float; text that is not a JSON number literal (a test's ``"1,5"``)
goes out as a JSON string, which is how tests feed the adapter bad values.

Faults answered in EMS's own way: REJECT is a 490 MESSAGE_REJECT (EXCHANGE_UNREACHABLE) sent
with a misleading ``text/plain`` Content-Type; THROTTLE a 429 with Retry-After; AUTH the 401;
WRONG_TYPES the good answer with every amount a boolean. The rest are generic.

Rate limit: none is documented for EMS REST, so none is enforced unless a scenario or test
sets ``rate_limits: {coinapi: [requests, seconds]}``; over it, a 429 with Retry-After.

The path, header, field names and reject status are spelled here from CoinAPI's
documentation, not imported from the adapter: an adapter that drifts from the documented
wire must fail against this fake, not follow it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Final

from aiohttp import web

from balwatch.model import METRICS
from balwatch.simulator.respond import PLACEHOLDER_ASSETS, json_text, serve_balances
from balwatch.simulator.state import (
    AssetFields,
    Fault,
    FaultKind,
    SimAccount,
    SimState,
    SlidingWindow,
)

EXCHANGE: Final = "coinapi"
BALANCES_PATH: Final = "/v1/balances"
KEY_HEADER: Final = "X-CoinAPI-Key"
REJECT_STATUS: Final = 490
# Normalized metric -> the wire amount field it is rendered as, in the documented order.
_WIRE_NAME: Final = {
    "total": "balance",
    "available": "available",
    "locked": "locked",
    "rate_usd": "rate_usd",
}
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
# Stored wire fields that are text by definition, even when they look like a number.
_TEXT_FIELDS: Final = frozenset({"asset_id_exchange", "asset_id_coinapi", "last_updated_by"})
_DEFAULT_RETRY_AFTER: Final = "1"


class _Number(str):
    """Text the encoder writes into the document as is: a JSON number literal."""

    __slots__ = ()


# Turns a stored amount's text into the JSON value sent for it.
AmountRenderer = Callable[[str], object]


def routes(state: SimState) -> list[web.RouteDef]:
    limit = state.rate_limits.get(EXCHANGE)
    window = None if limit is None else SlidingWindow(*limit)

    async def balances(request: web.Request) -> web.StreamResponse:
        key = request.headers.get(KEY_HEADER, request.query.get("apikey"))
        account = state.without_auth(EXCHANGE) if key is None else state.by_key(EXCHANGE, key)
        if account is None:
            problem = "Missing API key" if key is None else "Invalid API key"
            return _unauthorized(problem)
        state.record(account)
        if window is not None and not window.allow(account.name, state.clock()):
            return _too_many(str(math.ceil(window.per_seconds)))
        venue = request.query.get("exchange_id")
        return await serve_balances(
            state,
            request,
            account,
            lambda acct: json_text(200, _encode(_document(acct, venue, _amount))),
            lambda fault, acct: _render_fault(fault, acct, venue),
        )

    return [web.get(BALANCES_PATH, balances)]


def _render_fault(fault: Fault, account: SimAccount, venue: str | None) -> web.Response | None:
    match fault.kind:
        case FaultKind.REJECT:
            reject = {
                "type": "MESSAGE_REJECT",
                "reject_reason": "EXCHANGE_UNREACHABLE",
                "exchange_id": venue or next(iter(account.balances), ""),
                "message": "Exchange is unreachable.",
                "rejected_message": "",
            }
            return web.Response(
                status=REJECT_STATUS, text=_encode(reject), content_type="text/plain"
            )
        case FaultKind.THROTTLE:
            return _too_many(fault.retry_after or _DEFAULT_RETRY_AFTER)
        case FaultKind.AUTH:
            return _unauthorized("Invalid API key")
        case FaultKind.WRONG_TYPES:
            selected = [a for name, a in account.balances.items() if venue in (None, name)]
            if any(selected):
                document = _document(account, venue, _boolean)
            else:
                rows = [
                    _row(asset, fields, _boolean) for asset, fields in PLACEHOLDER_ASSETS.items()
                ]
                document = [{"exchange_id": venue or account.exchange, "data": rows}]
            return json_text(200, _encode(document))
        case _:
            return None


def _boolean(_text: str) -> object:
    """A wrong-types amount: JSON true instead of a number."""
    return True


def _unauthorized(problem: str) -> web.Response:
    return json_text(401, _encode({"message": problem}))


def _too_many(retry_after: str) -> web.Response:
    return json_text(429, _encode({"message": "Too many requests"}), {"Retry-After": retry_after})


def _document(account: SimAccount, venue: str | None, amount: AmountRenderer) -> list[object]:
    return [
        {
            "exchange_id": name,
            "data": [_row(asset, fields, amount) for asset, fields in assets.items()],
        }
        for name, assets in account.balances.items()
        if venue is None or name == venue
    ]


def _row(asset: str, fields: AssetFields, amount: AmountRenderer) -> dict[str, object]:
    row: dict[str, object] = {
        "asset_id_exchange": asset,
        "asset_id_coinapi": asset,
        **dict.fromkeys(_WIRE_NAME.values()),
        "last_updated_by": "EXCHANGE",
    }
    for name, text in fields.items():
        if name in _WIRE_NAME:
            row[_WIRE_NAME[name]] = amount(text)
        elif name not in METRICS:
            row[name] = text if name in _TEXT_FIELDS else amount(text)
    return row


def _amount(text: str) -> object:
    return _Number(text) if _JSON_NUMBER.fullmatch(text) else text


def _encode(value: object) -> str:
    """JSON text like ``json.dumps``, but :class:`_Number` written raw (exact digits)."""
    if isinstance(value, _Number):
        return value
    if isinstance(value, dict):
        members = (f"{json.dumps(k)}: {_encode(v)}" for k, v in value.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v) for v in value) + "]"
    return json.dumps(value)
