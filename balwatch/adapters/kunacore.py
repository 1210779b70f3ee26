"""Kuna Core: ``POST /v2/balance`` with an api-key or a JWT from ``/v2/auth/login``.

Wire to row (docs.kunacore.io, Get all wallet balances; one venue, named ``kunacore``):

- ``balance`` -> available. Required: an entry without it tells nothing about the asset.
- ``holdBalance`` -> hold (in processing), ``lockBalance`` -> aml_locked (blocked under AML
  policy), ``referralBalance`` -> referral. Missing or null: that metric is None.
- total = balance + holdBalance + lockBalance, added exactly (Kuna sends no total). If
  holdBalance or lockBalance is missing, total is None too: a sum over a part would understate
  the holdings and read as a drop. referralBalance stays out of total (docs/sources.md).
- locked, pending_deposit, pending_withdrawal, rate_usd: never reported, always None.
- ``depositAddress`` is not an amount and is ignored. Any other field is kept in ``extras`` as
  text when it is a string or a number (newer docs mention funds in settlement under a name we
  could not confirm), and never fails the poll. An asset listed twice is a bad response: which
  row is right cannot be told.

Auth, per account: header ``api-key``; or a JWT. For the JWT, ``POST /v2/auth/login`` with
header ``merchant_id`` and a JSON body holding the login and password (the login's field name
is unconfirmed: ``options.login_field``, ``login`` by default, ``email`` the other reading).
The token (``data.accessToken``) is cached on the adapter instance. Its lifetime is
undocumented, so a 401 from ``/v2/balance`` earns one fresh login and one retry; a second 401
is an AuthError. A refused login (any 4xx but 408/429, or a 2xx without a token) is an
AuthError: repeated bad logins can lock the merchant, so the scheduler must not retry fast.

Errors and rate limits are undocumented: non-2xx answers map generically. Credentials (api
key, merchant id, login, password, token) echoed in an error body are masked before the body
is quoted.
"""

from __future__ import annotations

from decimal import Decimal
from itertools import repeat
from typing import Any, ClassVar, Final, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict

from balwatch.adapters.base import AccountSpec, Adapter
from balwatch.adapters.http import Response, generic_status_error
from balwatch.adapters.wire import distinct, expect_code, expect_list, expect_object, extras
from balwatch.errors import AuthError, RateLimited, SourceUnavailable
from balwatch.model import Balance, Metric
from balwatch.money import exact_sum, optional_amount, plain_amounts, required_amount
from balwatch.secret import Secret

SOURCE: Final = "kunacore"
BALANCE_PATH: Final = "/v2/balance"
LOGIN_PATH: Final = "/v2/auth/login"
API_KEY_HEADER: Final = "api-key"
MERCHANT_HEADER: Final = "merchant_id"

LoginField = Literal["login", "email"]
# Both readings of the unconfirmed login field name; the fake service accepts either.
LOGIN_FIELDS: Final[tuple[LoginField, ...]] = ("login", "email")

# Wire amount field -> normalized metric (the fake service renders through the same table).
WIRE_METRICS: Final[dict[str, Metric]] = {
    "balance": "available",
    "holdBalance": "hold",
    "lockBalance": "aml_locked",
    "referralBalance": "referral",
}
# The amounts in the order _row unpacks them.
_AMOUNTS: Final = ("balance", "holdBalance", "lockBalance", "referralBalance")
_MAPPED: Final = frozenset({"asset", "depositAddress", *WIRE_METRICS})


class KunaCoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wallet_id: str | None = None
    assets: list[str] | None = None
    # The login request's field for the merchant login: the docs leave its name unconfirmed.
    login_field: LoginField = "login"


def balance_body(options: KunaCoreOptions) -> dict[str, object]:
    """The JSON body of ``/v2/balance``: the wallet and asset filters, each only when set."""
    body: dict[str, object] = {}
    if options.wallet_id is not None:
        body["walletId"] = options.wallet_id
    if options.assets is not None:
        body["assets"] = list(options.assets)
    return body


def login_body(login: str, password: str, *, field: LoginField = "login") -> dict[str, str]:
    """The JSON body of ``/v2/auth/login``: the only place the revealed password goes."""
    return {field: login, "password": password}


