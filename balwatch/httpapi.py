"""The daemon's HTTP endpoints (``http.listen``): health, readiness, metrics, JSON status.

=================  ==========================================================================
``/healthz``       200 ``ok`` while the process serves at all (liveness: restart if it fails)
``/readyz``        200 or 503 with ``{"ready": bool, "reasons": [str, ...]}`` from
                   :meth:`StatusSource.ready` (first poll round done, sinks connected)
``/metrics``       Prometheus text exposition of the daemon's registry, rendered on the loop
                   in slices (:meth:`balwatch.metrics.Registry.render`)
``/api/alerts``    JSON list from :meth:`StatusSource.alerts` (firing and pending states)
``/api/alerts/F``  JSON object: the state of the alert with fingerprint F, from
                   :meth:`StatusSource.alert`; 404 with ``{"error": ...}`` when it is
                   neither pending nor firing (the ``url`` of every alert points here)
``/api/balances``  JSON object from :meth:`StatusSource.balances`
                   (:meth:`balwatch.latest.LatestBalances.document`)
=================  ==========================================================================

With an :class:`OnCall` (the daemon), people on call change things here too:

==============================  ===========================================================
``GET /api/silences``           silences in force or to come (``?all=true``: expired too)
``POST /api/silences``          a new silence from ``{"matchers": [...], "for": "2h" |
                                "ends_at": TIME, "starts_at": TIME?, "author", "comment"}``:
                                201 with it; 400 with ``{"error": ...}`` for bad input
``DELETE /api/silences/ID``     expire it now: 200 with it, 404 if there is none
``GET /api/outbox``             pending deliveries and dead letters (``?dead=true``: dead)
``POST /api/outbox/retry``      ``{"ids": [...]}`` or ``{"all": true}``: dead letters sent
                                again; 200 with ``{"retried", "stale", "unknown"}``
``DELETE /api/outbox/ID``       drop a dead letter: 200, or 404 if none has that id
==============================  ===========================================================

The server only reads: the daemon owns the state and implements :class:`StatusSource`.
Nothing served may carry a secret; see :mod:`balwatch.metrics` and :mod:`balwatch.latest`
for what they leave out. With a token (``http.token``), every path but the three probes
(``/healthz``, ``/readyz``, ``/metrics``) answers only to ``Authorization: Bearer <token>``.

The listener may face a hostile network: a connection must send a whole request head
within :data:`IDLE_TIMEOUT` of opening (or of its last response), a handler (reading a body
included) must finish within :data:`REQUEST_TIMEOUT`, and at most ``max_connections`` are
open at once, the oldest idle one closed to make room, so half-sent headers can neither
starve the probes nor use up the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import hmac
import resource
from types import TracebackType
from typing import Any, Final, Protocol, Self

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from balwatch.burst import Burst
from balwatch.config.model import DEFAULT_MAX_CONNECTIONS
from balwatch.durations import parse_duration
from balwatch.metrics import Registry
from balwatch.secret import Secret
from balwatch.silence import Silence, SilenceError, new_silence, parse_time
from balwatch.state.base import OutboxEntry, Retried

log = structlog.get_logger("balwatch.httpapi")

# Handlers answer in microseconds; a client still reading a response must not hold a
# SIGTERM up for aiohttp's default of a minute.
SHUTDOWN_GRACE: Final = 2.0
# aiohttp's keep-alive timer, which since 3.14.5 also runs from a connection's start: a
# connection that has not sent a whole request head this long after opening, or after its
# last response, is closed. It is the header timeout and the idle timeout at once.
IDLE_TIMEOUT: Final = 10.0
# For a handler, reading the request body included: aiohttp has no body timeout of its own.
REQUEST_TIMEOUT: Final = 30.0
# Never more than this share of the process's descriptor limit for HTTP connections: the
# pollers, sinks and state database need the rest.
_SHARE_OF_DESCRIPTORS: Final = 4
# Paths open without the token: health probes and Prometheus scrapers rarely carry one.
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


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

    def cluster_status(self) -> dict[str, object] | None:
        """JSON-ready replicas and leases (a replica), None for a single daemon."""
        ...


class OnCall(Protocol):
    """What people on call change through the API: the daemon, on its state store."""

    def now(self) -> float: ...

    def silences(self) -> list[Silence]: ...

    async def add_silence(self, silence: Silence) -> None: ...

    async def expire_silence(self, silence_id: str) -> Silence | None: ...

    async def outbox_entries(self, *, dead_only: bool) -> list[OutboxEntry]: ...

    async def retry_dead(self, ids: list[int] | None) -> Retried: ...

    async def drop_dead(self, ids: list[int]) -> list[int]: ...


class BadRequest(Exception):
    """Input the API refuses: a 400 with this message."""


def make_app(
    status: StatusSource,
    registry: CollectorRegistry,
    *,
    token: Secret | None = None,
    busy: set[object] | None = None,
    oncall: OnCall | None = None,
) -> web.Application:
    """The aiohttp application; :class:`HttpServer` serves it.

    ``token``: required on every path but :data:`OPEN_PATHS`. ``busy``: the connections
    (request protocols) whose request is being handled, kept up to date for the server.
    """

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        ready, reasons = status.ready()
        return web.json_response({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        # Rendering 1,000 accounts takes a hundred milliseconds or more. The daemon's
        # registry renders on the loop in slices of a millisecond, so polls and deliveries
        # keep their latency during a scrape (a worker thread would take the GIL from them
        # in 5 ms turns); any other registry renders on a worker thread.
        if isinstance(registry, Registry):
            body = await registry.render()
        else:
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

    async def cluster(request: web.Request) -> web.Response:
        found = status.cluster_status()
        if found is None:
            body = {"error": "not a replica: the state backend is sqlite, one daemon"}
            return web.json_response(body, status=404)
        return web.json_response(found)

    middlewares = [_bounded(set() if busy is None else busy)]
    if token is not None:
        middlewares.append(_require(token))
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/alerts/{fingerprint}", alert)
    app.router.add_get("/api/balances", balances)
    app.router.add_get("/api/cluster", cluster)
    if oncall is not None:
        _oncall_routes(app, oncall)
    return app


def _oncall_routes(app: web.Application, oncall: OnCall) -> None:
    async def silences(request: web.Request) -> web.Response:
        now = oncall.now()
        every = _flag(request, "all")
        shown = [s.to_json(now) for s in oncall.silences() if every or s.state(now) != "expired"]
        return web.json_response(shown)

    async def add_silence(request: web.Request) -> web.Response:
        body = await _json_object(request)
        silence = _silence(body, oncall.now())
        await oncall.add_silence(silence)
        return web.json_response(silence.to_json(oncall.now()), status=201)

    async def expire_silence(request: web.Request) -> web.Response:
        silence_id = request.match_info["id"]
        ended = await oncall.expire_silence(silence_id)
        if ended is None:
            return web.json_response({"error": "no such silence", "id": silence_id}, status=404)
        return web.json_response(ended.to_json(oncall.now()))

    async def outbox(request: web.Request) -> web.Response:
        entries = await oncall.outbox_entries(dead_only=_flag(request, "dead"))
        return web.json_response([entry.to_json() for entry in entries])

    async def retry(request: web.Request) -> web.Response:
        body = await _json_object(request)
        ids = None if body.get("all") is True and "ids" not in body else _ids(body.get("ids"))
        done = await oncall.retry_dead(ids)
        return web.json_response(
            {"retried": done.retried, "stale": done.stale, "unknown": done.unknown}
        )

    async def drop(request: web.Request) -> web.Response:
        [delivery_id] = _ids([request.match_info["id"]])
        if not await oncall.drop_dead([delivery_id]):
            body = {"error": "no dead letter has this id", "id": delivery_id}
            return web.json_response(body, status=404)
        return web.json_response({"dropped": delivery_id})

    @web.middleware
    async def bad_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

    app.middlewares.append(bad_requests)
    app.router.add_get("/api/silences", silences)
    app.router.add_post("/api/silences", add_silence)
    app.router.add_delete("/api/silences/{id}", expire_silence)
    app.router.add_get("/api/outbox", outbox)
    app.router.add_post("/api/outbox/retry", retry)
    app.router.add_delete("/api/outbox/{id}", drop)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("expected a JSON object as the body") from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object as the body")
    return body


_SILENCE_KEYS: Final = frozenset({"matchers", "starts_at", "ends_at", "for", "author", "comment"})


def _silence(body: dict[str, Any], now: float) -> Silence:
    """A new silence from a request body, checked whole; BadRequest says what is wrong."""
    unknown = sorted(set(body) - _SILENCE_KEYS)
    if unknown:
        raise BadRequest(
            f"unknown key {unknown[0]!r}; expected: {', '.join(sorted(_SILENCE_KEYS))}"
        )
    matchers = body.get("matchers")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise BadRequest('expected "matchers": a list of texts like "account=~bitso-.*"')
    for key in ("author", "comment"):
        if not isinstance(body.get(key), str):
            raise BadRequest(f'expected "{key}": text (who made the silence, and why)')
    starts = now if body.get("starts_at") is None else _time(body["starts_at"], "starts_at")
    if ("for" in body) == ("ends_at" in body):
        raise BadRequest('expected one of "for" (a duration like 2h) or "ends_at" (a time)')
    if "for" in body:
        if not isinstance(body["for"], str):
            raise BadRequest('expected "for": a duration like 2h')
        try:
            ends = starts + parse_duration(body["for"])
        except ValueError as exc:
            raise BadRequest(f"for: {exc}") from None
    else:
        ends = _time(body["ends_at"], "ends_at")
    try:
        return new_silence(
            matchers, starts_at=starts, ends_at=ends, author=body["author"],
            comment=body["comment"], now=now,
        )  # fmt: skip
    except SilenceError as exc:
        raise BadRequest(exc.message) from None


def _time(value: object, key: str) -> float:
    if not isinstance(value, str):
        raise BadRequest(f'expected "{key}": an ISO-8601 time like 2026-11-25T22:00:00Z')
    try:
        return parse_time(value, zone_required=True)
    except ValueError as exc:
        raise BadRequest(f"{key}: {exc}") from None


def _ids(value: object) -> list[int]:
    if isinstance(value, list):
        try:
            ids = [int(v) for v in value if not isinstance(v, bool)]
        except (TypeError, ValueError):
            ids = []
        if ids and len(ids) == len(value):
            return ids
    raise BadRequest(
        'expected "ids": a list of delivery ids (outbox list shows them), or "all": true'
    )


_CLOSE: Final = {"Connection": "close"}


def _bounded(busy: set[object]) -> Middleware:
    """Marks a connection busy while its request is handled, and bounds how long that takes."""

    @web.middleware
    async def bounded(request: web.Request, handler: Handler) -> web.StreamResponse:
        busy.add(request.protocol)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await handler(request)
        except TimeoutError:
            message = f"the request was not completed within {REQUEST_TIMEOUT:g} s"
            return web.json_response({"error": message}, status=408, headers=_CLOSE)
        finally:
            busy.discard(request.protocol)

    return bounded


def _require(token: Secret) -> Middleware:
    """401 for any path outside :data:`OPEN_PATHS` without ``Authorization: Bearer <token>``."""
    expected = token.reveal().encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # Compared in constant time: the answer's timing must not spell out the token.
            match = hmac.compare_digest(given.strip().encode(errors="surrogateescape"), expected)
            if scheme.lower() != "bearer" or not match:
                return web.json_response(
                    {"error": "unauthorized: send Authorization: Bearer <http.token>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="balwatch"'},
                )
        return await handler(request)

    return require_token


class HttpServer:
    """Serve :func:`make_app` on ``host:port`` while inside ``async with``.

    Port 0 binds a free port, readable from :attr:`port` once started; give a literal
    address then, since a name with several addresses would get a different port on each.
    ``max_connections`` is lowered to a quarter of the process's descriptor limit if that
    is less.
    """

    def __init__(
        self,
        host: str,
        port: int,
        status: StatusSource,
        registry: CollectorRegistry,
        *,
        token: Secret | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        oncall: OnCall | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._busy: set[object] = set()
        # No access log: Prometheus and health probes would fill the journal.
        self._runner = web.AppRunner(
            make_app(status, registry, token=token, busy=self._busy, oncall=oncall),
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=idle_timeout,
        )
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit != resource.RLIM_INFINITY:
            max_connections = min(max_connections, max(1, soft_limit // _SHARE_OF_DESCRIPTORS))
        self.max_connections = max_connections
        # asyncio accepts up to `backlog` connections at once before any reaches the cap
        # check, and the ones the cap closes free their descriptor an iteration later: a
        # small batch keeps a flood's peak near the cap.
        self._backlog = max(8, min(128, max_connections // 4))
        self._listener: asyncio.Server | None = None
        self._accept_failures = Burst(log, "http_accept_failed", "http_accept_recovered")
        self._at_limit = Burst(log, "http_connection_limit_reached", "http_connection_limit_left")
        self._previous_handler: Any = None

    @property
    def port(self) -> int:
        """The bound port (the requested one unless that was 0)."""
        if self._listener is None or not self._listener.sockets:
            raise RuntimeError("the HTTP server is not running")
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            # aiohttp's sites have no connection cap: the listener is made here, with a
            # protocol factory that keeps one.
            self._listener = await loop.create_server(
                self._connection, self._host, self._port, backlog=self._backlog
            )
        except BaseException:
            await self._runner.cleanup()  # e.g. the port is taken: release what setup made
            raise
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() == self._loop_exception:
            loop.set_exception_handler(self._previous_handler)
        assert self._listener is not None
        self._listener.close()
        await self._runner.cleanup()  # closes the connections, after a grace for requests
        await self._listener.wait_closed()

    def _connection(self) -> asyncio.BaseProtocol:
        """A protocol for each accepted connection; makes room at the cap."""
        self._accept_failures.ok()
        server = self._runner.server
        assert server is not None, "set up in __aenter__"
        # A connection whose transport is gone is closing already.
        open_ = [c for c in server.connections if c.transport is not None]
        if len(open_) < self.max_connections:
            self._at_limit.ok()
            return server()
        self._at_limit.failed(max_connections=self.max_connections)
        # Oldest first: the one that has been sitting longest without a request goes.
        idle = next((c for c in open_ if c not in self._busy), None)
        if idle is None:  # every one is being answered: refuse the newcomer instead
            return _Refused()
        idle.force_close()
        return server()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Accept failures (out of descriptors) once per burst; anything else as before."""
        error = context.get("exception")
        if str(context.get("message", "")).startswith("socket.accept()") and isinstance(
            error, OSError
        ):
            self._accept_failures.failed(error=error.strerror or str(error), errno=error.errno)
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


class _Refused(asyncio.Protocol):
    """At the cap with every connection busy: a 503 and close, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
        transport.close()
