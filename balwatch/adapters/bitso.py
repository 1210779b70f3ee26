"""Bitso: ``GET /api/v3/balance/`` signed with HMAC-SHA256 (docs.bitso.com, Create signed requests).

Wire format (docs.bitso.com, Get Account Balance)::

    {"success": true, "payload": {"balances": [{"currency": "btc", "total": "1.5",
      "locked": "0.3", "available": "1.2", "pending_deposit": "0", "pending_withdrawal": "0"}]}}

Mapping: asset = ``currency`` upper-cased (raw_asset keeps it); the five amounts map by name.
``total``, ``available`` and ``locked`` are required: a row without them means Bitso answered
something else. The pending amounts are None when absent (Bitso always sends them today; a
future answer without them should not fail every poll). No consistency check between the
amounts: the docs' own sample has locked > total. Other string and number fields are kept in
``extras`` as text; an asset listed twice is a bad response.

Auth: header ``Authorization: Bitso <key>:<nonce>:<signature>`` (:func:`authorization`,
:func:`sign`). Bitso rejects a nonce not greater than the last one it accepted for the key
(error 0207), judged in arrival order. Bitso counts per key, not per adapter: two accounts
may share a key and an adapter may be rebuilt, so nonces come from the process-wide
:data:`NONCES`, keyed by the key's fingerprint. Each request holds that key's lock until its
answer is in, so concurrent polls with one key reach Bitso in nonce order. A signed request
must never be resent as is (Bitso refuses the replayed nonce with 0207): use a session from
:func:`~balwatch.adapters.http.new_session`, which turns off aiohttp's silent resend.

Errors: ``{"success": false, "error": {"code": "0201", "message": ...}}``, code a string or a
number. HTTP 401 -> AuthError; 420 (throttling: 0801, 0802) -> RateLimited, retry after the
Retry-After header or else the documented one-minute lock-out; 400 -> BadResponse. A
``success: false`` on a 2xx maps by the code's category: 02 auth, 08 throttling, 01 unknown
(SourceUnavailable), anything else BadResponse. Other statuses map generically. Messages quote
Bitso's code and message, with the key or secret masked should a server ever echo them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from itertools import repeat
from typing import Any, ClassVar, Final

from balwatch.adapters.base import Adapter, RateLimit
from balwatch.adapters.http import Response, generic_status_error
from balwatch.adapters.wire import distinct, expect_code, expect_list, expect_object, extras
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import Balance, Metric
from balwatch.money import optional_amount, plain_amounts, required_amount
from balwatch.secret import Secret

SOURCE: Final = "bitso"
BALANCE_PATH: Final = "/api/v3/balance/"
# Documented: over the limit, the account is locked out for one minute.
LOCKOUT_SECONDS: Final = 60.0
# HTTP statuses Bitso gives an error category of its own (the code's first two digits).
_STATUS_CATEGORY: Final = {401: "02", 420: "08", 400: "03"}
_CODE_RE: Final = re.compile(r"[0-9]{1,4}")
# The amounts in the order _row unpacks them.
_AMOUNTS: Final = ("total", "available", "locked", "pending_deposit", "pending_withdrawal")
_MAPPED: Final = frozenset({"currency", *_AMOUNTS})


def sign(secret: str, nonce: str, method: str, request_path: str, body: str = "") -> str:
    """Lower-case hex HMAC-SHA256, keyed by the secret, of ``nonce + METHOD + path + body``.

    ``request_path`` is the path exactly as requested, query included; ``body`` is empty for
    a GET. The simulator verifies with this same function.
    """
    message = f"{nonce}{method.upper()}{request_path}{body}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def authorization(
    api_key: Secret, api_secret: Secret, nonce: int, method: str, request_path: str
) -> str:
    """The ``Authorization`` header value for one request: the only place credentials open."""
    signature = sign(api_secret.reveal(), str(nonce), method, request_path)
    return f"Bitso {api_key.reveal()}:{nonce}:{signature}"


class NonceSource:
    """Millisecond-timestamp nonces, strictly increasing per key.

    Strict even when the clock steps back or two requests share a millisecond: a nonce is
    never below the last one issued for the key plus one.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last: dict[str, int] = {}
        # Locks are bound to an event loop: one set per loop (tests run one loop each).
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def next(self, key_id: str) -> int:
        nonce = max(int(self._clock() * 1000), self._last.get(key_id, 0) + 1)
        self._last[key_id] = nonce
        return nonce

    @contextlib.asynccontextmanager
    async def reserve(self, key_id: str) -> AsyncIterator[int]:
        """The next nonce for ``key_id``, holding the key's lock until the block ends.

        Send the request inside the block: requests with one key then go out one at a time,
        in nonce order, so none arrives after a later nonce and gets refused.
        """
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        async with locks.setdefault(key_id, asyncio.Lock()):
            yield self.next(key_id)


# Shared by every Bitso adapter in the process: Bitso counts nonces per key, not per poll.
NONCES: Final = NonceSource()


