"""What an alert looks like on the wire: the alert JSON, and chat messages per service.

Pure functions, no I/O, so every format's body can be tested without a server.

A chat message carries one alert (its card: marker, event, severity, rule; summary; where
(account, asset, exchange; a portfolio rule's alert its group); values; when; instance) or a
group of them (a title that counts them, then one line per alert, firing ones first, then
resolved ones, each naming where as a card does and linking to its ``url`` where it has one,
and the ``instance``). Messages differ per service only in markup, escaping and limits:

- every free-text field is clipped before markup, and a group lists as many alerts as fit
  the service's limit, then "… and N more";
- nothing taken from an alert can ping anyone: Slack's ``<!channel>`` and ``<@U…>`` are
  escaped, Mattermost's and Telegram's ``@name`` and ``<!channel>`` are broken with a zero
  width space, Discord gets ``allowed_mentions`` that allows none. The one way a message
  pings is the sink's ``mention`` for a severity, added for firing alerts of it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from balwatch.alert import SEVERITY_RANK, group_text
from balwatch.sink import AlertDoc, AlertGroup

ChatFormat = Literal["slack", "mattermost", "discord", "telegram", "teams"]

_MARKERS: Final = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
_RESOLVED_MARKER: Final = "✅"
_UNKNOWN_MARKER: Final = "⚪"
_ELLIPSIS: Final = "…"
_ZWSP: Final = "\u200b"  # breaks a mention without changing what a reader sees
# Bounds per field, chosen so that all of them together stay under Telegram's limit.
_TEXT_LIMIT: Final = 500
_FACT_LIMIT: Final = 80
_MAX_VALUES: Final = 12
_LINE_LIMIT: Final = 300  # one alert's line in a group message
# The services' own limits (docs/chat.md cites them), in UTF-16 units, the strictest count.
TELEGRAM_LIMIT: Final = 4096  # message text
DISCORD_TITLE_LIMIT: Final = 256
DISCORD_DESCRIPTION_LIMIT: Final = 4096
DISCORD_EMBEDS_LIMIT: Final = 6000  # every title, description, field and footer together
DISCORD_FIELDS: Final = 25
DISCORD_FIELD_VALUE_LIMIT: Final = 1024
SLACK_LIMIT: Final = 40_000  # Slack truncates longer messages
MATTERMOST_LIMIT: Final = 16_383  # a post's message
TEAMS_LIMIT: Final = 12_000  # text in the card: the whole request must stay under 28 KB


def encode_alert(alert: AlertDoc) -> bytes:
    """The alert JSON (docs/alerts.md) as sent to MQTT and generic webhooks.

    Compact and UTF-8, so a signature is computed over exactly the bytes on the wire.
    Raises TypeError/ValueError for a document that is not plain JSON data.
    """
    return json.dumps(dict(alert), ensure_ascii=False, separators=(",", ":")).encode()


def encode_group(group: AlertGroup) -> bytes:
    """A group message to a ``generic`` webhook that groups: its id, the grouping fields'
    values and every alert document in it, in the same compact UTF-8 JSON."""
    doc = {
        "version": 1,
        "id": group.id,
        "group": dict(group.labels),
        "alerts": [dict(alert) for alert in group.alerts],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, ending in an ellipsis if cut.

    Counted in UTF-16 units, the strictest way chat services count: an emoji counts two.
    """
    if 2 * len(text) <= limit:  # no character is more than two units
        return text
    units = text.encode("utf-16-le")
    if len(units) <= 2 * limit:
        return text
    # A cut through a surrogate pair leaves half a character, which decoding drops.
    return units[: 2 * (limit - 1)].decode("utf-16-le", "ignore") + _ELLIPSIS


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """A chat sink's settings that change its messages."""

    chat_id: str | None = None  # telegram, required there
    message_thread_id: int | None = None  # telegram forum topic
    # Telegram: firing severities, and "resolved", sent without a sound.
    quiet: frozenset[str] = frozenset({"info", "resolved"})
    # Severity -> who a firing alert of that severity pings (slack, mattermost, discord).
    mention: Mapping[str, str] = field(default_factory=dict)


# --- what a person reads, before markup -------------------------------------------------


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
    url: str | None = None

    @property
    def title(self) -> str:
        return f"{self.marker} {self.event} {self.severity}: {self.rule}"


