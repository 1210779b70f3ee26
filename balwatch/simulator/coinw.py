"""Fake CoinW spot: ``POST /api/v1/private?command=returnCompleteBalances``.

Request handling, in the order the real service is taken to apply it:

1. Parameters are read from the query string and from a form body alike (CoinW's docs
   put them in the query; some clients post a form), query winning a clash.
2. ``command`` must be ``returnCompleteBalances`` and ``api_key`` and ``sign`` present,
   else parameter error ``-103``.
3. An unknown ``api_key`` gets ``10006``. A known one is counted, then rate limited per
   key (``state.rate_limits["coinw"]``, default the documented 5 per 2 s): over the limit
   gets ``29001`` "API access frequently". Then the ``sign`` must equal CoinW's documented
   signature over the parameters (:func:`signature`), else ``10006``.

Every answer CoinW gives itself, error or not, is HTTP 200 with ``{"code", "msg", "success",
"failed"}`` (the real error messages are not documented; the texts here are ours).

Balances render as ``data: {ASSET: {"available", "onOrders"}}``, derived from the
normalized fields: ``available`` and ``onOrders`` (= ``locked``) are sent as stored; one
that is missing is derived from ``total`` minus the other when ``total`` is given, else
"0". CoinW sends no total and none of the other metrics. Fields that are not normalized
metric names are passed through as they are (so tests can add unknown wire fields).

Own faults: THROTTLE is the ``29001`` answer; AUTH is ``10006``; REJECT is a ``-200``
system error; WRONG_TYPES sends ``available`` as a boolean and ``onOrders`` as an object.
The rest use the generic forms.

The path, command, codes and signature recipe are spelled here from CoinW's documentation,
not imported from the adapter: an adapter that drifts from the documented wire must fail
against this fake, not follow it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from decimal import Context, Decimal, DecimalException
from typing import Any, Final

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

EXCHANGE: Final = "coinw"
PATH: Final = "/api/v1/private"
COMMAND: Final = "returnCompleteBalances"
# Documented: 5 requests per 2 s per user for this endpoint.
DEFAULT_LIMIT: Final = (5, 2.0)
SUCCESS_CODE: Final = "200"
PARAMETER_ERROR: Final = ("-103", "parameter error")
AUTH_ERROR: Final = ("10006", "invalid api_key or sign")
THROTTLED: Final = ("29001", "API access frequently")
SYSTEM_ERROR: Final = ("-200", "system error")

# Derived amounts stay exact for any scenario value a person would write.
_EXACT: Final = Context(prec=200)


def routes(state: SimState) -> list[web.RouteDef]:
    window = SlidingWindow(*state.rate_limits.get(EXCHANGE, DEFAULT_LIMIT))

    async def private(request: web.Request) -> web.StreamResponse:
        params = await _params(request)
        api_key = params.get("api_key")
        sign = params.get("sign")
        if params.get("command") != COMMAND or not api_key or not sign:
            return error_body(*PARAMETER_ERROR)
        account = state.by_key(EXCHANGE, api_key)
        if account is None:
            return error_body(*AUTH_ERROR)
        state.record(account)
        if not window.allow(api_key, state.clock()):
            return error_body(*THROTTLED)
        secret = account.api_secret
        if secret is None or not _same(sign, signature(params, secret)):
            return error_body(*AUTH_ERROR)
        return await serve_balances(state, request, account, render_ok, render_fault)

    return [web.post(PATH, private)]


async def _params(request: web.Request) -> dict[str, str]:
    form = await request.post()
    merged = {name: value for name, value in form.items() if isinstance(value, str)}
    merged.update(request.query)
    return merged


def error_body(code: str, msg: str) -> web.Response:
    """CoinW's error shape: HTTP 200, the code as a string."""
    body = {"code": code, "msg": msg, "success": False, "failed": True}
    return json_text(200, json.dumps(body))


def render_ok(account: SimAccount) -> web.Response:
    assets = account.balances.get(account.exchange, {})
    data = {asset: wire_fields(fields) for asset, fields in assets.items()}
    return _success(data)


def render_fault(fault: Fault, account: SimAccount) -> web.Response | None:
    match fault.kind:
        case FaultKind.THROTTLE:
            return error_body(*THROTTLED)
        case FaultKind.AUTH:
            return error_body(*AUTH_ERROR)
        case FaultKind.REJECT:
            return error_body(*SYSTEM_ERROR)
        case FaultKind.WRONG_TYPES:
            assets = account.balances.get(account.exchange) or PLACEHOLDER_ASSETS
            wrong = {
                asset: {"available": True, "onOrders": {"amount": wire_fields(fields)["onOrders"]}}
                for asset, fields in assets.items()
            }
            return _success(wrong)
        case _:
            return None


def wire_fields(fields: AssetFields) -> dict[str, str]:
    """One asset as CoinW sends it (the derivation is in the module docstring)."""
    available = fields.get("available")
    on_orders = fields.get("locked")
    total = fields.get("total")
    if total is not None:
        if available is None:
            available = _minus(total, on_orders or "0")
        if on_orders is None:
            on_orders = _minus(total, available)
    extra = {name: value for name, value in fields.items() if name not in METRICS}
    return {
        "available": "0" if available is None else available,
        "onOrders": "0" if on_orders is None else on_orders,
        **extra,
    }


def signature(params: Mapping[str, str], secret: str) -> str:
    """CoinW's documented ``sign``: upper-case hex MD5 of every parameter but ``command`` and
    ``sign``, sorted by name, joined ``k=v`` with ``&``, then ``&secret_key=<secret>``."""
    pairs = [f"{k}={params[k]}" for k in sorted(params) if k not in ("command", "sign")]
    text = "&".join([*pairs, f"secret_key={secret}"])
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest().upper()


def _same(given: str, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII text, and a caller may send any.
    return hmac.compare_digest(given.encode(), expected.encode())


def _minus(total: str, part: str) -> str:
    try:
        return str(_EXACT.subtract(Decimal(total), Decimal(part)))
    except DecimalException:
        return total  # not a number: let the client see the scenario's bad text


def _success(data: dict[str, Any]) -> web.Response:
    body = {"code": SUCCESS_CODE, "data": data, "msg": "SUCCESS", "success": True, "failed": False}
    return json_text(200, json.dumps(body))