@dataclasses.dataclass(frozen=True, slots=True)
class ApiError:
    """Bitso's error object; ``code`` normalized to four digits (it may arrive as a number),
    ``message`` quoted as :meth:`~balwatch.adapters.http.Response.quote` does."""

    code: str | None
    message: str | None

    @property
    def category(self) -> str | None:
        return None if self.code is None else self.code[:2]

    def __str__(self) -> str:
        return f"Bitso error {self.code or '?'}: {self.message or 'no message'}"


def api_error(resp: Response, body: Any) -> ApiError | None:
    """The error of a ``{"success": false, "error": {...}}`` body; None for any other body.

    ``resp`` is the answer ``body`` was read from: its message is quoted from there.
    """
    if not isinstance(body, dict) or body.get("success") is not False:
        return None
    error = body.get("error")
    if not isinstance(error, dict):
        return ApiError(None, None)
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code) if 0 <= code < 10_000 else None
    message = error.get("message")
    return ApiError(
        code.zfill(4) if isinstance(code, str) and _CODE_RE.fullmatch(code) else None,
        resp.quote(message) if isinstance(message, str) else None,
    )


def error_for(resp: Response, body: Any) -> SourceError:
    """The typed error for a Bitso answer that carries no balances (``body``: its JSON or None)."""
    api = api_error(resp, body)
    category = _STATUS_CATEGORY.get(resp.status)
    if category is None:
        generic = generic_status_error(resp)
        if generic is not None:
            return generic
        category = None if api is None else api.category
    detail = f"HTTP {resp.status}: {resp.snippet() if api is None else api}"
    if category == "02":
        return AuthError(resp.source, detail)
    if category == "08":
        retry_after = resp.retry_after()
        return RateLimited(
            resp.source, detail, retry_after=LOCKOUT_SECONDS if retry_after is None else retry_after
        )
    if category == "01":
        return SourceUnavailable(resp.source, detail)
    return BadResponse(resp.source, detail)


def parse_balances(body: Any, account: str) -> list[Balance]:
    """Every row of a ``/api/v3/balance/`` answer, or BadResponse naming asset and field."""
    root = expect_object(body, SOURCE, "response")
    if root.get("success") is not True:
        raise BadResponse(SOURCE, "response is not a success", field="success")
    payload = expect_object(root.get("payload"), SOURCE, "payload")
    entries = expect_list(payload.get("balances"), SOURCE, "payload.balances")
    plain = plain_amounts(entries, _AMOUNTS)
    return distinct(
        map(_row, entries, repeat(account), repeat(None) if plain is None else plain),
        SOURCE,
        message="currency listed twice",
        field="currency",
    )


def _row(entry: Any, account: str, plain: tuple[Decimal, ...] | None) -> Balance:
    """One entry as a row; ``plain``: its amounts from :func:`plain_amounts`, if it had them."""
    item = expect_object(entry, SOURCE, "balance entry")
    raw_asset = expect_code(item.get("currency"), SOURCE, "currency")
    asset = raw_asset.upper()
    if plain is None:
        total = required_amount(item, "total", source=SOURCE, asset=asset)
        available = required_amount(item, "available", source=SOURCE, asset=asset)
        locked = required_amount(item, "locked", source=SOURCE, asset=asset)
        pending_deposit = optional_amount(item, "pending_deposit", source=SOURCE, asset=asset)
        pending_withdrawal = optional_amount(item, "pending_withdrawal", source=SOURCE, asset=asset)
    else:
        total, available, locked, pending_deposit, pending_withdrawal = plain
    # Positional, in Balance's field order: building a row this way costs half what
    # keywords do, which counts at 10,000 rows a round.
    return Balance(
        account,
        SOURCE,  # exchange
        SOURCE,  # venue
        asset,
        raw_asset,
        total,
        available,
        locked,
        pending_deposit,
        pending_withdrawal,
        None,  # hold
        None,  # aml_locked
        None,  # referral
        None,  # rate_usd
        extras(item, _MAPPED),
    )


class BitsoAdapter(Adapter):
    name = SOURCE
    default_base_url = "https://api.bitso.com"
    credential_sets = (frozenset({"api_key", "api_secret"}),)
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "locked", "pending_deposit", "pending_withdrawal"}
    )
    # Documented: 300/min per account; over it locks the account out.
    rate_limit = RateLimit(300, 60.0)

    async def fetch(self) -> list[Balance]:
        key = self.account.credentials["api_key"]
        secret = self.account.credentials["api_secret"]
        async with NONCES.reserve(key.fingerprint()) as nonce:
            resp = await self.request(
                "GET",
                BALANCE_PATH,
                headers={"Authorization": authorization(key, secret, nonce, "GET", BALANCE_PATH)},
            )
        if 200 <= resp.status < 300:
            body = resp.json()
            if api_error(resp, body) is None:
                return parse_balances(body, self.account.name)
        raise error_for(resp, resp.json_or_none())
