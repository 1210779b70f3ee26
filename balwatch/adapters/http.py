"""HTTP plumbing shared by the adapters: one request, transport failures mapped to typed errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from balwatch.adapters.wire import quote
from balwatch.backoff import parse_retry_after
from balwatch.errors import (
    AuthError,
    BadResponse,
    RateLimited,
    SourceError,
    SourceUnavailable,
)
from balwatch.secret import Secret


@dataclass(frozen=True, slots=True)
class Response:
    source: str
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        """The body parsed with every JSON number as Decimal or int, never float."""
        try:
            return json.loads(self.text, parse_float=Decimal, parse_constant=_reject_constant)
        except (ValueError, ArithmeticError) as exc:  # decimal refuses 1e1000000000000000000
            raise BadResponse(
                self.source, f"HTTP {self.status}: body is not valid JSON: {self.snippet()}"
            ) from exc
        except RecursionError:  # a hostile body nested thousands deep
            raise BadResponse(
                self.source, f"HTTP {self.status}: body is nested too deeply"
            ) from None

    def json_or_none(self) -> Any:
        """Like :meth:`json`, but None for a body that is not JSON (error pages)."""
        try:
            return self.json()
        except BadResponse:
            return None

    def snippet(self) -> str:
        """The body on one line, quoted and cut short for an error message."""
        return quote(" ".join(self.text.split()))

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))

    def masked(self, secrets: Iterable[Secret | None]) -> Response:
        """This answer with any echoed credential masked, fit to quote in an error message."""
        text = self.text
        for secret in secrets:
            if secret:
                text = text.replace(secret.reveal(), "***")
        return dataclasses.replace(self, text=text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def new_session() -> aiohttp.ClientSession:
    """The one client session the adapters share (create it inside the running loop).

    aiohttp silently resends an idempotent request once when a kept-alive connection drops.
    That replays Bitso's one-time signed nonce, which Bitso answers with an auth error; a
    failed poll is retried by the scheduler with a fresh signature instead. aiohttp has no
    public switch for this, hence the private attribute.
    """
    session = aiohttp.ClientSession()
    session._retry_connection = False
    return session


async def send(
    session: aiohttp.ClientSession,
    source: str,
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json_body: Any = None,
    data: Mapping[str, str] | None = None,
) -> Response:
    """Send one request; timeouts and connection failures become :class:`SourceUnavailable`.

    The URL and parameters are left out of error messages: some sources sign in the query.
    """
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            params=params,
            json=json_body,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            raw = await resp.read()
            return Response(
                source=source,
                status=resp.status,
                headers=dict(resp.headers),
                text=raw.decode("utf-8", errors="replace"),
            )
    except TimeoutError:
        raise SourceUnavailable(source, f"timed out after {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise SourceUnavailable(source, f"connection failed: {type(exc).__name__}") from None


def generic_status_error(resp: Response) -> SourceError | None:
    """The typed error for a non-2xx status that no source-specific rule handled, else None."""
    status = resp.status
    if 200 <= status < 300:
        return None
    where = f"HTTP {status}: {resp.snippet()}"
    if status in (401, 403):
        return AuthError(resp.source, where)
    if status == 429:
        return RateLimited(resp.source, where, retry_after=resp.retry_after())
    if status == 408 or status >= 500:
        return SourceUnavailable(resp.source, where)
    return BadResponse(resp.source, where)
