"""A hostile exchange on loopback: real aiohttp, real sockets, every source's paths at once.

Under ``/echo/<source>/<field>/<form>/`` it refuses each request with HTTP 400 and a body
quoting one credential of the request in one encoding (:data:`ECHOES`), as servers and
proxies that echo what they received do; a credential that never travels (an API secret)
is quoted from what the exchange was told of it. Under ``/huge/<declared>/`` it streams a
body far larger than any cap, with or without a Content-Length, and counts what it sent.
Under ``/raw/<name>/`` it answers with ``answers[name]``, a (status, body text) pair.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable, Mapping
from functools import partial
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote, quote_plus

from aiohttp import web

KUNA_LOGIN_PATH: Final = "/v2/auth/login"
HUGE_BYTES: Final = 128 * 1024 * 1024
# What /echo/kunacore/token/ issues at login, then echoes from the balance request.
TOKEN: Final = 'eyJ"tok\\+/=en.2f9c'


def _json(value: str, *, ascii_only: bool = True, upper_hex: bool = False) -> str:
    text = json.dumps({"error": "denied", "echo": value}, ensure_ascii=ascii_only)
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m[1].upper(), text) if upper_hex else text


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), text)


def _basic(value: str, prefix: str, *, urlsafe: bool = False) -> str:
    """Base64 of the value inside a longer text, as HTTP Basic auth carries a password."""
    raw = f"{prefix}{value}:x".encode()
    if urlsafe:
        return "token " + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return "Basic " + base64.b64encode(raw).decode()


# Base64 encodes a value differently at each offset modulo 3: these put it at each.
_PREFIXES: Final = ("u:", "us:", "use:")

# Each form an echoed credential can take, as the body of a 400.
ECHOES: Final[Mapping[str, Callable[[str], str]]] = {
    "plain": lambda v: f"denied: {v}",
    "json_ascii": _json,
    "json_utf8": lambda v: _json(v, ascii_only=False),
    "json_upper_hex": lambda v: _json(v, upper_hex=True),
    "quote": lambda v: f"denied: {quote(v, safe='')}",
    "quote_lower": lambda v: f"denied: {_lower_hex(quote(v, safe=''))}",
    "quote_plus": lambda v: f"denied: {quote_plus(v)}",
    "quote_plus_lower": lambda v: f"denied: {_lower_hex(quote_plus(v))}",
    **{f"base64_{len(p) % 3}": partial(_basic, prefix=p) for p in _PREFIXES},
    **{f"base64url_{len(p) % 3}": partial(_basic, prefix=p, urlsafe=True) for p in _PREFIXES},
}


def carried(field: str, request: web.Request, body: str) -> str | None:
    """Where each source puts a credential in its request (their documented wire format)."""
    auth = request.headers.get("Authorization", "")
    if field == "token":
        return auth.removeprefix("Bearer ")
    if field in ("login", "password"):
        value: str = json.loads(body)[field]
        return value
    if field == "merchant_id":
        return request.headers["merchant_id"]
    if field == "sign":
        return request.query["sign"]
    if field == "api_key":
        for value in (
            request.headers.get("X-CoinAPI-Key"),
            request.headers.get("api-key"),
            request.query.get("api_key"),
        ):
            if value:
                return value
        if auth.startswith("Bitso "):
            return auth.removeprefix("Bitso ").split(":")[0]
    return None


class HostileExchange:
    """``async with HostileExchange(known) as ex: ... ex.url``.

    ``known``: per source, the credentials that never travel, which the exchange quotes all
    the same.
    """

    def __init__(self, known: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._known = known or {}
        self.answers: dict[str, tuple[int, str]] = {}
        self.sent = 0  # bytes of the latest /huge/ body written
        self.stream_ended = asyncio.Event()
        self.echoed: dict[str, str] = {}  # path -> the credential quoted there
        app = web.Application()
        app.router.add_route("*", "/echo/{source}/{field}/{form}/{tail:.*}", self._echo)
        app.router.add_route("*", "/huge/{declared}/{tail:.*}", self._huge)
        app.router.add_route("*", "/raw/{name}/{tail:.*}", self._raw)
        self._runner = web.AppRunner(app)
        self.url = ""

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        source, field, form = (request.match_info[k] for k in ("source", "field", "form"))
        body = await request.text()
        if field == "token" and request.path.endswith(KUNA_LOGIN_PATH):
            return web.json_response({"data": {"accessToken": TOKEN}})
        value = carried(field, request, body) or self._known[source][field]
        self.echoed[request.path] = value
        return web.Response(status=400, text=ECHOES[form](value))

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """128 MiB of JSON-looking text, 64 KiB at a time, until the client hangs up."""
        total = HUGE_BYTES
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if request.match_info["declared"] == "declared":
            response.content_length = total
        self.sent = 0
        chunk = b'{"data": "' + b"x" * (64 * 1024 - 10)
        try:
            await response.prepare(request)
            while self.sent < total:
                await response.write(chunk)
                self.sent += len(chunk)
        except ConnectionError:
            pass  # the client went away: what this test is about
        finally:
            self.stream_ended.set()
        return response

    async def _raw(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        status, text = self.answers[request.match_info["name"]]
        return web.Response(status=status, text=text, content_type="application/json")


def visible(text: str, value: str) -> list[str]:
    """Pieces of ``value`` (8 characters or more) readable in ``text``, as they are or
    inside any run of base64 there: an echo masked in part still shows."""
    pieces = {value[i : i + 8] for i in range(len(value) - 7)} or {value}
    shown = [text, *_decoded_base64(text)]
    return sorted({piece for piece in pieces for seen in shown if piece in seen})


def _decoded_base64(text: str) -> list[str]:
    found = []
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for shift in range(4):
            part = run[shift:]
            part = part[: len(part) // 4 * 4].translate(str.maketrans("-_", "+/"))
            found.append(base64.b64decode(part).decode(errors="ignore"))
    return found
