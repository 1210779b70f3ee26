"""The daemon's HTTP endpoints (``http.listen``): health, readiness, metrics, JSON status.

=================  ==========================================================================
``/healthz``       200 ``ok`` while the process serves at all (liveness: restart if it fails)
``/readyz``        200 or 503 with ``{"ready": bool, "reasons": [str, ...]}`` from
                   :meth:`StatusSource.ready` (first poll round done, sinks connected)
``/metrics``       Prometheus text exposition of the daemon's registry
``/api/alerts``    JSON list from :meth:`StatusSource.alerts` (firing and pending states)
``/api/alerts/F``  JSON object: the state of the alert with fingerprint F, from
                   :meth:`StatusSource.alert`; 404 with ``{"error": ...}`` when it is
                   neither pending nor firing (the ``url`` of every alert points here)
``/api/balances``  JSON object from :meth:`StatusSource.balances`
                   (:meth:`balwatch.latest.LatestBalances.document`)
=================  ==========================================================================

The server only reads: the daemon owns the state and implements :class:`StatusSource`.
Nothing here authenticates, so nothing served may carry a secret; see
:mod:`balwatch.metrics` and :mod:`balwatch.latest` for what they leave out.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final, Protocol, Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Handlers answer in microseconds; a client still reading a response must not hold a
# SIGTERM up for aiohttp's default of a minute.
SHUTDOWN_GRACE: Final = 2.0


class StatusSource(Protocol):
    """What the endpoints ask the daemon. Called on the event loop; must not block."""

    def ready(self) -> tuple[bool, list[str]]:
        """Whether to take traffic, and if not, why (one short sentence per reason)."""
        ...

    def alerts(self) -> list[dict[str, object]]:
        """JSON-ready firing and pending alert states (``AlertState.to_json()``)."""
        ...

    def alert(self, fingerprint: str) -> dict[str, object] | None:
        """The state of one pending or firing alert, as in :meth:`alerts`; None otherwise."""
        ...

    def balances(self) -> dict[str, object]:
        """JSON-ready latest balances (``LatestBalances.document()``)."""
        ...


def make_app(status: StatusSource, registry: CollectorRegistry) -> web.Application:
    """The aiohttp application; :class:`HttpServer` serves it."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        ready, reasons = status.ready()
        return web.json_response({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        # Rendering 1,000 accounts takes tens of milliseconds: off the loop, so polls
        # and deliveries keep their latency during a scrape. Collecting is thread-safe.
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def alerts(request: web.Request) -> web.Response:
        return web.json_response(status.alerts())

    async def alert(request: web.Request) -> web.Response:
        fingerprint = request.match_info["fingerprint"]
        found = status.alert(fingerprint)
        if found is None:
            body = {
                "error": "no pending or firing alert has this fingerprint",
                "fingerprint": fingerprint,
            }
            return web.json_response(body, status=404)
        return web.json_response(found)

    async def balances(request: web.Request) -> web.Response:
        return web.json_response(status.balances())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/alerts/{fingerprint}", alert)
    app.router.add_get("/api/balances", balances)
    return app


class HttpServer:
    """Serve :func:`make_app` on ``host:port`` while inside ``async with``.

    Port 0 binds a free port, readable from :attr:`port` once started; give a literal
    address then, since a name with several addresses would get a different port on each.
    """

    def __init__(
        self, host: str, port: int, status: StatusSource, registry: CollectorRegistry
    ) -> None:
        self._host, self._port = host, port
        # No access log: Prometheus and health probes would fill the journal.
        self._runner = web.AppRunner(
            make_app(status, registry), access_log=None, shutdown_timeout=SHUTDOWN_GRACE
        )

    @property
    def port(self) -> int:
        """The bound port (the requested one unless that was 0)."""
        addresses = self._runner.addresses
        if not addresses:
            raise RuntimeError("the HTTP server is not running")
        port: int = addresses[0][1]
        return port

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except BaseException:
            await self._runner.cleanup()  # e.g. the port is taken: release what setup made
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()
