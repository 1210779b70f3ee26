"""What an alert looks like on the wire: the alert JSON, and one message per chat format.

Pure functions, no I/O, so every format's body can be tested without a server. Chat
messages share one reading order (marker, event, severity, rule; summary; where; values;
when) and differ only in markup and escaping. Every free-text field is clipped before
markup, so no message exceeds its service's limit because of one long description.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from balwatch.alert import group_text
from balwatch.sink import AlertDoc

ChatFormat = Literal["slack", "mattermost", "discord", "telegram", "teams"]

_MARKERS: Final = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
_RESOLVED_MARKER: Final = "✅"
_UNKNOWN_MARKER: Final = "⚪"
_ELLIPSIS: Final = "…"
# Bounds per field, chosen so that all of them together stay under Telegram's limit.
_TEXT_LIMIT: Final = 500
_FACT_LIMIT: Final = 80
_MAX_VALUES: Final = 12
TELEGRAM_LIMIT: Final = 4096
DISCORD_LIMIT: Final = 2000


def encode_alert(alert: AlertDoc) -> bytes:
    """The alert JSON (docs/alerts.md) as sent to MQTT and generic webhooks.

    Compact and UTF-8, so a signature is computed over exactly the bytes on the wire.
    Raises TypeError/ValueError for a document that is not plain JSON data.
    """
    return json.dumps(dict(alert), ensure_ascii=False, separators=(",", ":")).encode()


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, ending in an ellipsis if cut.

    Counted in UTF-16 units, the strictest way chat services count: an emoji counts two.
    """
    if _utf16_len(text) <= limit:
        return text
    budget = limit - 1  # the ellipsis
    out: list[str] = []
    for char in text:
        budget -= _utf16_len(char)
        if budget < 0:
            break
        out.append(char)
    return "".join(out) + _ELLIPSIS


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class Card:
    """The human-readable parts of one alert, before any markup."""

    marker: str
    event: str  # FIRING, REPEAT or RESOLVED
    severity: str
    rule: str
    summary: str
    description: str
    facts: tuple[tuple[str, str], ...]

    @property
    def title(self) -> str:
        return f"{self.marker} {self.event} {self.severity}: {self.rule}"


def card(alert: AlertDoc) -> Card:
    """Pick and clip the fields a person reads; tolerant of missing optional fields."""
    event = _text(alert.get("event") or alert.get("status") or "firing").lower()
    severity = _text(alert.get("severity") or "info").lower()
    marker = _RESOLVED_MARKER if event == "resolved" else _MARKERS.get(severity, _UNKNOWN_MARKER)
    summary = _text(alert.get("summary"))
    description = _text(alert.get("description"))
    if description == summary:
        description = ""
    return Card(
        marker=marker,
        event=event.upper(),
        severity=severity,
        rule=clip(_text(alert.get("rule")), _FACT_LIMIT),
        summary=clip(summary or _text(alert.get("expression")), _TEXT_LIMIT),
        description=clip(description, _TEXT_LIMIT),
        facts=_facts(alert, resolved=event == "resolved"),
    )


def _facts(alert: AlertDoc, *, resolved: bool) -> tuple[tuple[str, str], ...]:
    group = alert.get("group")  # a portfolio rule's group: its keys say where
    facts = [("Group", group_text(group))] if isinstance(group, Mapping) else _row_facts(alert)
    values = alert.get("values")
    if isinstance(values, Mapping):
        items = list(values.items())
        facts.extend((_text(name), _text(value)) for name, value in items[:_MAX_VALUES])
        if len(items) > _MAX_VALUES:
            facts.append(("…", f"{len(items) - _MAX_VALUES} more values"))
    if alert.get("started_at"):
        facts.append(("Since", _text(alert.get("started_at"))))
    if resolved and alert.get("resolved_at"):
        facts.append(("Resolved", _text(alert.get("resolved_at"))))
    return tuple((clip(k, _FACT_LIMIT), clip(v, _FACT_LIMIT)) for k, v in facts if v)


def _row_facts(alert: AlertDoc) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = [("Account", _text(alert.get("account")))]
    if alert.get("asset") is not None:
        facts.append(("Asset", _text(alert.get("asset"))))
    exchange, venue = _text(alert.get("exchange")), _text(alert.get("venue"))
    if exchange:
        where = f"{exchange}/{venue}" if venue and venue != exchange else exchange
        facts.append(("Exchange", where))
    return facts


def _text(value: object) -> str:
    return "" if value is None else str(value)


# --- chat bodies ----------------------------------------------------------------------


def _lines(c: Card, bold: Callable[[str], str], escape: Callable[[str], str]) -> str:
    head = f"{c.marker} {bold(c.event)} {escape(c.severity)}: {bold(escape(c.rule))}"
    lines = [head, escape(c.summary), escape(c.description)]
    lines += [f"{escape(name)}: {escape(value)}" for name, value in c.facts]
    return "\n".join(line for line in lines if line)


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); these three are its escapes.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _same(text: str) -> str:
    return text


def slack_text(alert: AlertDoc) -> str:
    return _lines(card(alert), lambda s: f"*{s}*", _slack_escape)


def markdown_text(alert: AlertDoc) -> str:
    """Mattermost and Discord: Markdown, bold with ``**``."""
    return _lines(card(alert), lambda s: f"**{s}**", _same)


def telegram_text(alert: AlertDoc) -> str:
    """For ``parse_mode: HTML``: every piece of alert text is HTML-escaped."""
    return _lines(card(alert), lambda s: f"<b>{s}</b>", lambda s: html.escape(s, quote=False))


def slack(alert: AlertDoc) -> dict[str, Any]:
    return {"text": slack_text(alert)}


def mattermost(alert: AlertDoc) -> dict[str, Any]:
    return {"text": markdown_text(alert)}


def discord(alert: AlertDoc) -> dict[str, Any]:
    # No pings: an "@everyone" in a summary must not notify a whole server.
    return {
        "content": clip(markdown_text(alert), DISCORD_LIMIT),
        "allowed_mentions": {"parse": []},
    }


def telegram(alert: AlertDoc, chat_id: str) -> dict[str, Any]:
    return {"chat_id": chat_id, "text": telegram_text(alert), "parse_mode": "HTML"}


_TEAMS_COLORS: Final = {"critical": "Attention", "warning": "Warning", "info": "Accent"}


def teams(alert: AlertDoc) -> dict[str, Any]:
    """A Workflows (Power Automate) "post card" message carrying an Adaptive Card 1.4."""
    c = card(alert)
    color = "Good" if c.event == "RESOLVED" else _TEAMS_COLORS.get(c.severity, "Default")
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": c.title,
            "weight": "Bolder",
            "size": "Medium",
            "color": color,
            "wrap": True,
        }
    ]
    texts = [text for text in (c.summary, c.description) if text]
    body += [{"type": "TextBlock", "text": text, "wrap": True} for text in texts]
    body.append(
        {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in c.facts]}
    )
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                    "msteams": {"width": "Full"},
                },
            }
        ],
    }


def chat_payload(fmt: ChatFormat, alert: AlertDoc, *, chat_id: str | None = None) -> dict[str, Any]:
    """The JSON body for one chat format (``chat_id`` is Telegram's, required there)."""
    if fmt == "telegram":
        if chat_id is None:
            raise ValueError("telegram needs a chat_id")
        return telegram(alert, chat_id)
    return _CHAT[fmt](alert)


_CHAT: Final[Mapping[str, Callable[[AlertDoc], dict[str, Any]]]] = {
    "slack": slack,
    "mattermost": mattermost,
    "discord": discord,
    "teams": teams,
}
