"""What the fake exchanges hold: accounts, their balances, queued faults, request counts.

Balances are kept in the normalized metric names of the balance row (as wire text);
each source module renders them in its own wire format. That way one scenario can
drain "available" on every source alike.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

AssetFields = dict[str, str]
# venue -> asset -> field -> wire text. Single-venue sources use their own name as venue.
VenueBalances = dict[str, dict[str, AssetFields]]


class FaultKind(StrEnum):
    STATUS = "status"  # a bare HTTP status (500, 503, 429 ...), source-shaped body where known
    THROTTLE = "throttle"  # the source's own over-limit answer (Bitso 420, CoinW 29001 ...)
    REJECT = "reject"  # CoinAPI 490 MESSAGE_REJECT; a 503 elsewhere
    AUTH = "auth"  # the source's own authentication failure
    TIMEOUT = "timeout"  # never answer (until the client gives up)
    RESET = "reset"  # drop the connection without a response
    MALFORMED_JSON = "malformed_json"  # 200 with a body that is not JSON
    HTML = "html"  # 502 HTML error page from a proxy
    TRUNCATED = "truncated"  # 200 with the first half of a good body
    WRONG_TYPES = "wrong_types"  # 200, right shape, amounts of the wrong JSON type
    RAW = "raw"  # exactly the given status, body and content type


@dataclass
class Fault:
    kind: FaultKind
    times: int | None = 1  # None: until cleared
    status: int = 500
    body: str = ""
    content_type: str = "application/json"
    retry_after: str | None = None


@dataclass
class SimAccount:
    name: str
    exchange: str
    api_key: str | None = None
    api_secret: str | None = None
    # Kuna Core JWT login; the issued tokens are valid until expired through control.
    merchant_id: str | None = None
    login: str | None = None
    password: str | None = None
    balances: VenueBalances = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    delay: float = 0.0
    requests: int = 0
    # Monotonic arrival times of every request, so tests can check rate limits were kept.
    request_times: list[float] = field(default_factory=list)

    def take_fault(self) -> Fault | None:
        """The fault for this request, if any; consumes one of its ``times``."""
        if not self.faults:
            return None
        fault = self.faults[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self.faults.popleft()
        return fault

    def max_requests_in(self, seconds: float) -> int:
        """The most requests seen in any window of ``seconds`` (sliding)."""
        best = 0
        start = 0
        for end, t in enumerate(self.request_times):
            while t - self.request_times[start] >= seconds:
                start += 1
            best = max(best, end - start + 1)
        return best


class SlidingWindow:
    """Counts events per key in a sliding window, as exchanges enforce request limits."""

    def __init__(self, limit: int, per_seconds: float) -> None:
        self.limit = limit
        self.per_seconds = per_seconds
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.per_seconds:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True


class SimState:
    """All simulated accounts, shared by the source handlers and the control API."""

    def __init__(
        self,
        accounts: list[SimAccount],
        *,
        rate_limits: dict[str, tuple[int, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        tickers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.accounts: dict[str, SimAccount] = {}
        for account in accounts:
            self.add(account)
        self.rate_limits = dict(rate_limits or {})
        self.clock = clock
        # Unix seconds, for sources that check a request's timestamp (Binance recvWindow).
        self.wall_clock = wall_clock
        # Market prices per exchange: "BASE/QUOTE" -> price text, served as its tickers.
        self.tickers: dict[str, dict[str, str]] = {
            exchange: dict(prices) for exchange, prices in (tickers or {}).items()
        }
        self.closing = asyncio.Event()
        # Kuna Core bearer tokens: token -> account name.
        self.tokens: dict[str, str] = {}

    def add(self, account: SimAccount) -> None:
        if account.name in self.accounts:
            raise ValueError(f"duplicate simulated account {account.name!r}")
        self.accounts[account.name] = account

    def by_key(self, exchange: str, api_key: str) -> SimAccount | None:
        for account in self.accounts.values():
            if account.exchange == exchange and account.api_key == api_key:
                return account
        return None

    def without_auth(self, exchange: str) -> SimAccount | None:
        """The account a source serves to unauthenticated callers (self-hosted CoinAPI)."""
        for account in self.accounts.values():
            if account.exchange == exchange and account.api_key is None:
                return account
        return None

    def record(self, account: SimAccount) -> None:
        account.requests += 1
        account.request_times.append(self.clock())

    def expire_tokens(self) -> None:
        self.tokens.clear()