def card(alert: AlertDoc) -> Card:
    """Pick and clip the fields a person reads; tolerant of missing optional fields."""
    event = _event(alert)
    severity = _text(alert.get("severity") or "info").lower()
    summary = _text(alert.get("summary"))
    description = _text(alert.get("description"))
    if description == summary:
        description = ""
    return Card(
        marker=_marker(alert),
        event=event.upper(),
        severity=severity,
        rule=clip(_text(alert.get("rule")), _FACT_LIMIT),
        summary=clip(summary or _text(alert.get("expression")), _TEXT_LIMIT),
        description=clip(description, _TEXT_LIMIT),
        facts=_facts(alert, resolved=event == "resolved"),
        url=_url(alert),
    )


def _event(alert: AlertDoc) -> str:
    return _text(alert.get("event") or alert.get("status") or "firing").lower()


def _resolved(alert: AlertDoc) -> bool:
    return _event(alert) == "resolved"


def _severity(alert: AlertDoc) -> str:
    return _text(alert.get("severity") or "info").lower()


def _marker(alert: AlertDoc) -> str:
    if _resolved(alert):
        return _RESOLVED_MARKER
    return _MARKERS.get(_severity(alert), _UNKNOWN_MARKER)


def _url(alert: AlertDoc) -> str | None:
    url = alert.get("url")
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


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
    if alert.get("instance"):
        facts.append(("Instance", _text(alert.get("instance"))))
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


@dataclass(frozen=True, slots=True)
class _Line:
    """One alert of a group message."""

    marker: str
    subject: str  # which account, venue and asset
    summary: str
    url: str | None


@dataclass(frozen=True, slots=True)
class _Digest:
    """A group message before markup."""

    title: str
    firing: tuple[_Line, ...]
    resolved: tuple[_Line, ...]
    severity: str  # the worst firing one, or "resolved"
    instance: str  # the instances the alerts come from


def _digest(alerts: Sequence[AlertDoc], labels: Mapping[str, str]) -> _Digest:
    firing = [a for a in alerts if not _resolved(a)]
    resolved = [a for a in alerts if _resolved(a)]
    worst = max((_severity(a) for a in firing), key=lambda s: SEVERITY_RANK.get(s, -1), default="")
    counts = [f"FIRING {len(firing)}"] if firing else []
    counts += [f"RESOLVED {len(resolved)}"] if resolved else []
    marker = _MARKERS.get(worst, _UNKNOWN_MARKER) if firing else _RESOLVED_MARKER
    name = " · ".join(value for value in labels.values() if value)
    title = f"{marker} {' · '.join(counts)}{f': {name}' if name else ''}"
    instances = dict.fromkeys(_text(a.get("instance")) for a in alerts if a.get("instance"))
    return _Digest(
        title=clip(title, DISCORD_TITLE_LIMIT),
        firing=tuple(_line(a) for a in firing),
        resolved=tuple(_line(a) for a in resolved),
        severity=worst if firing else "resolved",
        instance=clip(", ".join(instances), _FACT_LIMIT),
    )


def _line(alert: AlertDoc) -> _Line:
    group = alert.get("group")  # a portfolio rule's group: its keys say which, as in a card
    if isinstance(group, Mapping):
        subject = group_text(group)
    else:
        account, asset = _text(alert.get("account")), _text(alert.get("asset"))
        exchange, venue = _text(alert.get("exchange")), _text(alert.get("venue"))
        parts = [account, venue if venue and venue != exchange else "", asset]
        subject = " ".join(part for part in parts if part) or _text(alert.get("rule"))
    summary = _text(alert.get("summary")) or _text(alert.get("expression"))
    return _Line(
        marker=_marker(alert),
        subject=clip(subject, _FACT_LIMIT),
        summary=clip(summary, _LINE_LIMIT),
        url=_url(alert),
    )


def _fitting(lines: Sequence[str], budget: int, after: int = 0) -> int:
    """How many of ``lines`` (one newline each) fit in ``budget`` UTF-16 units while
    leaving room for the "… and N more" line that says how many did not (``after``: lines
    that come later, elsewhere, and may not fit either)."""
    used = 0
    for index, line in enumerate(lines):
        left = len(lines) - index - 1 + after
        reserve = _utf16_len(_more(left)) + 1 if left else 0
        cost = _utf16_len(line) + 1
        if used + cost + reserve > budget:
            return index
        used += cost
    return len(lines)


def _more(hidden: int) -> str:
    """The last line of a group message that could not list every alert."""
    return f"{_ELLIPSIS} and {hidden} more"


@dataclass(frozen=True, slots=True)
class _Sections:
    """The lines of a group message that fit, and how many alerts did not."""

    firing: list[str]
    resolved: list[str]
    hidden: int

    @property
    def more(self) -> list[str]:
        return [_more(self.hidden)] if self.hidden else []


