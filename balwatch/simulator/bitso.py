"""Fake Bitso ``GET /api/v3/balance/``, checking requests the way Bitso does.

Authentication, in this order (codes from docs.bitso.com, Authentication Errors, HTTP 401):

1. no ``Authorization`` header: 0208 (authentication required);
2. not ``Bitso <key>:<nonce>:<signature>``, or a key no account holds: 0201 (check your
   credentials). From here on the request is counted for the key's account;
3. rate limit (below): HTTP 420, 0801;
4. nonce not 1 to 20 ASCII digits: 0206 (invalid nonce type);
5. signature not the lower-case hex HMAC-SHA256, keyed by the account's secret, of nonce,
   method, the raw path with its query, and the body (:func:`signature`): 0215 (incorrect
   request signature);
6. nonce not greater than the last one accepted for the key: 0207 (invalid nonce value). The
   docs split nonce errors into 0206 (type) and 0207 (value); a replayed or late nonce is a
   value error. Only a request that passes every check advances the key's last nonce.

Rate limit: ``state.rate_limits.get("bitso", (300, 60.0))`` requests per sliding window per
key (documented: 300 per minute per account). The request over it gets HTTP 420 with code
0801 and locks the key out for one window length: Bitso's lock-out is one minute against a
one-minute window, so an override such as ``(3, 0.5)`` shortens the lock-out alike. Requests
during the lock-out get the same 420 and do not count in the window. The limit is read on
every request, so a test may change ``state.rate_limits`` on a running simulator.

Rendering: ``{"success": true, "payload": {"balances": [...]}}`` with one entry per asset of
the account's ``bitso`` venue: ``currency`` lower-case, amounts as strings, as Bitso sends
them. available and locked default to "0"; total defaults to available + locked, added
exactly (an unparsable part is echoed as the total, so bad scenario data stays visible);
pending_deposit and pending_withdrawal default to "0". Metrics Bitso has no field for (hold,
aml_locked, referral, rate_usd) are not rendered; any other stored field is passed through
under its own name.

Faults in Bitso's own shape: THROTTLE -> 420 / 0801, AUTH -> 401 / 0201, STATUS -> that status
with Bitso's error body (0303 for 400, 0201 for 401, 0801 for 420, else 0101 unknown),
WRONG_TYPES -> 200 with every amount a JSON boolean. A fault's ``retry_after`` is sent as a
Retry-After header (Bitso's docs mention none). The rest use the generic forms.

The path, header and signature recipe are spelled here from Bitso's documentation, not
imported from the adapter: an adapter that drifts from the documented wire must fail
against this fake, not follow it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from decimal import Decimal, DecimalException
from typing import Final

from aiohttp import web

from balwatch.model import METRICS
from balwatch.money import exact_sum
from balwatch.simulator.respond import PLACEHOLDER_ASSETS, json_text, serve_balances
from balwatch.simulator.state import (
    AssetFields,
    Fault,
    FaultKind,
    SimAccount,
    SimState,
    SlidingWindow,
)

EXCHANGE: Final = "bitso"
BALANCE_PATH: Final = "/api/v3/balance/"
DEFAULT_LIMIT: Final = (300, 60.0)
_MESSAGES: Final = {
    "0101": "Unknown error",
    "0201": "Check your credentials",
    "0206": "Invalid nonce type",
    "0207": "Invalid nonce value",
    "0208": "Authentication is required to execute requested operation",
    "0215": "Incorrect request signature",
    "0303": "Required field missing",
    "0801": "You have hit the request rate-limit",
}
_STATUS_CODES: Final = {400: "0303", 401: "0201", 420: "0801"}
_NONCE_RE: Final = re.compile(r"[0-9]{1,20}")
_SIGNATURE_RE: Final = re.compile(r"[0-9a-f]{64}")
_AMOUNTS: Final = ("total", "available", "locked", "pending_deposit", "pending_withdrawal")


def error_response(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """Bitso's error envelope with the documented message for ``code``."""
    body = {"success": False, "error": {"code": code, "message": _MESSAGES[code]}}
    return json_text(status, json.dumps(body), headers)


