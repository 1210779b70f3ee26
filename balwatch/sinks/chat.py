"""What each chat service answers, and how fast it may be sent to (docs/chat.md cites the
services' documentation for every number and answer here).

Pure functions over a response's status, headers and body, so each service's documented
answers can be tested without its server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from balwatch.backoff import parse_retry_after
from balwatch.sink import Rate

# An Office 365 connector's URL (the legacy kind): https://<tenant>.webhook.office.com/
# webhookb2/..., earlier https://outlook.office.com/webhook/...; Workflows URLs differ.
_CONNECTOR_PATHS: Final = ("/webhookb2/", "/webhook/")
# A legacy connector's failure, answered with HTTP 200: "... returned HTTP error 429 ...".
_TEAMS_ERROR: Final = re.compile(r"HTTP error (\d{3})")
_REASON_LIMIT: Final = 200


def rates(fmt: str, url: str, chat_id: str | None) -> tuple[Rate, ...]:
    """The documented limits of the service a sink posts to (none for ``generic``)."""
    if fmt == "slack":  # incoming webhooks: one message a second
        return (Rate(1, 1.0),)
    if fmt == "discord":  # a webhook's bucket: 5 requests per 2 s
        return (Rate(5, 2.0),)
    if fmt == "mattermost":  # the server's rate limiting, when enabled, defaults to 10/s
        return (Rate(10, 1.0),)
    if fmt == "telegram":  # one a second in a chat; 20 a minute in a group or channel
        private = chat_id is not None and chat_id.isdigit()
        return (Rate(1, 1.0),) if private else (Rate(1, 1.0), Rate(20, 60.0))
    if fmt == "teams":
        if urlsplit(url).path.startswith(_CONNECTOR_PATHS):  # a connector's whole table
            return (
                Rate(4, 1.0),
                Rate(60, 30.0),
                Rate(100, 3600.0),
                Rate(150, 7200.0),
                Rate(1800, 86400.0),
            )
        return (Rate(4, 1.0),)  # a Workflows URL: Teams' four per second per channel
    return ()


def is_retryable(status: int) -> bool:
    """408, 429 and 5xx may pass later; any other failure status will not."""
    return status in (408, 429) or status >= 500


@dataclass(frozen=True, slots=True)
class Answer:
    """How one request went, by the service's own account."""

    delivered: bool
    retryable: bool = False
    retry_after: float | None = None
    reason: str | None = None  # the service's words (not yet masked), if any


def needs_body(fmt: str, status: int) -> bool:
    """Whether the body must be read to know the outcome (Teams says it in a 200)."""
    return not 200 <= status < 300 or fmt == "teams"


def read_answer(fmt: str, status: int, headers: Mapping[str, str], body: str) -> Answer:
    """The outcome of a request from what the service answered (``body``: its text)."""
    text = body.strip()
    if 200 <= status < 300:
        if fmt != "teams" or text in ("", "1"):  # Workflows: 202 and no body
            return Answer(delivered=True)
        # A legacy connector answers 200 to everything; only "1" is success.
        found = _TEAMS_ERROR.search(text)
        retryable = found is not None and is_retryable(int(found.group(1)))
        return Answer(delivered=False, retryable=retryable, reason=_one_line(text))
    retryable = is_retryable(status)
    answer = _json(text)
    retry_after = parse_retry_after(headers.get("Retry-After")) if retryable else None
    if retryable:  # Telegram says it only in the body; Discord more precisely there
        in_body = _retry_after(fmt, answer)
        if in_body is not None:
            retry_after = max(retry_after or 0.0, in_body)
    return Answer(
        delivered=False,
        retryable=retryable,
        retry_after=retry_after,
        reason=_reason(fmt, text, answer),
    )


def _retry_after(fmt: str, answer: Any) -> float | None:
    if fmt == "telegram":
        answer = answer.get("parameters") if isinstance(answer, Mapping) else None
    elif fmt != "discord":
        return None
    value = answer.get("retry_after") if isinstance(answer, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None


def _reason(fmt: str, text: str, answer: Any) -> str | None:
    """The service's reason for a failure: Slack's error string, Telegram's
    ``description`` (and where a migrated group went), Discord's and Mattermost's
    ``message``. None for ``generic``: an unknown receiver's body is not quoted."""
    if fmt == "generic" or not text:
        return None
    if not isinstance(answer, Mapping):
        return _one_line(text) if fmt in ("slack", "teams") else None
    if fmt == "telegram":
        reason = str(answer.get("description") or "")
        parameters = answer.get("parameters")
        moved = parameters.get("migrate_to_chat_id") if isinstance(parameters, Mapping) else None
        if isinstance(moved, int) and not isinstance(moved, bool):
            reason += f" (migrate_to_chat_id {moved}: set chat_id to it)"
        return _one_line(reason) or None
    message = answer.get("message") or answer.get("error")
    if message is None:
        return None
    code = answer.get("code") if fmt == "discord" else answer.get("id")
    return _one_line(f"{message} ({code})" if code not in (None, "") else str(message))


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"