def _sections(
    digest: _Digest, render: Callable[[_Line], str], budget: int, each: int | None = None
) -> _Sections:
    """The firing lines, then the resolved ones, that fit ``budget`` together and ``each``
    alone (Discord limits each embed too), leaving room for the "… and N more" line."""
    firing = [render(line) for line in digest.firing]
    resolved = [render(line) for line in digest.resolved]
    each = budget if each is None else each
    shown = _fitting(firing, min(each, budget), after=len(resolved))
    if shown < len(firing):
        return _Sections(firing[:shown], [], len(firing) - shown + len(resolved))
    used = sum(_utf16_len(line) + 1 for line in firing)
    shown = _fitting(resolved, min(each, budget - used))
    return _Sections(firing, resolved[:shown], len(resolved) - shown)


def _mentions(alerts: Sequence[AlertDoc], mention: Mapping[str, str]) -> list[str]:
    """The sink's mentions for the severities of the firing alerts, most severe first."""
    severities = {_severity(a) for a in alerts if not _resolved(a)}
    ordered = sorted(severities, key=lambda s: -SEVERITY_RANK.get(s, -1))
    return list(dict.fromkeys(mention[s] for s in ordered if s in mention))


# --- escaping per service ---------------------------------------------------------------


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); these three are its escapes.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unping(text: str) -> str:
    """``@name`` and Slack-style ``<!channel>`` (which Mattermost also reads) made inert."""
    return text.replace("@", "@" + _ZWSP).replace("<!", "<" + _ZWSP + "!")


def _telegram_escape(text: str) -> str:
    return _unping(html.escape(text, quote=False))


def _markdown_link(text: str, url: str | None) -> str:
    if url is None:
        return text
    label = text.replace("[", "\\[").replace("]", "\\]")
    return f"[{label}]({url.replace(')', '%29').replace(' ', '%20')})"


def _card_lines(c: Card, bold: Callable[[str], str], escape: Callable[[str], str]) -> list[str]:
    head = f"{c.marker} {bold(c.event)} {escape(c.severity)}: {bold(escape(c.rule))}"
    lines = [head, escape(c.summary), escape(c.description)]
    lines += [f"{escape(name)}: {escape(value)}" for name, value in c.facts]
    return [line for line in lines if line]


# --- Slack: text and attachments ----------------------------------------------------------

_SLACK_COLORS: Final = {
    "critical": "danger",
    "warning": "warning",
    "info": "#439FE0",
    "resolved": "good",
}


def _slack_color(severity: str) -> str:
    return _SLACK_COLORS.get(severity, "#9E9E9E")


def _slack_link(text: str, url: str | None) -> str:
    return text if url is None else f"<{_slack_escape(url)}|{text}>"


def slack(alerts: Sequence[AlertDoc], labels: Mapping[str, str], options: ChatOptions) -> Any:
    pings = _mentions(alerts, options.mention)
    if len(alerts) == 1:
        c = card(alerts[0])
        color = "resolved" if c.event == "RESOLVED" else c.severity
        attachment: dict[str, Any] = {
            "color": _slack_color(color),
            "title": _slack_escape(c.title),
            "text": "\n".join(_slack_escape(t) for t in (c.summary, c.description) if t),
            "fields": [
                {"title": _slack_escape(k), "value": _slack_escape(v), "short": True}
                for k, v in c.facts
            ],
            "mrkdwn_in": ["text"],
        }
        if c.url is not None:
            attachment["title_link"] = c.url
        return {"text": " ".join([*pings, _slack_escape(c.title)]), "attachments": [attachment]}
    digest = _digest(alerts, labels)

    def render(line: _Line) -> str:
        subject = _slack_link(_slack_escape(line.subject), line.url)
        return f"{line.marker} {subject}: {_slack_escape(line.summary)}"

    fit = _sections(digest, render, SLACK_LIMIT - _utf16_len(digest.title) - 1000)
    attachments: list[dict[str, Any]] = []
    for lines, severity, title in (
        (fit.firing, digest.severity, f"Firing ({len(digest.firing)})"),
        (fit.resolved, "resolved", f"Resolved ({len(digest.resolved)})"),
    ):
        if lines or (severity == "resolved" and not attachments):
            attachments.append(
                {"color": _slack_color(severity), "title": title, "text": "\n".join(lines)}
            )
    attachments[-1]["text"] = "\n".join([attachments[-1]["text"], *fit.more])
    if digest.instance:
        attachments[-1]["footer"] = _slack_escape(digest.instance)
    return {"text": " ".join([*pings, _slack_escape(digest.title)]), "attachments": attachments}


