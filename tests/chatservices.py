"""Slack, Discord, Telegram, Mattermost and Teams, as their documentation says they answer.

Each :class:`ChatService` is a real aiohttp server on loopback at the service's own path
that checks a request the way the service does (the body's shape and limits) and answers
with the service's documented bodies: success, its errors, and its rate limit, enforced at
the documented rate (429 with Retry-After, Telegram's ``parameters.retry_after``, Discord's
JSON ``retry_after``; a legacy Teams connector's HTTP 200 with an error text). Tests script
faults on top (:meth:`ChatService.script`, a hanging answer too), count what arrived when
(on an injectable clock, to check pacing where the service counts it) and read the
messages it accepted.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict

from tests.waiting import within
from tests.webhooks import Recorded, Reply

Service = Literal["slack", "discord", "telegram", "mattermost", "teams", "teams-workflows"]

# The documented limits each service enforces: (count, seconds).
LIMITS: dict[str, list[tuple[int, float]]] = {
    "slack": [(1, 1.0)],
    "discord": [(5, 2.0)],
    "telegram": [(1, 1.0), (20, 60.0)],  # a group chat
    "mattermost": [(10, 1.0)],
    "teams": [(4, 1.0), (60, 30.0), (100, 3600.0)],
    "teams-workflows": [(4, 1.0)],
}
PATHS: dict[str, str] = {
    "slack": "/services/T0001/B0001/slacktoken0001xxxxxxxxxx",
    "discord": "/api/webhooks/1234567890/discordtoken0001xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "telegram": "/bot123456:telegramtoken0001xxxxxxxxxxxxxxxxxx/sendMessage",
    "mattermost": "/hooks/mattermosttoken0001xxxxxxx",
    "teams": "/webhookb2/teamstoken0001xxxxxxxxxxxxxxxxxxxxxxxx/IncomingWebhook/0001",
    "teams-workflows": "/workflows/teamsflow0001/triggers/manual/paths/invoke",
}
TEAMS_THROTTLED = (
    "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP "
    "error 429 with ContextId tcid=0,server=msgapi-production-eus-azsc2-4-170,cv=deadbeef.0"
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request as the service saw it, at its clock's time."""

    request: Recorded
    at: float
    status: int
    accepted: bool  # the service took it as a message (and answered so)


