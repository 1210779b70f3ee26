"""The webhook sink against a real aiohttp receiver: bodies, signature, status mapping, secrets."""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from balwatch.sink import DeliveryError
from balwatch.sinks.formats import encode_alert
from balwatch.sinks.webhook import WebhookSink
from tests.brokers import free_port, make_tls_files
from tests.sinks.conftest import ALERT, alert, webhook_config
from tests.webhooks import Reply, WebhookReceiver

SECRET = "whsec-7d1e0c55a9"


async def deliver(url: str, doc: dict[str, Any] | None = None, **fields: Any) -> None:
    async with WebhookSink(webhook_config(url, **fields)) as sink:
        await sink.send(doc or ALERT)


async def failure(url: str, **fields: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await deliver(url, **fields)
    return caught.value


async def test_generic_posts_the_alert_json_signed() -> None:
    async with WebhookReceiver() as hook:
        await deliver(hook.url, secret=SECRET)
        [request] = await hook.wait_for(1)
    assert request.method == "POST"
    assert request.body == encode_alert(ALERT)
    assert request.json() == ALERT
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == ALERT["id"]

    # The documented recipe, done by hand: HMAC-SHA256(secret, "<t>." + raw body).
    fields = dict(part.split("=", 1) for part in request.headers["X-Balwatch-Signature"].split(","))
    expected = hmac.new(
        SECRET.encode(), fields["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 60


async def test_generic_without_secret_is_unsigned() -> None:
    async with WebhookReceiver() as hook:
        await deliver(hook.url)
        [request] = await hook.wait_for(1)
    assert "X-Balwatch-Signature" not in request.headers
    assert request.json() == ALERT


async def test_custom_headers_are_sent_but_cannot_replace_the_signature() -> None:
    headers = {
        "Authorization": "Bearer tok-123",
        "content-type": "application/json; charset=utf-8",
        "x-balwatch-signature": "forged",
    }
    async with WebhookReceiver() as hook:
        await deliver(hook.url, headers=headers, secret=SECRET)
        [request] = await hook.wait_for(1)
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert request.headers.getall("Content-Type") == ["application/json; charset=utf-8"]
    [signature] = request.headers.getall("X-Balwatch-Signature")
    assert signature.startswith("t=")


@pytest.mark.parametrize(
    ("fmt", "extra", "keys"),
    [
        ("slack", {}, {"text", "attachments"}),
        ("mattermost", {}, {"text"}),
        ("discord", {}, {"embeds", "allowed_mentions"}),
        (
            "telegram",
            {"chat_id": -100123},
            {"chat_id", "text", "parse_mode", "link_preview_options", "disable_notification"},
        ),
        ("teams", {}, {"type", "attachments"}),
    ],
)
async def test_chat_formats_post_their_body_shape(
    fmt: str, extra: dict[str, Any], keys: set[str]
) -> None:
    # Teams Workflows answer 202 without a body (a legacy connector's "1" is tested apart).
    answer = Reply(202, body=b"") if fmt == "teams" else Reply()
    async with WebhookReceiver(default=answer) as hook:
        await deliver(hook.url, format=fmt, **extra)
        [request] = await hook.wait_for(1)
    body = request.json()
    assert set(body) == keys
    assert "Idempotency-Key" not in request.headers
    text = str(body)
    assert "FIRING" in text and "bitso-treasury USDT: only 4210.55 available" in text
    if fmt == "telegram":
        assert (body["chat_id"], body["parse_mode"]) == ("-100123", "HTML")


async def test_discord_embed_respects_its_limits() -> None:
    long = alert(
        summary="x" * 500, description="y" * 500, values={f"m{n}": "1" * 70 for n in range(40)}
    )
    async with WebhookReceiver() as hook:
        await deliver(hook.url, long, format="discord")
        [request] = await hook.wait_for(1)
    [embed] = request.json()["embeds"]
    assert len(embed["fields"]) <= 25
    total = len(embed["title"]) + len(embed["description"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000


@pytest.mark.parametrize(
    ("reply", "retryable", "retry_after"),
    [
        (Reply(500), True, None),
        (Reply(502), True, None),
        (Reply(408), True, None),
        (Reply(429, headers={"Retry-After": "3"}), True, 3.0),
        (Reply(503, headers={"Retry-After": "7"}), True, 7.0),
        (Reply(429), True, None),
        (Reply(400), False, None),
        (Reply(401), False, None),
        (Reply(404), False, None),
        (Reply(301, headers={"Location": "/elsewhere"}), False, None),
    ],
)
async def test_status_mapping(reply: Reply, retryable: bool, retry_after: float | None) -> None:
    async with WebhookReceiver(reply) as hook:
        error = await failure(hook.url)
        assert len(await hook.wait_for(1)) == 1  # a redirect is not followed
    assert error.retryable is retryable
    assert error.retry_after == retry_after
    assert str(error) == f"webhook sink ops-hook: HTTP {reply.status}"


async def test_retry_after_as_http_date() -> None:
    when = formatdate(time.time() + 120, usegmt=True)
    async with WebhookReceiver(Reply(429, headers={"Retry-After": when})) as hook:
        error = await failure(hook.url)
    assert error.retry_after is not None
    assert 100 < error.retry_after <= 120


async def test_telegram_retry_after_from_the_body() -> None:
    answer = {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 5",
        "parameters": {"retry_after": 5},
    }
    async with WebhookReceiver(Reply.json(429, answer)) as hook:
        error = await failure(hook.url, format="telegram", chat_id="42")
    assert (error.retryable, error.retry_after) == (True, 5.0)


async def test_scripted_500_then_429_then_200() -> None:
    replies = (Reply(500), Reply(429, headers={"Retry-After": "1"}), Reply(200))
    async with WebhookReceiver(*replies) as hook, WebhookSink(webhook_config(hook.url)) as sink:
        outcomes: list[object] = []
        for _ in replies:
            try:
                await sink.send(ALERT)
                outcomes.append("delivered")
            except DeliveryError as exc:
                outcomes.append((exc.retryable, exc.retry_after))
        assert outcomes == [(True, None), (True, 1.0), "delivered"]
        assert [r.body for r in await hook.wait_for(3)] == [encode_alert(ALERT)] * 3


async def test_timeout_is_retryable() -> None:
    async with WebhookReceiver(Reply(hang=True)) as hook:
        error = await failure(hook.url, timeout="200ms")
    assert error.retryable is True
    assert str(error) == "webhook sink ops-hook: no answer within 0.2s"


async def test_connection_refused_is_retryable() -> None:
    error = await failure(f"http://127.0.0.1:{free_port()}/hook")
    assert error.retryable is True
    assert "request failed" in str(error)


async def test_send_before_start_is_retryable() -> None:
    with pytest.raises(DeliveryError) as caught:
        await WebhookSink(webhook_config("http://127.0.0.1/hook")).send(ALERT)
    assert caught.value.retryable is True


def _server_tls(tmp_path: Path) -> ssl.SSLContext:
    files = make_tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    return context


async def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    async with WebhookReceiver(ssl_context=_server_tls(tmp_path)) as hook:
        error = await failure(hook.url)
        assert error.retryable is True
        assert "Certificate" in str(error)
        assert hook.requests == []
        await deliver(hook.url, verify_tls=False)
        assert len(await hook.wait_for(1)) == 1


async def test_no_secret_in_any_error_or_log() -> None:
    token = "T0KEN-b7f3a91c"
    header_value = "Bearer hdr-5c2e88d1"
    secrets = (token, header_value, SECRET)
    fields = {"secret": SECRET, "headers": {"X-Api-Key": header_value}, "timeout": "200ms"}
    replies = (Reply(500), Reply(400), Reply(429), Reply(hang=True))
    errors: list[DeliveryError] = []
    with capture_logs() as logs:
        async with WebhookReceiver(*replies) as hook:
            url = f"http://user:{token}@127.0.0.1:{hook.port}/hook/{token}?token={token}"
            for _ in replies:
                errors.append(await failure(url, **fields))
        errors.append(await failure(f"http://127.0.0.1:{free_port()}/{token}", **fields))
    for error in errors:
        text = f"{error!s} {error!r} {error.__cause__!r}"
        assert not any(secret in text for secret in secrets), text
        assert error.__suppress_context__ or error.__context__ is None
    assert not any(secret in repr(logs) for secret in secrets)


async def test_credentials_in_url_and_authorization_header_is_a_dead_letter() -> None:
    url = "http://user:pw-9d2c@127.0.0.1:9/hook"
    error = await failure(url, headers={"Authorization": "Bearer hdr-5c2e88d1"})
    assert error.retryable is False
    assert "pw-9d2c" not in str(error) and "hdr-5c2e88d1" not in str(error)