# --- Mattermost: Markdown text ------------------------------------------------------------


def mattermost(alerts: Sequence[AlertDoc], labels: Mapping[str, str], options: ChatOptions) -> Any:
    pings = " ".join(_mentions(alerts, options.mention))
    if len(alerts) == 1:
        c = card(alerts[0])
        lines = _card_lines(c, lambda s: f"**{s}**", _unping)
        if c.url is not None:
            lines.append(_markdown_link("Open in balwatch", c.url))
        text = "\n".join(lines)
        return {"text": f"{pings} {text}" if pings else text}
    digest = _digest(alerts, labels)

    def render(line: _Line) -> str:
        subject = _markdown_link(_unping(line.subject), line.url)
        return f"{line.marker} {subject}: {_unping(line.summary)}"

    head = f"{pings} **{_unping(digest.title)}**" if pings else f"**{_unping(digest.title)}**"
    footer = f"_instance: {_unping(digest.instance)}_" if digest.instance else ""
    budget = MATTERMOST_LIMIT - _utf16_len(head) - _utf16_len(footer) - 8
    fit = _sections(digest, render, budget)
    lines = [head, *fit.firing, *fit.resolved, *fit.more, footer]
    return {"text": "\n".join(line for line in lines if line)}


# --- Discord: embeds ----------------------------------------------------------------------

_DISCORD_COLORS: Final = {
    "critical": 0xD32F2F,
    "warning": 0xF57C00,
    "info": 0x1976D2,
    "resolved": 0x2E7D32,
}


def _discord_roles(pings: Sequence[str]) -> list[str]:
    return [ping.removeprefix("<@&").removesuffix(">") for token in pings for ping in token.split()]


def discord(alerts: Sequence[AlertDoc], labels: Mapping[str, str], options: ChatOptions) -> Any:
    roles = _discord_roles(_mentions(alerts, options.mention))
    payload: dict[str, Any] = {"allowed_mentions": {"parse": []}}
    if roles:  # the only mentions allowed: the sink's roles
        payload["allowed_mentions"]["roles"] = roles
        payload["content"] = " ".join(f"<@&{role}>" for role in roles)
    if len(alerts) == 1:
        payload["embeds"] = [_discord_card(card(alerts[0]))]
        return payload
    digest = _digest(alerts, labels)

    def render(line: _Line) -> str:
        return f"{line.marker} {_markdown_link(line.subject, line.url)}: {line.summary}"

    footer = f"instance: {digest.instance}" if digest.instance else ""
    resolved_title = f"{_RESOLVED_MARKER} RESOLVED {len(digest.resolved)}"
    # The descriptions share what the titles and footer leave of the 6000 (with room for
    # the newline that joins the last line); each stays under its own 4096.
    budget = DISCORD_EMBEDS_LIMIT - _utf16_len(digest.title + resolved_title + footer) - 2
    fit = _sections(digest, render, budget, DISCORD_DESCRIPTION_LIMIT)
    embeds: list[dict[str, Any]] = []
    if fit.firing:
        color = _DISCORD_COLORS.get(digest.severity, 0)
        embeds.append({"title": digest.title, "color": color, "description": fit.firing})
    if fit.resolved or not embeds:
        title = resolved_title if embeds else digest.title
        color = _DISCORD_COLORS.get("resolved" if embeds else digest.severity, 0)
        embeds.append({"title": title, "color": color, "description": fit.resolved})
    embeds[-1]["description"] = [*embeds[-1]["description"], *fit.more]
    for embed in embeds:
        embed["description"] = "\n".join(embed["description"])
    if footer:
        embeds[-1]["footer"] = {"text": footer}
    payload["embeds"] = embeds
    return payload


def _discord_card(c: Card) -> dict[str, Any]:
    color = "resolved" if c.event == "RESOLVED" else c.severity
    embed: dict[str, Any] = {
        "title": clip(c.title, DISCORD_TITLE_LIMIT),
        "description": "\n".join(t for t in (c.summary, c.description) if t),
        "color": _DISCORD_COLORS.get(color, 0),
        "fields": [
            {"name": name, "value": clip(value, DISCORD_FIELD_VALUE_LIMIT), "inline": True}
            for name, value in c.facts[:DISCORD_FIELDS]
        ],
    }
    if c.url is not None:
        embed["url"] = c.url
    return embed


# --- Telegram: HTML text --------------------------------------------------------------------