def wire_row(asset: str, fields: AssetFields) -> dict[str, str]:
    """One ``balances`` entry as Bitso sends it, derived from the stored metrics."""
    available = fields.get("available", "0")
    locked = fields.get("locked", "0")
    row = {
        "currency": asset.lower(),
        "available": available,
        "locked": locked,
        "total": fields["total"] if "total" in fields else _sum(available, locked),
        "pending_deposit": fields.get("pending_deposit", "0"),
        "pending_withdrawal": fields.get("pending_withdrawal", "0"),
    }
    row.update({name: text for name, text in fields.items() if name not in METRICS})
    return row


def _sum(a: str, b: str) -> str:
    """``a + b`` as wire text, exact. An unparsable part comes back as is: bad scenario data
    must reach the adapter, not crash the fake."""
    for part in (a, b):
        try:
            Decimal(part)
        except DecimalException:
            return part
    try:
        return str(exact_sum(Decimal(a), Decimal(b)))
    except DecimalException:  # overflow, signalling NaN: echo what the scenario said
        return a


def _body(account: SimAccount, *, wrong_types: bool = False) -> str:
    rows: list[dict[str, str | bool]] = []
    assets = account.balances.get(account.exchange, {})
    if wrong_types and not assets:
        assets = PLACEHOLDER_ASSETS
    for asset, fields in assets.items():
        row: dict[str, str | bool] = dict(wire_row(asset, fields))
        if wrong_types:
            row.update(dict.fromkeys(_AMOUNTS, True))
        rows.append(row)
    return json.dumps({"success": True, "payload": {"balances": rows}})


def render_ok(account: SimAccount) -> web.Response:
    """The 200 answer with every asset of the account's ``bitso`` venue."""
    return json_text(200, _body(account))


def render_fault(fault: Fault, account: SimAccount) -> web.Response | None:
    """Faults Bitso answers in its own envelope; None leaves the rest to the generic forms."""
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    match fault.kind:
        case FaultKind.THROTTLE:
            return error_response(420, "0801", headers)
        case FaultKind.AUTH:
            return error_response(401, "0201")
        case FaultKind.STATUS:
            return error_response(fault.status, _STATUS_CODES.get(fault.status, "0101"), headers)
        case FaultKind.WRONG_TYPES:
            return json_text(200, _body(account, wrong_types=True))
        case _:
            return None


def signature(secret: str, nonce: str, method: str, request_path: str, body: str) -> str:
    """Bitso's documented signature: hex HMAC-SHA256 of ``nonce + METHOD + path + body``."""
    message = f"{nonce}{method}{request_path}{body}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _parse_authorization(header: str) -> tuple[str, str, str] | None:
    """(key, nonce, signature) from ``Bitso <key>:<nonce>:<signature>``, else None."""
    scheme, _, credentials = header.partition(" ")
    parts = credentials.split(":")
    if scheme != "Bitso" or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def routes(state: SimState) -> list[web.RouteDef]:
    window = SlidingWindow(*DEFAULT_LIMIT)
    locked_until: dict[str, float] = {}
    last_nonce: dict[str, int] = {}

    def within_limit(key: str) -> bool:
        window.limit, window.per_seconds = state.rate_limits.get(EXCHANGE, DEFAULT_LIMIT)
        now = state.clock()
        if key in locked_until and now < locked_until[key]:
            return False
        if window.allow(key, now):
            return True
        locked_until[key] = now + window.per_seconds
        return False

    async def balance(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if header is None:
            return error_response(401, "0208")
        parsed = _parse_authorization(header)
        account = None if parsed is None else state.by_key(EXCHANGE, parsed[0])
        if parsed is None or account is None or account.api_secret is None:
            return error_response(401, "0201")
        key, nonce, given = parsed
        state.record(account)
        if not within_limit(key):
            return error_response(420, "0801")
        if not _NONCE_RE.fullmatch(nonce):
            return error_response(401, "0206")
        expected = signature(
            account.api_secret, nonce, request.method, request.raw_path, await request.text()
        )
        if not (_SIGNATURE_RE.fullmatch(given) and hmac.compare_digest(expected, given)):
            return error_response(401, "0215")
        if key in last_nonce and int(nonce) <= last_nonce[key]:
            return error_response(401, "0207")
        last_nonce[key] = int(nonce)
        return await serve_balances(state, request, account, render_ok, render_fault)

    # ccxt asks without the trailing slash, and Bitso answers both.
    return [web.get(BALANCE_PATH, balance), web.get(BALANCE_PATH.rstrip("/"), balance)]
