"""Chat rendering: markers, labels, escaping per service, and every service's length limit."""

from __future__ import annotations

import html
import json
import re

import pytest

from balwatch.sinks import formats
from balwatch.sinks.formats import DISCORD_LIMIT, TELEGRAM_LIMIT, card, chat_payload, clip
from tests.sinks.conftest import ALERT, alert, resolved


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_encode_alert_is_compact_utf8_json_of_the_document() -> None:
    doc = alert(summary="Zürich ≥ 5000 ₿")
    raw = formats.encode_alert(doc)
    assert json.loads(raw) == doc
    assert b", " not in raw and b": " not in raw
    assert "Zürich ≥ 5000 ₿".encode() in raw


@pytest.mark.parametrize(
    ("changes", "marker", "event"),
    [
        ({}, "🔴", "FIRING"),
        ({"severity": "warning"}, "🟠", "FIRING"),
        ({"severity": "info", "event": "repeat"}, "🔵", "REPEAT"),
        ({"severity": "bogus"}, "⚪", "FIRING"),
        (resolved(ALERT, id="r"), "✅", "RESOLVED"),
    ],
)
def test_marker_and_event_label(changes: dict[str, object], marker: str, event: str) -> None:
    c = card(alert(**changes))
    assert (c.marker, c.event) == (marker, event)
    assert c.title.startswith(f"{marker} {event} ")


def test_card_reads_where_what_and_when() -> None:
    c = card(ALERT)
    assert c.summary == "bitso-treasury USDT: only 4210.55 available"
    assert c.description == "Hot wallet running low"
    assert c.facts == (
        ("Account", "bitso-treasury"),
        ("Asset", "USDT"),
        ("Exchange", "bitso"),
        ("available", "4210.55"),
        ("Since", "2026-11-25T10:00:00Z"),
    )


def test_card_for_account_scope_venues_and_resolve() -> None:
    stale = card(alert(asset=None, exchange="coinapi", venue="BINANCE", values={"age": "312"}))
    assert ("Exchange", "coinapi/BINANCE") in stale.facts
    assert "Asset" not in dict(stale.facts)
    done = card(resolved(ALERT, id="r"))
    assert dict(done.facts)["Resolved"] == "2026-11-25T10:30:00Z"


def test_empty_summary_falls_back_to_the_expression() -> None:
    assert card(alert(summary="", description="")).summary == "available < 5000"


def test_slack_escapes_its_control_characters() -> None:
    text = formats.slack_text(alert(summary="<!channel> a < b & c > d"))
    assert "&lt;!channel&gt; a &lt; b &amp; c &gt; d" in text
    assert text.startswith("🔴 *FIRING* critical: *low-available*")


def test_mattermost_is_markdown() -> None:
    assert formats.mattermost(ALERT) == {"text": formats.markdown_text(ALERT)}
    assert formats.markdown_text(ALERT).splitlines() == [
        "🔴 **FIRING** critical: **low-available**",
        "bitso-treasury USDT: only 4210.55 available",
        "Hot wallet running low",
        "Account: bitso-treasury",
        "Asset: USDT",
        "Exchange: bitso",
        "available: 4210.55",
        "Since: 2026-11-25T10:00:00Z",
    ]


def test_telegram_escapes_html_and_keeps_its_own_tags() -> None:
    payload = chat_payload("telegram", alert(summary="<b>x</b> & y"), chat_id="-100123")
    assert payload["chat_id"] == "-100123"
    assert payload["parse_mode"] == "HTML"
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in payload["text"]
    assert payload["text"].startswith("🔴 <b>FIRING</b> critical: <b>low-available</b>")


def test_telegram_needs_a_chat_id() -> None:
    with pytest.raises(ValueError, match="chat_id"):
        chat_payload("telegram", ALERT)


def _huge_alert() -> dict[str, object]:
    big = "<&>" * 5000
    return alert(
        summary=big,
        description=big + "!",
        rule="r" * 500,
        account="a" * 500,
        values={f"metric_{n}_{'x' * 100}": "9" * 300 for n in range(50)},
    )


def test_every_chat_message_stays_within_its_service_limit() -> None:
    doc = _huge_alert()
    telegram = chat_payload("telegram", doc, chat_id="1")["text"]
    visible = html.unescape(re.sub(r"</?b>", "", telegram))  # what Telegram counts
    assert utf16_len(visible) <= TELEGRAM_LIMIT
    discord = chat_payload("discord", doc)["content"]
    assert utf16_len(discord) == DISCORD_LIMIT
    assert discord.endswith("…")


def test_discord_disables_mentions() -> None:
    payload = chat_payload("discord", alert(summary="@everyone look"))
    assert payload["allowed_mentions"] == {"parse": []}
    assert "@everyone look" in payload["content"]


def test_clip_counts_utf16_units_and_never_splits_a_character() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 3) == "ab…"
    assert clip("🔴🔴🔴", 6) == "🔴🔴🔴"
    assert clip("🔴🔴🔴", 5) == "🔴🔴…"
    assert clip("🔴🔴🔴", 4) == "🔴…"


def test_teams_adaptive_card() -> None:
    payload = chat_payload("teams", ALERT)
    assert payload["type"] == "message"
    [attachment] = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert (content["type"], content["version"]) == ("AdaptiveCard", "1.4")
    title, summary, description, facts = content["body"]
    assert title["text"] == "🔴 FIRING critical: low-available"
    assert title["color"] == "Attention"
    assert summary["text"] == ALERT["summary"]
    assert description["text"] == ALERT["description"]
    assert {"title": "available", "value": "4210.55"} in facts["facts"]
    assert (
        chat_payload("teams", resolved(ALERT, id="r"))["attachments"][0]["content"]["body"][0][
            "color"
        ]
        == "Good"
    )