class ChatService:
    """``async with ChatService("slack") as slack: ... slack.url``; see the module."""

    def __init__(
        self,
        service: Service,
        *,
        now: Callable[[], float] = time.monotonic,
        enforce_rate: bool = True,
    ) -> None:
        self.service = service
        self.arrivals: list[Arrival] = []
        self._now = now
        self._enforce = enforce_rate
        self._scripted: list[Reply] = []
        self._arrived = asyncio.Condition()
        self._release = asyncio.Event()  # lets hanging requests go, at the end
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATHS[self.service]}"

    @property
    def messages(self) -> list[Any]:
        """The bodies of the messages the service accepted, in arrival order."""
        return [a.request.json() for a in self.arrivals if a.accepted]

    def script(self, replies: Iterable[Reply]) -> None:
        """Answer the next requests with these, before any check of the service's own."""
        self._scripted.extend(replies)

    def busiest(self, seconds: float) -> int:
        """The most requests that arrived within any ``seconds`` (the service's count)."""
        times = [a.at for a in self.arrivals]
        return max(
            (sum(1 for t in times[i:] if t < start + seconds) for i, start in enumerate(times)),
            default=0,
        )

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Arrival]:
        """Wait until ``count`` requests arrived; return them all."""
        async with self._arrived:
            await within(
                self._arrived.wait_for(lambda: len(self.arrivals) >= count),
                f"{count} requests at {self.service}",
                timeout,
            )
            return list(self.arrivals)

    async def wait_accepted(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Wait until the service accepted ``count`` messages; return them."""
        async with self._arrived:
            await within(
                self._arrived.wait_for(lambda: len(self.messages) >= count),
                f"{count} messages accepted by {self.service}",
                timeout,
            )
            return self.messages

    # --- the service --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        recorded = Recorded(
            method=request.method,
            path=request.path_qs,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
            at=time.monotonic(),
        )
        at = self._now()
        if self._scripted:
            reply = self._scripted.pop(0)
        else:
            reply = self._over_limit(at) or self._check(recorded) or self._success()
        # A legacy Teams connector took it only if it said "1".
        accepted = 200 <= reply.status < 300 and not reply.hang
        accepted = accepted and (self.service != "teams" or reply.body == b"1")
        async with self._arrived:
            self.arrivals.append(Arrival(recorded, at, reply.status, accepted))
            self._arrived.notify_all()
        if reply.hang:
            await self._release.wait()
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def _over_limit(self, at: float) -> Reply | None:
        if not self._enforce:
            return None
        accepted = [a.at for a in self.arrivals if a.accepted]
        for count, seconds in LIMITS[self.service]:
            recent = [t for t in accepted if t > at - seconds]
            if len(recent) >= count:
                wait = max(1, round(recent[-count] + seconds - at + 0.5))
                return rate_limited(self.service, wait)
        return None

    def _check(self, recorded: Recorded) -> Reply | None:
        """The service's own refusal of a malformed message, or None."""
        try:
            body = recorded.json()
        except ValueError:
            return invalid(self.service, "body is not JSON")
        if not isinstance(body, dict):
            return invalid(self.service, "body is not an object")
        problem = PROBLEMS[self.service](body)
        return None if problem is None else invalid(self.service, problem)

    def _success(self) -> Reply:
        self._sent += 1
        if self.service == "discord":
            return Reply(204, body=b"")
        if self.service == "telegram":
            result = {"message_id": self._sent, "date": int(time.time()), "chat": {"id": -1}}
            return Reply.json(200, {"ok": True, "result": result})
        if self.service == "teams":
            return Reply(200, body=b"1")
        if self.service == "teams-workflows":
            return Reply(202, body=b"")
        return Reply(200, headers={"Content-Type": "text/plain"}, body=b"ok")

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(PATHS[self.service], self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def rate_limited(service: str, seconds: int) -> Reply:
    """The service's documented answer to a client over its rate limit."""
    if service == "telegram":
        answer = {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {seconds}",
            "parameters": {"retry_after": seconds},
        }
        return Reply.json(429, answer)
    if service == "discord":
        answer = {"message": "You are being rate limited.", "retry_after": seconds, "global": False}
        return Reply.json(429, answer, {"Retry-After": str(seconds)})
    if service == "teams":
        return Reply(200, body=TEAMS_THROTTLED.encode())
    if service == "mattermost":
        return Reply(429, headers={"Retry-After": str(seconds)}, body=b"limit exceeded")
    if service == "slack":
        return Reply(429, headers={"Retry-After": str(seconds)}, body=b"rate_limited")
    return Reply(429, headers={"Retry-After": str(seconds)}, body=b"")


def invalid(service: str, why: str) -> Reply:
    """The service's documented answer to a message it cannot take."""
    if service == "slack":
        return Reply(400, body=b"invalid_payload")
    if service == "discord":
        return Reply.json(400, {"code": 50035, "message": f"Invalid Form Body ({why})"})
    if service == "telegram":
        answer = {"ok": False, "error_code": 400, "description": f"Bad Request: {why}"}
        return Reply.json(400, answer)
    if service == "mattermost":
        answer = {
            "id": "web.incoming_webhook.text.app_error",
            "message": why,
            "detailed_error": "",
            "request_id": "b7ukqbpqhjbdfq8rjbsc6uz8ne",
            "status_code": 400,
        }
        return Reply.json(400, answer)
    if service == "teams":
        return Reply(200, body=b"Summary or Text is required.")
    return Reply(400, body=b"")


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _slack(body: dict[str, Any]) -> str | None:
    if not body.get("text") and not body.get("attachments"):
        return "no_text"
    if len(body.get("attachments") or []) > 100:
        return "too many attachments"
    return None


def _discord(body: dict[str, Any]) -> str | None:
    embeds = body.get("embeds") or []
    if not body.get("content") and not embeds:
        return "Cannot send an empty message"
    if _units(body.get("content") or "") > 2000 or len(embeds) > 10:
        return "content or embeds too long"
    total = 0
    for embed in embeds:
        title, description = embed.get("title", ""), embed.get("description", "")
        fields = embed.get("fields", [])
        if _units(title) > 256 or _units(description) > 4096 or len(fields) > 25:
            return "embed over its limits"
        total += _units(title) + _units(description)
        total += _units(embed.get("footer", {}).get("text", ""))
        total += sum(_units(f["name"]) + _units(f["value"]) for f in fields)
    if total > 6000:
        return "embeds over 6000 characters"
    mentions = body.get("allowed_mentions")
    if not isinstance(mentions, dict) or "parse" not in mentions:
        return "allowed_mentions missing: anyone could be pinged"
    return None


def _telegram(body: dict[str, Any]) -> str | None:
    if "chat_id" not in body:
        return "chat_id is empty"
    text = body.get("text")
    if not isinstance(text, str) or not text:
        return "message text is empty"
    if body.get("parse_mode") == "HTML":  # counted after entities parsing
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
    if _units(text) > 4096:
        return "message is too long"
    return None


def _mattermost(body: dict[str, Any]) -> str | None:
    text = body.get("text")
    if not text and not body.get("attachments"):
        return "No text specified"
    if _units(text or "") > 16383:
        return "message too long"
    return None


def _teams(body: dict[str, Any]) -> str | None:
    if body.get("type") != "message" or not body.get("attachments"):
        return "Summary or Text is required."
    if len(json.dumps(body).encode()) > 28 * 1024:
        return "payload too large"
    return None


PROBLEMS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "slack": _slack,
    "discord": _discord,
    "telegram": _telegram,
    "mattermost": _mattermost,
    "teams": _teams,
    "teams-workflows": _teams,
}
