"""HTTP plumbing shared by the adapters: one request, read within a size cap, its answer
decoded strictly, transport failures mapped to typed errors, and outside text quoted with
the request's credentials masked."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import aiohttp

from balwatch import redact
from balwatch.backoff import parse_retry_after
from balwatch.errors import (
    AuthError,
    BadResponse,
    RateLimited,
    SourceError,
    SourceUnavailable,
)
from balwatch.httpbody import read_bounded
from balwatch.secret import Secret
from balwatch.sizes import format_size


class DuplicateKey(Exception):
    """A JSON object names ``key`` twice: which value is true cannot be told."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every answer: numbers as Decimal or int (never float), no NaN or
# Infinity, and an object naming a key twice refused rather than read as its last value.
_DECODER: Final = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)


def decode_json(text: str) -> Any:
    """``text`` decoded as every adapter reads an answer; ValueError for text that is not
    JSON, :class:`DuplicateKey` for an object naming a key twice."""
    return _DECODER.decode(text)


@dataclass(frozen=True, slots=True)
class Response:
    source: str
    status: int
    headers: Mapping[str, str]
    text: str
    # What the request carried that an echo must not show: the account's credentials, a
    # token, a signature. Masked, with the installed secrets, in anything quoted from here.
    secrets: tuple[Secret, ...] = ()

    def json(self) -> Any:
        """The body decoded by :func:`decode_json`, or BadResponse saying what is wrong."""
        try:
            return decode_json(self.text)
        except DuplicateKey as exc:
            raise BadResponse(
                self.source,
                f"HTTP {self.status}: key {self.quote(exc.key)} appears twice in one object",
            ) from None
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

    def quote(self, text: str) -> str:
        """Text from this answer, fit for an error message: the installed secrets and the
        request's own masked before it is cut short, on one line, in quotes."""
        return redact.installed().including(self.secrets).quote(text)

    def snippet(self) -> str:
        """The body, quoted by :meth:`quote`."""
        return self.quote(self.text)

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


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
    max_size: int,
    secrets: Iterable[Secret] = (),
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json_body: Any = None,
) -> Response:
    """Send one request; timeouts and connection failures become :class:`SourceUnavailable`,
    a body over ``max_size`` bytes (decompressed) a :class:`BadResponse`, read no further.

    The URL and parameters are left out of error messages: some sources sign in the query.
    ``secrets`` (what the request carries) are masked wherever the answer is quoted.
    """
    carried = tuple(secrets)
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            params=params,
            json=json_body,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            declared = resp.content_length
            too_big = declared is not None and declared > max_size
            raw = b"" if too_big else await read_bounded(resp, max_size + 1)
            if too_big or len(raw) > max_size:
                resp.close()  # drop the connection: the rest of the body is never read
                redactor = redact.installed().including(carried)
                shown = f": {redactor.quote(_decoded_head(raw), whole=False)}" if raw else ""
                raise BadResponse(
                    source,
                    f"HTTP {resp.status}: body larger than max_response_size "
                    f"{format_size(max_size)}, not read further{shown}",
                )
            return Response(
                source=source,
                status=resp.status,
                headers=dict(resp.headers),
                text=raw.decode("utf-8", errors="replace"),
                secrets=carried,
            )
    except TimeoutError:
        raise SourceUnavailable(source, f"timed out after {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise SourceUnavailable(source, f"connection failed: {type(exc).__name__}") from None


def _decoded_head(raw: bytes) -> str:
    """The start of a body cut at a byte count: a character split by the cut is left out,
    not shown as a replacement character."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=False)


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