def token_from_login(resp: Response) -> str:
    """The access token from a login answer, or the typed error for a failed login."""
    if 200 <= resp.status < 300:
        body = resp.json_or_none()
        data = body.get("data") if isinstance(body, dict) else None
        token = data.get("accessToken") if isinstance(data, dict) else None
        if isinstance(token, str) and token:
            return token
        # The body is not quoted: it may hold other tokens.
        raise AuthError(resp.source, f"login answered HTTP {resp.status} without data.accessToken")
    error = generic_status_error(resp)
    if isinstance(error, RateLimited | SourceUnavailable):
        raise error
    raise AuthError(resp.source, f"login refused: HTTP {resp.status}: {resp.snippet()}")


def parse_balances(body: Any, account: str) -> list[Balance]:
    """Every row of a ``/v2/balance`` answer, or BadResponse naming asset and field."""
    data = expect_list(expect_object(body, SOURCE, "response").get("data"), SOURCE, "data")
    plain = plain_amounts(data, _AMOUNTS)
    return distinct(
        map(_row, data, repeat(account), repeat(None) if plain is None else plain),
        SOURCE,
        message="asset listed twice",
        field="asset",
    )


def _row(entry: Any, account: str, plain: tuple[Decimal, ...] | None) -> Balance:
    """One entry as a row; ``plain``: its amounts from :func:`plain_amounts`, if it had them."""
    item = expect_object(entry, SOURCE, "data item")
    raw_asset = expect_code(item.get("asset"), SOURCE, "asset")
    asset = raw_asset.upper()
    if plain is None:
        available = required_amount(item, "balance", source=SOURCE, asset=asset)
        hold = optional_amount(item, "holdBalance", source=SOURCE, asset=asset)
        aml_locked = optional_amount(item, "lockBalance", source=SOURCE, asset=asset)
        referral = optional_amount(item, "referralBalance", source=SOURCE, asset=asset)
    else:
        available, hold, aml_locked, referral = plain
    total = None if hold is None or aml_locked is None else exact_sum(available, hold, aml_locked)
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
        None,  # locked
        None,  # pending_deposit
        None,  # pending_withdrawal
        hold,
        aml_locked,
        referral,
        None,  # rate_usd
        extras(item, _MAPPED),
    )


class KunaCoreAdapter(Adapter):
    name = SOURCE
    default_base_url = None  # not published
    credential_sets = (frozenset({"api_key"}), frozenset({"merchant_id", "login", "password"}))
    options_model = KunaCoreOptions
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "hold", "aml_locked", "referral"}
    )

    def __init__(self, account: AccountSpec, session: aiohttp.ClientSession) -> None:
        super().__init__(account, session)
        options = account.options
        if not isinstance(options, KunaCoreOptions):
            raise TypeError(f"{self.name} needs KunaCoreOptions, got {type(options).__name__}")
        self._options = options
        self._token: Secret | None = None

    async def fetch(self) -> list[Balance]:
        credentials = self.account.credentials
        if "api_key" in credentials:
            resp = await self._post_balance({API_KEY_HEADER: credentials["api_key"].reveal()})
        else:
            resp = await self._post_balance_with_token()
        error = generic_status_error(resp)
        if isinstance(error, AuthError):
            self._token = None  # refused: the next poll logs in afresh
        if error is not None:
            raise error
        return parse_balances(resp.json(), self.account.name)

    async def _post_balance_with_token(self) -> Response:
        if self._token is None:
            self._token = await self._login()
        resp = await self._post_balance(self._bearer(self._token), self._token)
        if resp.status != 401:
            return resp
        # The token may have expired (its lifetime is undocumented): one login, one retry.
        self._token = None  # stale either way, even if this login fails
        self._token = await self._login()
        return await self._post_balance(self._bearer(self._token), self._token)

    async def _login(self) -> Secret:
        credentials = self.account.credentials
        resp = await self.request(
            "POST",
            LOGIN_PATH,
            headers={MERCHANT_HEADER: credentials["merchant_id"].reveal()},
            json_body=login_body(
                credentials["login"].reveal(),
                credentials["password"].reveal(),
                field=self._options.login_field,
            ),
        )
        return Secret(token_from_login(resp))

    async def _post_balance(self, headers: dict[str, str], token: Secret | None = None) -> Response:
        return await self.request(
            "POST",
            BALANCE_PATH,
            carrying=() if token is None else (token,),
            headers=headers,
            json_body=balance_body(self._options),
        )

    @staticmethod
    def _bearer(token: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {token.reveal()}"}