def telegram(alerts: Sequence[AlertDoc], labels: Mapping[str, str], options: ChatOptions) -> Any:
    if options.chat_id is None:
        raise ValueError("telegram needs a chat_id")
    if len(alerts) == 1:
        c = card(alerts[0])
        lines = _card_lines(c, lambda s: f"<b>{s}</b>", _telegram_escape)
        if c.url is not None:
            lines.append(f'<a href="{html.escape(c.url)}">Open in balwatch</a>')
        text = "\n".join(lines)
    else:
        text = _telegram_digest(_digest(alerts, labels))
    payload: dict[str, Any] = {
        "chat_id": options.chat_id,
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
        "disable_notification": all(_quiet(a, options.quiet) for a in alerts),
    }
    if options.message_thread_id is not None:
        payload["message_thread_id"] = options.message_thread_id
    return payload


def _quiet(alert: AlertDoc, quiet: frozenset[str]) -> bool:
    return ("resolved" if _resolved(alert) else _severity(alert)) in quiet


def _telegram_digest(digest: _Digest) -> str:
    def render(line: _Line) -> str:
        subject = _telegram_escape(line.subject)
        if line.url is not None:
            subject = f'<a href="{html.escape(line.url)}">{subject}</a>'
        return f"{line.marker} {subject}: {_telegram_escape(line.summary)}"

    head = f"<b>{_telegram_escape(digest.title)}</b>"
    footer = f"<i>instance: {_telegram_escape(digest.instance)}</i>" if digest.instance else ""
    # Counted with the markup, which Telegram does not count: never over its limit.
    budget = TELEGRAM_LIMIT - _utf16_len(head) - _utf16_len(footer) - 4
    fit = _sections(digest, render, budget)
    lines = [head, *fit.firing, *fit.resolved, *fit.more, footer]
    return "\n".join(line for line in lines if line)


# --- Teams: an Adaptive Card -------------------------------------------------------------------

_TEAMS_COLORS: Final = {"critical": "Attention", "warning": "Warning", "info": "Accent"}


def teams(alerts: Sequence[AlertDoc], labels: Mapping[str, str], options: ChatOptions) -> Any:
    """A Workflows (Power Automate) "post card" message carrying an Adaptive Card 1.4;
    legacy Office 365 connectors take the same message."""
    if len(alerts) == 1:
        c = card(alerts[0])
        color = "Good" if c.event == "RESOLVED" else _TEAMS_COLORS.get(c.severity, "Default")
        title = _markdown_link(c.title, c.url)
        body = [_teams_title(title, color)]
        texts = [text for text in (c.summary, c.description) if text]
        body += [{"type": "TextBlock", "text": text, "wrap": True} for text in texts]
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in c.facts]})
        return _teams_message(body)
    digest = _digest(alerts, labels)
    color = "Good" if not digest.firing else _TEAMS_COLORS.get(digest.severity, "Default")

    def render(line: _Line) -> str:
        return f"- {line.marker} {_markdown_link(line.subject, line.url)}: {line.summary}"

    fit = _sections(digest, render, TEAMS_LIMIT)
    body = [_teams_title(digest.title, color)]
    for lines in (fit.firing, fit.resolved, fit.more):
        if lines:
            body.append({"type": "TextBlock", "text": "\n".join(lines), "wrap": True})
    if digest.instance:
        text = f"instance: {digest.instance}"
        body.append({"type": "TextBlock", "text": text, "isSubtle": True, "wrap": True})
    return _teams_message(body)


def _teams_title(text: str, color: str) -> dict[str, Any]:
    return {
        "type": "TextBlock",
        "text": text,
        "weight": "Bolder",
        "size": "Medium",
        "color": color,
        "wrap": True,
    }


def _teams_message(body: list[dict[str, Any]]) -> dict[str, Any]:
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


# --- entry points -------------------------------------------------------------------------------

_Render = Callable[[Sequence[AlertDoc], Mapping[str, str], ChatOptions], Any]
_CHAT: Final[Mapping[str, _Render]] = {
    "slack": slack,
    "mattermost": mattermost,
    "discord": discord,
    "telegram": telegram,
    "teams": teams,
}


def chat_payload(fmt: ChatFormat, alert: AlertDoc, options: ChatOptions | None = None) -> Any:
    """The JSON body of one alert for a chat service (Telegram needs ``options.chat_id``)."""
    return _CHAT[fmt]([alert], {}, options or ChatOptions())


def chat_group_payload(
    fmt: ChatFormat, group: AlertGroup, options: ChatOptions | None = None
) -> Any:
    """The JSON body of a group message; a group of one reads like a single alert."""
    return _CHAT[fmt](group.alerts, group.labels, options or ChatOptions())
