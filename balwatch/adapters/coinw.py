"""CoinW spot: ``POST /api/v1/private?command=returnCompleteBalances`` with MD5 signing.

Wire facts (CoinW API, Get Full Spot Account Balance): ``api_key`` and ``sign`` travel in the
query string of a POST; errors arrive with HTTP 200 and a non-200 ``code`` in the body, so
the body's code is read before the HTTP status. Mapping: ``available``; locked = ``onOrders``;
total = available + onOrders (CoinW sends no total). Other numeric or text fields of an asset
are kept as extras.

The signed query string carries the key and the signature, so no message here quotes the URL
or the parameters; :func:`balwatch.adapters.http.send` leaves them out as well. An error
answer is quoted with the key, the secret and the sign masked, in case it echoes them: the
sign never changes for this command, so it is as good as the secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from decimal import Decimal
from itertools import repeat
from typing import Any, ClassVar, Final

from balwatch.adapters.base import Adapter, RateLimit
from balwatch.adapters.http import generic_status_error
from balwatch.adapters.wire import expect_code, expect_object, extras, quote, scalar_text
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import Balance, Metric
from balwatch.money import exact_sum, plain_amounts, required_amount
from balwatch.secret import Secret

SOURCE: Final = "coinw"
PATH: Final = "/api/v1/private"
COMMAND: Final = "returnCompleteBalances"
# Documented: 5 requests per 2 s per user for this endpoint.
RATE_LIMIT: Final = RateLimit(5, 2.0)
SUCCESS_CODE: Final = "200"

# Error codes from CoinW's error-code table, by what they mean for a poller.
RATE_LIMITED_CODE: Final = "29001"  # "API access frequently"
AUTH_CODES: Final = frozenset({"1003", "6000", "10006", "10007"})
PARAMETER_CODES: Final = frozenset({"-103", "-3", "10003"})
SYSTEM_CODES: Final = frozenset({"-200", "500"})

# Parameters the signature leaves out (CoinW's recipe).
_UNSIGNED: Final = frozenset({"command", "sign"})
# The amounts in the order _row unpacks them.
_AMOUNTS: Final = ("available", "onOrders")
# The fields this adapter maps; everything else an asset carries becomes an extra.
_MAPPED: Final = frozenset(_AMOUNTS)


def signature(params: Mapping[str, str], secret: str) -> str:
    """CoinW's ``sign``: upper-case hex MD5 of the sorted ``k=v`` pairs, then the secret.

    Every parameter except ``command`` and ``sign`` is signed, joined with ``&``, and
    ``&secret_key=<secret>`` is appended. Pure, so the simulator verifies with the very same
    recipe and a test pins it to the documented check vector.
    """
    pairs = [f"{name}={params[name]}" for name in sorted(params) if name not in _UNSIGNED]
    pairs.append(f"secret_key={secret}")
    # MD5 is CoinW's choice, not ours; the flag keeps it usable under FIPS-mode OpenSSL.
    digest = hashlib.md5("&".join(pairs).encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


def body_error(
    body: Any, *, retry_after: float | None = None, quote: Callable[[str], str] = quote
) -> SourceError | None:
    """The typed error a CoinW error body stands for, or None if it carries no known code.

    Unknown codes are left to the caller: under HTTP 200 :func:`code_error` names the code;
    under another status the generic status mapping is more telling. ``retry_after`` comes
    from a Retry-After header, if any; CoinW documents none, so a throttled poll waits out
    the documented window instead. ``quote`` quotes the answer's text, as in
    :func:`code_error`.
    """
    if not isinstance(body, dict):
        return None
    code = scalar_text(body.get("code"))
    if code is None:
        return None
    what = f"error code {code}: {_message(body, quote)}"
    if code == RATE_LIMITED_CODE:
        wait = RATE_LIMIT.per_seconds if retry_after is None else retry_after
        return RateLimited(SOURCE, what, retry_after=wait)
    if code in AUTH_CODES:
        return AuthError(SOURCE, what)
    if code in PARAMETER_CODES:
        return BadResponse(SOURCE, f"request refused as malformed, {what}")
    if code in SYSTEM_CODES:
        return SourceUnavailable(SOURCE, what)
    return None


def code_error(body: Any, quote: Callable[[str], str] = quote) -> BadResponse | None:
    """The error for an answer whose ``code`` is missing, not text or not 200, else None.

    ``quote`` quotes the answer's text: :meth:`~balwatch.adapters.http.Response.quote`
    where the answer is at hand.
    """
    top = expect_object(body, SOURCE, "response")
    if "code" not in top:
        return BadResponse(SOURCE, "response has no code", field="code")
    code = scalar_text(top["code"])
    if code is None:
        return BadResponse(SOURCE, "code is neither a string nor a number", field="code")
    if code == SUCCESS_CODE:
        return None
    return BadResponse(SOURCE, f"error code {quote(code)}: {_message(top, quote)}", field="code")


def parse_balances(body: Any, account: str) -> list[Balance]:
    """Every row of a ``returnCompleteBalances`` answer, or BadResponse naming asset and field.

    ``code`` must be 200 (as a string or number); ``data`` maps asset codes to
    ``{available, onOrders}``, both required since total is their sum.
    """
    error = code_error(body)
    if error is not None:
        raise error
    data = expect_object(body.get("data"), SOURCE, "data")
    plain = plain_amounts(data.values(), _AMOUNTS)
    rows: list[Balance] = []
    # Checked on the key, before the entry is read (not through wire.distinct): two codes
    # that differ only in case are the fault, whatever their entries hold.
    seen: set[str] = set()
    for (raw_asset, fields), amounts in zip(
        data.items(), repeat(None) if plain is None else plain, strict=False
    ):
        asset = expect_code(raw_asset, SOURCE, "data").upper()
        if asset in seen:
            raise BadResponse(SOURCE, "asset listed twice (codes differ only in case)", asset=asset)
        seen.add(asset)
        entry = expect_object(fields, SOURCE, "balance", asset=asset)
        rows.append(_row(account, raw_asset, asset, entry, amounts))
    return rows


def _row(
    account: str,
    raw_asset: str,
    asset: str,
    fields: dict[str, Any],
    plain: tuple[Decimal, ...] | None,
) -> Balance:
    """One asset as a row; ``plain``: its amounts from :func:`plain_amounts`, if it had them."""
    if plain is None:
        available = required_amount(fields, "available", source=SOURCE, asset=asset)
        on_orders = required_amount(fields, "onOrders", source=SOURCE, asset=asset)
    else:
        available, on_orders = plain
    # Positional, in Balance's field order: building a row this way costs half what
    # keywords do, which counts at 10,000 rows a round.
    return Balance(
        account,
        SOURCE,  # exchange
        SOURCE,  # venue
        asset,
        raw_asset,
        exact_sum(available, on_orders),  # total
        available,
        on_orders,  # locked
        None,  # pending_deposit
        None,  # pending_withdrawal
        None,  # hold
        None,  # aml_locked
        None,  # referral
        None,  # rate_usd
        extras(fields, _MAPPED),
    )


def _succeeded(body: Any) -> bool:
    return isinstance(body, dict) and scalar_text(body.get("code")) == SUCCESS_CODE


def _message(body: dict[str, Any], quote: Callable[[str], str]) -> str:
    msg = body.get("msg")
    return quote(msg) if isinstance(msg, str) else "no message"


class CoinwAdapter(Adapter):
    name = SOURCE
    default_base_url = "https://api.coinw.com"
    credential_sets = (frozenset({"api_key", "api_secret"}),)
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset({"total", "available", "locked"})
    rate_limit = RATE_LIMIT

    async def fetch(self) -> list[Balance]:
        query = self._signed_query()
        resp = await self.request("POST", PATH, carrying=(Secret(query["sign"]),), params=query)
        ok = 200 <= resp.status < 300
        if ok and _succeeded(body := resp.json_or_none()):
            return parse_balances(body, self.account.name)
        # An error. A 2xx must be JSON; another status may carry a proxy's page.
        body = resp.json() if ok else resp.json_or_none()
        error = (
            body_error(body, retry_after=resp.retry_after(), quote=resp.quote)
            or generic_status_error(resp)
            or code_error(body, resp.quote)
        )
        if error is None:  # a success after all: the first read found no JSON in it
            return parse_balances(body, self.account.name)
        raise error

    def _signed_query(self) -> dict[str, str]:
        """The query string: the only place the key and the secret are revealed."""
        credentials = self.account.credentials
        signed = {"api_key": credentials["api_key"].reveal()}
        signed["sign"] = signature(signed, credentials["api_secret"].reveal())
        return {"command": COMMAND, **signed}
