"""Webhook sink: one HTTP POST per alert or group message, generic JSON or a chat format.

The generic format posts the alert JSON itself. When a secret is set it is signed, so the
receiver can check origin and freshness::

    X-Balwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Verify by recomputing the HMAC over the timestamp, a dot and the raw request body bytes
(before any JSON parsing), comparing in constant time and rejecting old timestamps.
``Idempotency-Key`` carries the alert ``id`` (a group message's ``id`` when a generic
webhook groups): delivery is at least once.

Chat formats group alerts by default and are paced at their service's documented rate
(:mod:`balwatch.sinks.chat`); the outbox does both, from :attr:`grouping` and :attr:`pacing`.

Webhook URLs are credentials (Slack, Discord and Telegram put the token in the URL), so
errors name the sink and the HTTP status, never the URL. A chat service's reason for a
failure (Slack's ``channel_is_archived``, Telegram's ``description``) is kept, masked by
:mod:`balwatch.redact` (every configured secret, this sink's URL tokens among them); a
generic receiver's body is never quoted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict

from balwatch import __version__, redact
from balwatch.config.model import WebhookSinkConfig
from balwatch.httpbody import read_bounded
from balwatch.sink import AlertDoc, AlertGroup, DeliveryError, Sink
from balwatch.sinks.chat import needs_body, rates, read_answer
from balwatch.sinks.formats import (
    ChatOptions,
    chat_group_payload,
    chat_payload,
    encode_alert,
    encode_group,
)

SIGNATURE_HEADER: Final = "X-Balwatch-Signature"
# Enough of an answer to find the service's reason and retry_after; never a whole page.
_MAX_ERROR_BODY: Final = 64 * 1024


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Balwatch-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookSink(Sink):
    """POSTs alerts to one URL with its own connection pool, opened in :meth:`start`."""

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self.grouping = config.grouping
        self.pacing = rates(config.format, config.url.reveal(), config.chat_id)
        self._options = ChatOptions(
            chat_id=config.chat_id,
            message_thread_id=config.message_thread_id,
            quiet=config.quiet,
            mention={str(severity): who for severity, who in config.mention.items()},
        )
        self._secrets = config.secrets()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.timeout),
                connector=aiohttp.TCPConnector(ssl=self._config.verify_tls),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, alert: AlertDoc) -> None:
        fmt = self._config.format
        if fmt == "generic":
            body = self._encode(lambda: encode_alert(alert))
            await self._post(body, alert.get("id"))
        else:
            await self._post(self._encode(lambda: chat_payload(fmt, alert, self._options)))

    async def send_group(self, group: AlertGroup) -> None:
        fmt = self._config.format
        if fmt == "generic":
            await self._post(self._encode(lambda: encode_group(group)), group.id)
        else:
            await self._post(self._encode(lambda: chat_group_payload(fmt, group, self._options)))

    def _encode(self, build: Callable[[], Any]) -> bytes:
        try:
            built = build()
            return (
                built
                if isinstance(built, bytes)
                else json.dumps(built, ensure_ascii=False).encode()
            )
        except (TypeError, ValueError) as exc:
            raise DeliveryError(
                f"webhook sink {self.name}: alert is not JSON data: {type(exc).__name__}",
                retryable=False,
            ) from None

    async def _post(self, body: bytes, idempotency_key: object = None) -> None:
        session = self._session
        if session is None:
            raise DeliveryError(f"webhook sink {self.name}: not started", retryable=True)
        fmt = self._config.format
        try:
            async with session.post(
                self._config.url.reveal(),
                data=body,
                headers=self._headers(body, idempotency_key),
                allow_redirects=False,
            ) as response:
                status = response.status
                text = ""
                if needs_body(fmt, status):
                    raw = await read_bounded(response, _MAX_ERROR_BODY)
                    text = self._mask(raw.decode("utf-8", "replace"))
                answer = read_answer(fmt, status, response.headers, text)
        except TimeoutError:
            raise DeliveryError(
                f"webhook sink {self.name}: no answer within {self._config.timeout:g}s",
                retryable=True,
            ) from None
        except aiohttp.ClientError as exc:
            # The exception text can hold the URL; its type says enough.
            raise DeliveryError(
                f"webhook sink {self.name}: request failed ({type(exc).__name__})",
                retryable=True,
            ) from None
        except ValueError as exc:
            # aiohttp refuses some requests outright, e.g. credentials in the URL together
            # with an Authorization header: the config must change, so no retry.
            raise DeliveryError(
                f"webhook sink {self.name}: invalid request ({type(exc).__name__}); "
                "check the url and headers",
                retryable=False,
            ) from None
        if answer.delivered:
            return
        what = f"HTTP {status} with an error" if 200 <= status < 300 else f"HTTP {status}"
        reason = f": {answer.reason}" if answer.reason else ""
        raise DeliveryError(
            f"webhook sink {self.name}: {what}{reason}",
            retryable=answer.retryable,
            retry_after=answer.retry_after,
        )

    def _headers(self, body: bytes, idempotency_key: object) -> CIMultiDict[str]:
        """Custom headers may replace the defaults but not the signature.

        Header names are case-insensitive, so a custom ``x-balwatch-signature`` is
        replaced too rather than sent next to the real one.
        """
        config = self._config
        headers = CIMultiDict(
            {"Content-Type": "application/json", "User-Agent": f"balwatch/{__version__}"}
        )
        for name, value in config.headers.items():
            headers[name] = value.reveal()
        if config.format == "generic":
            if idempotency_key is not None:
                headers["Idempotency-Key"] = str(idempotency_key)
            if config.secret is not None:
                headers[SIGNATURE_HEADER] = sign(config.secret.reveal(), int(time.time()), body)
        return headers

    def _mask(self, text: str) -> str:
        """The service's answer with every secret masked: the process's (the installed
        redactor) and this sink's own, in each form an echo may take."""
        return redact.installed().including(self._secrets).text(text)
