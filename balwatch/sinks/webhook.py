"""Webhook sink: one HTTP POST per alert, in the generic JSON format or a chat format.

The generic format posts the alert JSON itself. When a secret is set it is signed, so the
receiver can check origin and freshness::

    X-Balwatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Verify by recomputing the HMAC over the timestamp, a dot and the raw request body bytes
(before any JSON parsing), comparing in constant time and rejecting old timestamps.
``Idempotency-Key`` carries the alert ``id``: delivery is at least once.

Webhook URLs are credentials (Slack, Discord and Telegram put the token in the URL), so
errors name the sink and the HTTP status, never the URL or the response body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Final

import aiohttp
from multidict import CIMultiDict

from balwatch import __version__
from balwatch.backoff import parse_retry_after
from balwatch.config.model import WebhookSinkConfig
from balwatch.httpbody import read_bounded
from balwatch.sink import AlertDoc, DeliveryError, Sink
from balwatch.sinks.formats import chat_payload, encode_alert

SIGNATURE_HEADER: Final = "X-Balwatch-Signature"
# Enough of an error body to find Telegram's retry_after; never a whole page.
_MAX_ERROR_BODY: Final = 64 * 1024


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Balwatch-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def is_retryable(status: int) -> bool:
    """408, 429 and 5xx may pass later; any other failure status will not."""
    return status in (408, 429) or status >= 500


class WebhookSink(Sink):
    """POSTs alerts to one URL with its own connection pool, opened in :meth:`start`."""

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._session: aiohttp.ClientSession | None = None

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
        session = self._session
        if session is None:
            raise DeliveryError(f"webhook sink {self.name}: not started", retryable=True)
        body, headers = self._request(alert)
        try:
            async with session.post(
                self._config.url.reveal(), data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return
                retry_after = await self._retry_after(response) if is_retryable(status) else None
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
        raise DeliveryError(
            f"webhook sink {self.name}: HTTP {status}",
            retryable=is_retryable(status),
            retry_after=retry_after,
        )

    def _request(self, alert: AlertDoc) -> tuple[bytes, CIMultiDict[str]]:
        """Body and headers; custom headers may replace the defaults but not the signature.

        Header names are case-insensitive, so a custom ``x-balwatch-signature`` is
        replaced too rather than sent next to the real one.
        """
        config = self._config
        headers = CIMultiDict(
            {"Content-Type": "application/json", "User-Agent": f"balwatch/{__version__}"}
        )
        for name, value in config.headers.items():
            headers[name] = value.reveal()
        try:
            if config.format == "generic":
                body = encode_alert(alert)
            else:
                payload = chat_payload(config.format, alert, chat_id=config.chat_id)
                body = json.dumps(payload, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise DeliveryError(
                f"webhook sink {self.name}: alert is not JSON data: {type(exc).__name__}",
                retryable=False,
            ) from None
        if config.format == "generic":
            if alert.get("id") is not None:
                headers["Idempotency-Key"] = str(alert["id"])
            if config.secret is not None:
                headers[SIGNATURE_HEADER] = sign(config.secret.reveal(), int(time.time()), body)
        return body, headers

    async def _retry_after(self, response: aiohttp.ClientResponse) -> float | None:
        """Retry-After (seconds or HTTP date), else Telegram's ``parameters.retry_after``."""
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        if seconds is not None or self._config.format != "telegram":
            return seconds
        try:
            answer = json.loads(await read_bounded(response, _MAX_ERROR_BODY))
        except ValueError:
            return None
        parameters = answer.get("parameters") if isinstance(answer, Mapping) else None
        value = parameters.get("retry_after") if isinstance(parameters, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        return None
