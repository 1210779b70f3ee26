"""Poll accounts: one adapter call each, every failure turned into a typed result."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import structlog

from balwatch.adapters import REGISTRY, AccountSpec, Adapter
from balwatch.errors import BadResponse, SourceError
from balwatch.model import Balance
from balwatch.prices.book import PriceBook, stamp

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PollResult:
    account: str
    exchange: str
    rows: list[Balance] | None  # None exactly when ``error`` is set
    error: SourceError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def make_adapter(exchange: str, spec: AccountSpec, session: aiohttp.ClientSession) -> Adapter:
    """One adapter per account, kept across polls: it holds login tokens and nonces."""
    return REGISTRY[exchange](spec, session)


async def poll_account(adapter: Adapter) -> PollResult:
    """Poll once. Never raises for anything the source does: a failed poll is a result."""
    spec, exchange = adapter.account, adapter.name
    started = time.perf_counter()
    rows: list[Balance] | None = None
    error: SourceError | None = None
    try:
        rows = await adapter.fetch()
    except SourceError as exc:
        error = exc
    except Exception as exc:
        # An adapter bug must not take the daemon down nor look like a balance; report
        # the type only, since the text of an unexpected exception is not vetted for secrets.
        log.error("adapter_bug", account=spec.name, exchange=exchange, error=type(exc).__name__)
        error = BadResponse(exchange, f"internal error in adapter: {type(exc).__name__}")
    elapsed = time.perf_counter() - started
    if error is not None:
        log.warning(
            "poll_failed",
            account=spec.name,
            exchange=exchange,
            kind=str(error.kind),
            error=str(error),
        )
    return PollResult(spec.name, exchange, rows, error, elapsed)


async def poll_all(adapters: Iterable[Adapter]) -> list[PollResult]:
    """Poll every account concurrently; results in the order given."""
    return list(await asyncio.gather(*(poll_account(a) for a in adapters)))


def priced(result: PollResult, book: PriceBook, now: float | None = None) -> PollResult:
    """A poll result with its rows priced; the book first learns the rates they carry."""
    if result.rows is None or not book.active:
        return result
    book.learn(result.rows, now)
    return dataclasses.replace(result, rows=stamp(result.rows, book.usd_prices(now)))
