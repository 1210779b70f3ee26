"""A real aiohttp webhook receiver on loopback that records requests and answers from a script.

Tests of the webhook sink (and of the outbox retrying through it) send real HTTP to this
server: status codes, Retry-After headers, slow answers and TLS are the server's
behaviour, not a mock's.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict

from tests.waiting import within


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer. ``hang`` holds the request open until the receiver stops."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    hang: bool = False

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return cls(status=status, headers=all_headers, body=json.dumps(data).encode())


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as received: method, path with query, headers and raw body bytes."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """``async with WebhookReceiver(Reply(500), Reply(200)) as hook: ... hook.url``.

    Answers each request with the next scripted :class:`Reply`, then with ``default``.
    """

    def __init__(
        self,
        *replies: Reply,
        default: Reply | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[Recorded] = []
        self._replies = list(replies)
        self._default = default or Reply()
        self._ssl = ssl_context
        self._arrived = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def script(self, replies: Iterable[Reply]) -> None:
        """Queue more answers after those not yet used."""
        self._replies.extend(replies)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Wait until ``count`` requests arrived in total; return all recorded so far."""
        async with self._arrived:
            await within(
                self._arrived.wait_for(lambda: len(self.requests) >= count),
                f"{count} webhook requests",
                timeout,
            )
            return list(self.requests)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(
            method=request.method,
            path=request.path_qs,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
            at=time.monotonic(),
        )
        reply = self._replies.pop(0) if self._replies else self._default
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()
        if reply.hang:
            await self._release.wait()
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])

    async def stop(self) -> None:
        self._release.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
