"""Fake Kuna Core: ``POST /v2/auth/login`` and ``POST /v2/balance``.

Auth on ``/v2/balance``, checked before anything else:

- header ``api-key`` equal to a kunacore account's ``api_key``; or
- ``Authorization: Bearer <token>`` with a token this fake issued and that is still in
  ``state.tokens`` (``POST /_sim/expire-tokens`` drops them all, as an expiry would).

Login: header ``merchant_id`` and a JSON body with ``password`` and the login under ``login``
or ``email`` (the real field name is unconfirmed: both readings are served). A match issues a
random token, stored in ``state.tokens`` (never removed except by expiry, so tests can count
logins there) and answered as ``{"data": {"accessToken": ...}}``. A known merchant and login
is recorded as a request of that account, so ``requests`` counts logins too. Logins are never
delayed or faulted: an account's delay and faults script its balance calls.

Error bodies are not documented. We answer in the NestJS shape
``{"statusCode": 401, "message": "Unauthorized"}`` (an assumption; the adapter maps statuses
generically and only quotes the body): 401 for a wrong key, unknown or expired token or a
refused login, 400 for a body that is not an object of the documented types, 404 for an
unknown ``walletId``. No rate limit is documented, so none is enforced.

Rendering, from the stored normalized fields (:data:`WIRE_METRICS` backwards):
``balance`` = available, ``holdBalance`` = hold, ``lockBalance`` = aml_locked,
``referralBalance`` = referral, each "0" when not stored; ``asset`` as stored. Kuna sends no
total (the client derives it), so stored ``total``/``locked``/``pending_*``/``rate_usd`` are
not sent. Every stored field that is not a metric name goes on the wire as is, after the
derived ones, so a scenario can add a settlement field or override ``balance`` with a bad
value. A ``depositAddress`` object, fake but stable, ends each entry.

Wallets: balances under venue ``kunacore`` are the default wallet (no ``walletId``); a
``walletId`` selects the venue of that name. ``assets`` keeps only the listed assets
(compared upper-case).

Paths, header and field names are spelled here from Kuna Core's documentation, not imported
from the adapter: an adapter that drifts from the documented wire must fail against this
fake, not follow it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from balwatch.model import METRICS
from balwatch.simulator.respond import (
    PLACEHOLDER_ASSETS,
    RenderFault,
    RenderOk,
    json_text,
    serve_balances,
)
from balwatch.simulator.state import AssetFields, Fault, FaultKind, SimAccount, SimState

EXCHANGE: Final = "kunacore"
BALANCE_PATH: Final = "/v2/balance"
LOGIN_PATH: Final = "/v2/auth/login"
API_KEY_HEADER: Final = "api-key"
MERCHANT_HEADER: Final = "merchant_id"
# Both readings of the login's field name, which the docs leave unconfirmed.
LOGIN_FIELDS: Final = ("login", "email")
# Wire amount field -> the normalized metric it is rendered from.
WIRE_METRICS: Final = {
    "balance": "available",
    "holdBalance": "hold",
    "lockBalance": "aml_locked",
    "referralBalance": "referral",
}
_PHRASES: Final = {status.value: status.phrase for status in HTTPStatus}


def routes(state: SimState) -> list[web.RouteDef]:
    async def login(request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body is None:
            return _error(400, "Bad Request")
        name = next((body[f] for f in LOGIN_FIELDS if isinstance(body.get(f), str)), None)
        password = body.get("password")
        if name is None or not isinstance(password, str):
            return _error(400, "login and password must be strings")
        account = _user(state, request.headers.get(MERCHANT_HEADER), name)
        if account is None:
            return _error(401, "Unauthorized")
        state.record(account)
        if account.password is None or not hmac.compare_digest(
            account.password.encode(), password.encode()
        ):
            return _error(401, "Unauthorized")
        token = secrets.token_urlsafe(32)
        state.tokens[token] = account.name
        return json_text(200, json.dumps({"data": {"accessToken": token}}))

    async def balance(request: web.Request) -> web.StreamResponse:
        account = _authenticated(state, request)
        if account is None:
            return _error(401, "Unauthorized")
        state.record(account)
        body = await _json_object(request)
        filters = None if body is None else _filters(body)
        if filters is None:
            return _error(400, "walletId must be a string and assets a list of strings")
        wallet, assets = filters
        if wallet not in account.balances and wallet != EXCHANGE:
            return _error(404, "Wallet not found")
        return await serve_balances(
            state, request, account, _render_ok(wallet, assets), _render_fault(wallet, assets)
        )

    return [web.post(LOGIN_PATH, login), web.post(BALANCE_PATH, balance)]


def _user(state: SimState, merchant_id: str | None, login: str) -> SimAccount | None:
    for account in state.accounts.values():
        if (
            account.exchange == EXCHANGE
            and account.merchant_id is not None
            and account.merchant_id == merchant_id
            and account.login == login
        ):
            return account
    return None


def _authenticated(state: SimState, request: web.Request) -> SimAccount | None:
    key = request.headers.get(API_KEY_HEADER)
    if key is not None:
        return state.by_key(EXCHANGE, key)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or token not in state.tokens:
        return None
    return state.accounts.get(state.tokens[token])


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The request body as a JSON object; an empty body is ``{}``, anything else None."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _filters(body: dict[str, Any]) -> tuple[str, frozenset[str] | None] | None:
    """(wallet venue, wanted assets upper-cased or None for all), or None if ill-typed."""
    wallet = body.get("walletId", EXCHANGE)
    assets = body.get("assets")
    if not isinstance(wallet, str):
        return None
    if assets is None:
        return wallet, None
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        return None
    return wallet, frozenset(a.upper() for a in assets)


def _entries(
    account: SimAccount, wallet: str, assets: frozenset[str] | None
) -> list[dict[str, object]]:
    return [
        _entry(account, asset, fields)
        for asset, fields in account.balances.get(wallet, {}).items()
        if assets is None or asset.upper() in assets
    ]


def _entry(account: SimAccount, asset: str, fields: AssetFields) -> dict[str, object]:
    entry: dict[str, object] = {"asset": asset}
    entry.update({wire: fields.get(metric, "0") for wire, metric in WIRE_METRICS.items()})
    entry.update({k: v for k, v in fields.items() if k not in METRICS})
    digest = hashlib.sha256(f"{account.name}/{asset}".encode()).hexdigest()
    entry["depositAddress"] = {asset.upper(): {"address": f"sim{digest[:30]}", "memo": None}}
    return entry


def _render_ok(wallet: str, assets: frozenset[str] | None) -> RenderOk:
    def render(account: SimAccount) -> web.Response:
        return json_text(200, json.dumps({"data": _entries(account, wallet, assets)}))

    return render


def _render_fault(wallet: str, assets: frozenset[str] | None) -> RenderFault:
    def render(fault: Fault, account: SimAccount) -> web.Response | None:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        match fault.kind:
            case FaultKind.AUTH:
                return _error(401, "Unauthorized")
            case FaultKind.THROTTLE:
                return _error(429, "ThrottlerException: Too Many Requests", headers)
            case FaultKind.REJECT:
                return _error(503, "Service Unavailable", headers)
            case FaultKind.STATUS:
                return _error(fault.status, _PHRASES.get(fault.status, "Error"), headers)
            case FaultKind.WRONG_TYPES:
                entries = _entries(account, wallet, assets) or [
                    _entry(account, asset, fields) for asset, fields in PLACEHOLDER_ASSETS.items()
                ]
                for entry in entries:
                    entry.update(dict.fromkeys(WIRE_METRICS, True))
                return json_text(200, json.dumps({"data": entries}))
            case _:
                return None

    return render


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_text(status, json.dumps({"statusCode": status, "message": message}), headers)
