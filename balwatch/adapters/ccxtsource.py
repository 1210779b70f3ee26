"""ccxt: any exchange that ccxt's async API supports, as ``exchange: ccxt``, ``options: {id: ...}``.

ccxt is an optional extra (``pip install 'balwatch[ccxt]'``), imported only when a ccxt account
or price source is configured: importing it loads every exchange module it has, which costs
tens of megabytes (docs/sources.md has the figures).

One ccxt exchange object per account, made on its first poll and kept (it holds the
exchange's nonces and, with ``load_markets: true``, its markets). How balwatch drives it:

* **Exact amounts.** ccxt's JSON parser reads numbers as floats; balwatch gives each object a
  parser that hands every JSON number with a fraction or exponent over as its text, as ccxt's
  JavaScript build does (``quoteJsonNumbers``), and sets ``number = str``, so the amounts
  ccxt returns are the wire text (or ccxt's exact string arithmetic on it, e.g. total = free +
  used). Every exchange module reads balance amounts with ``safe_string``, so no amount passes
  through float. An amount that reaches balwatch as anything but text is refused.
* **Mapping.** free -> available, used -> locked, total -> total; everything else null.
  venue = the ccxt id; asset = ccxt's currency code upper-cased (raw_asset keeps it). A
  currency with no amount at all, or an amount that is not a finite non-negative decimal, is a
  bad response naming asset and field; so is an answer that was not JSON (ccxt itself would
  read such an answer as an empty account). Never a partial result.
* **Errors.** ``AuthenticationError`` (PermissionDenied, AccountSuspended, ...) -> auth;
  ``DDoSProtection``/``RateLimitExceeded`` -> rate_limited, with the answer's Retry-After;
  ``NetworkError`` (RequestTimeout, ExchangeNotAvailable, OnMaintenance, InvalidNonce) and
  the other ``OperationFailed`` errors, which ccxt raises for what retrying may mend (Binance
  -1001 "internal error"), -> unavailable; anything else -> bad_response. Except where ccxt
  knows no better than its generic ``ExchangeError`` and the HTTP status does: 401/403 auth,
  420/429 rate_limited (Bitso throttles with 420 and a code ccxt does not map), 408/5xx
  unavailable.
  ccxt's messages can hold the request URL, and so a signed query, and whatever the server
  echoed: balwatch quotes them with every URL cut out and every credential masked. ccxt's
  logger (which logs request headers, the API key among them, at debug level) is silenced
  per object.
* **Rate limits.** ccxt's own limiter is in charge: it knows each exchange's documented limit
  and each endpoint's weight, which balwatch cannot, and a poll may be several requests.
  Accounts that share a key share one ccxt limiter, as balwatch's own limiter is shared per
  key. balwatch's limiter is not used for ccxt accounts (no ``rate_limit``), so the two never
  both delay a request. When the exchange answers with a rate limit and a Retry-After, every
  account on that key stops asking until then (a poll in that time fails as rate_limited
  without a request: Binance bans an IP that keeps asking after a 429), and the scheduler
  waits at least that long before the account's next poll.
* **URLs.** ``base_url`` replaces the scheme, host and port of every API URL of the exchange,
  keeping their paths (any path of ``base_url`` goes in front): how tests and self-hosted
  proxies point ccxt elsewhere. Without it, ccxt's own URLs.
* **Markets.** Off by default: most exchanges' ``fetch_balance`` does not need them, and
  loading them costs requests and memory. ``load_markets: true`` lets ccxt load markets and
  currencies once, on the first poll, for exchanges that need them or to get ccxt's unified
  currency codes.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
import time
import weakref
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar, Final
from urllib.parse import quote as url_quote
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from balwatch.adapters.base import AccountSpec, Adapter
from balwatch.adapters.wire import distinct, quote
from balwatch.backoff import parse_retry_after
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import Balance, Metric
from balwatch.money import parse_amount
from balwatch.secret import Secret

SOURCE: Final = "ccxt"
INSTALL_HINT: Final = "pip install 'balwatch[ccxt]'"
# balwatch's credential key -> ccxt's attribute.
CREDENTIALS: Final[Mapping[str, str]] = {
    "api_key": "apiKey",
    "api_secret": "secret",
    "password": "password",
    "uid": "uid",
}
# ccxt's balance maps -> balwatch's metric.
AMOUNTS: Final[Mapping[str, Metric]] = {"free": "available", "used": "locked", "total": "total"}
_URL: Final = re.compile(r"[a-z][a-z0-9+.-]*://\S*", re.IGNORECASE)
# ccxt's logger writes request headers (API keys) at debug level: nothing of it may get out.
_SILENT: Final = logging.getLogger("balwatch.ccxt.silenced")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False
_SILENT.disabled = True
# HTTP statuses that say more than ccxt's generic ExchangeError (see the module docstring).
_STATUS_KINDS: Final[Mapping[int, type[SourceError]]] = {
    401: AuthError,
    403: AuthError,
    420: RateLimited,
    429: RateLimited,
    408: SourceUnavailable,
}
# Secrets shorter than this are not masked in quoted text (as in the log redactor): masking
# a two-letter value would garble every message, and no real credential is that short.
_MASK_MIN: Final = 4


def load_ccxt() -> ModuleType:
    """``ccxt.async_support``; ImportError (naming the extra) when ccxt is not installed."""
    try:
        import ccxt.async_support  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise ImportError(f"ccxt is not installed; {INSTALL_HINT}") from None
    module: ModuleType = ccxt.async_support
    return module


def exchange_problem(exchange_id: str, needs: tuple[str, ...]) -> str | None:
    """Why ``exchange_id`` cannot be used (ccxt missing, unknown id, a capability missing)."""
    try:
        ccxt = load_ccxt()
    except ImportError:
        return f"exchange ccxt needs the optional ccxt package: {INSTALL_HINT}"
    ids: list[str] = list(ccxt.exchanges)
    if exchange_id not in ids:
        close = difflib.get_close_matches(exchange_id, ids, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see ccxt.exchanges"
        return f"ccxt has no exchange {exchange_id!r}{hint}"
    has = getattr(ccxt, exchange_id)().has
    missing = [name for name in needs if not has.get(name)]
    if len(missing) == len(needs):
        return f"ccxt's {exchange_id} has no {' or '.join(needs)}"
    return None


def _exchange_id(value: str, needs: tuple[str, ...]) -> str:
    problem = exchange_problem(value, needs)
    if problem is not None:
        raise ValueError(problem)  # the config loader shows it at the id, with file:line:col
    return value


class CcxtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="ccxt exchange id, such as binance, kraken, okx")
    balance_params: dict[str, Any] = Field(
        default_factory=dict, description="extra parameters of fetch_balance, e.g. {type: funding}"
    )
    ccxt_options: dict[str, Any] = Field(
        default_factory=dict, description="merged into the ccxt exchange's own options"
    )
    load_markets: bool = Field(
        default=False, description="let ccxt load markets and currencies on the first poll"
    )

    @field_validator("id")
    @classmethod
    def _known(cls, value: str) -> str:
        return _exchange_id(value, ("fetchBalance",))


def rebase_urls(urls: Any, base_url: str) -> Any:
    """``urls`` (ccxt's ``urls['api']``: text, or mappings and lists of it) with the scheme,
    host and port of every URL replaced by ``base_url``'s, paths kept (after its own path)."""
    base = urlsplit(base_url)
    prefix = base.path.rstrip("/")
    if isinstance(urls, str):
        parts = urlsplit(urls)
        if not parts.scheme or not parts.netloc:
            return urls
        return urlunsplit((base.scheme, base.netloc, prefix + parts.path, parts.query, ""))
    if isinstance(urls, dict):
        return {key: rebase_urls(value, base_url) for key, value in urls.items()}
    if isinstance(urls, list):
        return [rebase_urls(value, base_url) for value in urls]
    return urls


def _json_numbers_as_text(text: str) -> Any:
    """ccxt's JSON parser for balwatch: numbers with a fraction or exponent stay text."""
    return json.loads(text, parse_float=str, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    # ccxt catches ValueError and treats the body as text, which balwatch then refuses.
    raise ValueError(f"{name} is not an amount")


class _StatusRecorder:
    """ccxt's ``on_rest_response`` hook, keeping the last HTTP status (ccxt keeps only the
    headers) as ``exchange.balwatch_status``."""

    def __init__(self, exchange: Any) -> None:
        self._exchange: Any = weakref.proxy(exchange)

    def __call__(self, status: int, reason: str, url: str, method: str, *rest: Any) -> str:
        self._exchange.balwatch_status = status
        body: str = rest[1]  # (response headers, body, request headers, request body)
        return body.strip()


class _KeyState:
    """What the accounts on one (exchange, key) share: ccxt's limiter, and a hold-off."""

    def __init__(self, throttler: Any) -> None:
        self.throttler = throttler
        self.hold_until = 0.0  # monotonic seconds: the exchange asked to wait until then

    def hold(self, seconds: float) -> None:
        self.hold_until = max(self.hold_until, time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.hold_until - time.monotonic())


class _KeyStates:
    """One :class:`_KeyState` per (exchange, key), per event loop (ccxt's limiter is bound
    to one; tests run one loop each)."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, _KeyState]
        ] = weakref.WeakKeyDictionary()

    def join(self, key: str, exchange: Any) -> _KeyState:
        """The key's state; ``exchange`` then paces its requests with the key's limiter."""
        states = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        state = states.setdefault(key, _KeyState(exchange.throttler))
        exchange.throttler = state.throttler
        return state


_KEYS: Final = _KeyStates()


def new_exchange(
    exchange_id: str,
    *,
    session: aiohttp.ClientSession,
    timeout: float,
    base_url: str = "",
    credentials: Mapping[str, Secret] | None = None,
    ccxt_options: Mapping[str, Any] | None = None,
    load_markets: bool = False,
) -> Any:
    """A ccxt exchange object set up the balwatch way (see the module docstring).

    ``session`` is borrowed: the object never closes it, so it needs no ``close()`` either.
    """
    ccxt = load_ccxt()
    config: dict[str, Any] = {
        "session": session,
        "timeout": max(1, int(timeout * 1000)),
        "enableRateLimit": True,
        "options": dict(ccxt_options or {}),
    }
    for key, secret in (credentials or {}).items():
        config[CREDENTIALS[key]] = secret.reveal()
    exchange = getattr(ccxt, exchange_id)(config)
    exchange.logger = _SILENT
    exchange.verbose = False
    exchange.number = str
    exchange.on_json_response = _json_numbers_as_text
    exchange.on_rest_response = _StatusRecorder(exchange)
    if base_url:
        exchange.urls["api"] = rebase_urls(exchange.urls["api"], base_url)
    if not load_markets:
        exchange.set_markets({}, {})

        async def no_markets(reload: bool = False, params: Any = None) -> Any:
            return exchange.markets

        exchange.load_markets = no_markets
    return exchange


def masked_text(text: str, secrets: Any) -> str:
    """``text`` on one line, URLs cut out, credentials (as written, URL- or JSON-escaped)
    masked, quoted and cut short: fit for an error message."""
    text = _URL.sub("<url>", text)
    for secret in secrets:
        value = secret.reveal()
        if len(value) < _MASK_MIN:
            continue
        for form in {value, url_quote(value, safe=""), json.dumps(value)[1:-1]}:
            text = text.replace(form, "***")
    return quote(" ".join(text.split()))


def source_error(exc: BaseException, source: str, secrets: Any, exchange: Any) -> SourceError:
    """The balwatch error for an exception out of a call on ``exchange`` (module docstring)."""
    ccxt = load_ccxt()
    detail = f"{type(exc).__name__}: {masked_text(str(exc), secrets)}"
    kind: type[SourceError] = BadResponse
    if isinstance(exc, ccxt.AuthenticationError):
        kind = AuthError
    elif isinstance(exc, ccxt.DDoSProtection):  # RateLimitExceeded is one
        kind = RateLimited
    elif isinstance(exc, ccxt.OperationFailed) and not isinstance(exc, ccxt.BadResponse):
        kind = SourceUnavailable  # NetworkError and the rest ccxt calls worth retrying
    elif type(exc) is ccxt.ExchangeError:
        status = getattr(exchange, "balwatch_status", None)
        if isinstance(status, int):
            kind = _STATUS_KINDS.get(status, SourceUnavailable if status >= 500 else BadResponse)
    elif not isinstance(exc, ccxt.BaseError):
        # A ccxt module tripping over an answer of a shape it did not expect.
        detail = f"ccxt could not read the answer ({type(exc).__name__})"
    if kind is RateLimited:
        headers = exchange.last_response_headers or {}
        retry_after = next(
            (parse_retry_after(v) for k, v in headers.items() if k.lower() == "retry-after"),
            None,
        )
        return RateLimited(source, detail, retry_after=retry_after)
    return kind(source, detail)


def parse_balance(balance: Any, account: str, venue: str, source: str) -> list[Balance]:
    """The rows of a ccxt balance structure, or BadResponse naming asset and field."""
    if not isinstance(balance, dict) or not isinstance(balance.get("info"), dict | list):
        raise BadResponse(source, "the exchange's answer was not a JSON object or list")
    maps: dict[str, dict[Any, Any]] = {}
    for field in AMOUNTS:
        found = balance.get(field, {})
        if not isinstance(found, dict):
            raise BadResponse(source, f"ccxt's {field} is not a mapping", field=field)
        maps[field] = found
    codes = dict.fromkeys(code for found in maps.values() for code in found)
    rows = []
    for code in codes:
        if not isinstance(code, str) or not code:
            raise BadResponse(source, f"currency code {quote(str(code))} is not text")
        asset = code.upper()
        amounts = {field: maps[field].get(code) for field in AMOUNTS}
        if all(value is None for value in amounts.values()):
            raise BadResponse(source, "no amount for this currency", asset=asset, field="total")
        values = {
            AMOUNTS[field]: None
            if value is None
            else parse_amount(value, source=source, asset=asset, field=field)
            for field, value in amounts.items()
        }
        rows.append(
            Balance(
                account=account,
                exchange=SOURCE,
                venue=venue,
                asset=asset,
                raw_asset=code,
                total=values["total"],
                available=values["available"],
                locked=values["locked"],
            )
        )
    return distinct(rows, source, message="currency listed twice", field="currency")


class CcxtAdapter(Adapter):
    name = SOURCE
    default_base_url = ""  # empty: the exchange's own URLs, which ccxt knows
    credential_sets = ()  # which keys depends on the exchange: see check_credentials
    options_model = CcxtOptions
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(AMOUNTS.values())
    # ccxt's limiter is in charge (module docstring): no balwatch limiter on top of it.
    rate_limit = None

    def __init__(self, account: AccountSpec, session: aiohttp.ClientSession) -> None:
        super().__init__(account, session)
        options = account.options
        assert isinstance(options, CcxtOptions), "validated by the config"
        self.options = options
        self.source = f"{SOURCE}:{options.id}"
        key = account.credentials.get("api_key")
        self._key = f"{options.id}:{key.fingerprint() if key else account.name}"
        self._exchange: Any = None
        self._shared: _KeyState | None = None

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset(CREDENTIALS)

    @classmethod
    def check_credentials(
        cls, credentials: Mapping[str, Secret], options: BaseModel
    ) -> list[tuple[tuple[str, ...], str]]:
        assert isinstance(options, CcxtOptions)
        known = ", ".join(CREDENTIALS)
        problems: list[tuple[tuple[str, ...], str]] = [
            (("credentials", key), f"unknown credential {key!r} for ccxt; expected: {known}")
            for key in credentials
            if key not in CREDENTIALS
        ]
        if problems:  # a misspelt key: that is the problem, not the key it left missing
            return problems
        required = [
            name
            for name, needed in getattr(load_ccxt(), options.id)().requiredCredentials.items()
            if needed
        ]
        ours = {ccxt_name: key for key, ccxt_name in CREDENTIALS.items()}
        unsupported = [name for name in required if name not in ours]
        if unsupported:
            problems.append(
                (
                    ("options", "id"),
                    f"ccxt's {options.id} needs {', '.join(unsupported)}, which balwatch "
                    f"does not take (credentials: {known})",
                )
            )
        missing = [ours[n] for n in required if n in ours and ours[n] not in credentials]
        if missing:
            problems.append(
                (
                    ("credentials",),
                    f"ccxt's {options.id} needs credentials {', '.join(missing)}; missing here",
                )
            )
        return problems

    def _build(self) -> tuple[Any, _KeyState]:
        exchange = new_exchange(
            self.options.id,
            session=self.session,
            timeout=self.account.timeout,
            base_url=self.account.base_url,
            credentials=self.account.credentials,
            ccxt_options=self.options.ccxt_options,
            load_markets=self.options.load_markets,
        )
        return exchange, _KEYS.join(self._key, exchange)

    async def fetch(self) -> list[Balance]:
        if self._exchange is None or self._shared is None:
            self._exchange, self._shared = self._build()
        exchange, shared = self._exchange, self._shared
        held = shared.remaining()
        if held:
            raise RateLimited(
                self.source,
                f"the exchange asked this key to wait; {held:.0f}s left, not asking",
                retry_after=held,
            )
        exchange.last_response_headers = None
        exchange.balwatch_status = None
        try:
            balance = await exchange.fetch_balance(dict(self.options.balance_params))
        except Exception as exc:  # every failure of a ccxt call becomes a typed error
            error = source_error(exc, self.source, self.account.credentials.values(), exchange)
            if isinstance(error, RateLimited) and error.retry_after:
                shared.hold(error.retry_after)
            raise error from None
        return parse_balance(balance, self.account.name, self.options.id, self.source)
