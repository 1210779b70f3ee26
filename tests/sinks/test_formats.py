"""Chat rendering: markers, labels, escaping per service, and every service's length limit."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from balwatch.sink import AlertGroup
from balwatch.sinks import formats
from balwatch.sinks.formats import (
    MATTERMOST_LIMIT,
    SLACK_LIMIT,
    TELEGRAM_LIMIT,
    ChatFormat,
    ChatOptions,
    card,
    chat_group_payload,
    chat_payload,
    clip,
)
from tests.sinks.conftest import ALERT, alert, resolved


def group(*alerts: dict[str, Any], labels: dict[str, str] | None = None) -> AlertGroup:
    return AlertGroup("m1", labels or {}, list(alerts))


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
    payload = chat_payload("slack", alert(summary="<!channel> a < b & c > d <@U123>"))
    [attachment] = payload["attachments"]
    assert "&lt;!channel&gt; a &lt; b &amp; c &gt; d &lt;@U123&gt;" in attachment["text"]
    assert payload["text"] == "🔴 FIRING critical: low-available"
    assert "<" not in json.dumps(payload).replace("\\u003c", "")  # nothing Slack would parse


def test_slack_attachment_is_coloured_by_severity_and_green_when_resolved() -> None:
    colours = [
        chat_payload("slack", doc)["attachments"][0]["color"]
        for doc in (
            ALERT,
            alert(severity="warning"),
            alert(severity="info"),
            resolved(ALERT, id="r"),
        )
    ]
    assert colours == ["danger", "warning", "#439FE0", "good"]
    attachment = chat_payload("slack", alert(url="https://bw.example/api/alerts/5f"))[
        "attachments"
    ][0]
    assert attachment["title_link"] == "https://bw.example/api/alerts/5f"
    assert {"title": "available", "value": "4210.55", "short": True} in attachment["fields"]


def test_mattermost_is_markdown() -> None:
    assert chat_payload("mattermost", ALERT)["text"].splitlines() == [
        "🔴 **FIRING** critical: **low-available**",
        "bitso-treasury USDT: only 4210.55 available",
        "Hot wallet running low",
        "Account: bitso-treasury",
        "Asset: USDT",
        "Exchange: bitso",
        "available: 4210.55",
        "Since: 2026-11-25T10:00:00Z",
    ]


PINGS = "@channel @here @all <!channel> <!here> @alice"


@pytest.mark.parametrize("fmt", ["mattermost", "telegram"])
def test_mentions_in_alert_text_do_not_ping(fmt: ChatFormat) -> None:
    """Mattermost reads @channel, @here, @all, @name and Slack's <!channel>; Telegram
    notifies a member named with @name. In alert text none of them may ping."""
    options = ChatOptions(chat_id="-1001")
    doc = alert(summary=PINGS, description=PINGS, account="@ops", rule="r@all")
    texts = [
        chat_payload(fmt, doc, options)["text"],
        chat_group_payload(fmt, group(doc, alert(id="2", fingerprint="f2")), options)["text"],
    ]
    for text in texts:
        assert not re.search(r"@(channel|here|all|alice|ops)\b", text), text
        assert "<!" not in text
        assert "@\u200bchannel" in text  # still reads the same


def test_mention_is_the_only_ping_and_only_for_firing_severities_that_have_one() -> None:
    mention = {"critical": "<!here>", "warning": "<!channel>"}
    slack = ChatOptions(mention=mention)
    assert chat_payload("slack", ALERT, slack)["text"].startswith("<!here> 🔴")
    assert chat_payload("slack", alert(severity="info"), slack)["text"].startswith("🔵")
    assert "<!" not in chat_payload("slack", resolved(ALERT, id="r"), slack)["text"]
    both = group(alert(severity="warning", fingerprint="w"), ALERT)
    assert chat_group_payload("slack", both, slack)["text"].startswith("<!here> <!channel> ")

    mattermost = ChatOptions(mention={"critical": "@here"})
    assert chat_payload("mattermost", ALERT, mattermost)["text"].startswith("@here 🔴")

    discord = ChatOptions(mention={"critical": "123456789012345678"})
    payload = chat_payload("discord", ALERT, discord)
    assert payload["content"] == "<@&123456789012345678>"
    assert payload["allowed_mentions"] == {"parse": [], "roles": ["123456789012345678"]}
    quiet = chat_payload("discord", alert(severity="warning", summary="@everyone"), discord)
    assert quiet["allowed_mentions"] == {"parse": []} and "content" not in quiet


def test_telegram_escapes_html_and_keeps_its_own_tags() -> None:
    payload = chat_payload("telegram", alert(summary="<b>x</b> & y"), ChatOptions("-100123"))
    assert payload["chat_id"] == "-100123"
    assert payload["parse_mode"] == "HTML"
    assert payload["link_preview_options"] == {"is_disabled": True}
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in payload["text"]
    assert payload["text"].startswith("🔴 <b>FIRING</b> critical: <b>low-available</b>")
    assert "message_thread_id" not in payload


def test_telegram_topic_and_quiet_messages() -> None:
    options = ChatOptions("-100123", message_thread_id=7)
    assert chat_payload("telegram", ALERT, options)["message_thread_id"] == 7
    quiet = [
        chat_payload("telegram", doc, options)["disable_notification"]
        for doc in (ALERT, alert(severity="warning"), alert(severity="info"), resolved(ALERT, "r"))
    ]
    assert quiet == [False, False, True, True]
    loud = ChatOptions("-100123", quiet=frozenset())
    assert chat_payload("telegram", resolved(ALERT, "r"), loud)["disable_notification"] is False
    # A group message is quiet only when every alert in it is.
    mixed = group(resolved(ALERT, "r"), alert(id="2", fingerprint="f2"))
    assert chat_group_payload("telegram", mixed, options)["disable_notification"] is False


def test_telegram_needs_a_chat_id() -> None:
    with pytest.raises(ValueError, match="chat_id"):
        chat_payload("telegram", ALERT)


def _huge_alert(**changes: object) -> dict[str, object]:
    big = "<&>@" * 5000
    fields: dict[str, object] = {
        "summary": big,
        "description": big + "!",
        "rule": "r" * 500,
        "account": "a" * 500,
        "values": {f"metric_{n}_{'x' * 100}": "9" * 300 for n in range(50)},
        "url": "https://balwatch.example/api/alerts/" + "f" * 64,
    }
    return alert(**{**fields, **changes})


def _visible_telegram(text: str) -> str:
    """What Telegram counts: the text once its HTML tags are parsed."""
    return html.unescape(re.sub(r"</?(b|i|a)( [^>]*)?>", "", text))


def test_every_chat_message_stays_within_its_service_limit() -> None:
    doc = _huge_alert()
    telegram = chat_payload("telegram", doc, ChatOptions("1"))["text"]
    assert utf16_len(_visible_telegram(telegram)) <= TELEGRAM_LIMIT
    [embed] = chat_payload("discord", doc)["embeds"]
    assert utf16_len(embed["title"]) <= 256 and utf16_len(embed["description"]) <= 4096
    assert discord_total([embed]) <= 6000


def discord_total(embeds: list[dict[str, Any]]) -> int:
    """Discord's count over a message's embeds: titles, descriptions, fields, footers."""
    total = 0
    for embed in embeds:
        total += utf16_len(embed.get("title", "")) + utf16_len(embed.get("description", ""))
        total += utf16_len(embed.get("footer", {}).get("text", ""))
        for item in embed.get("fields", []):
            total += utf16_len(item["name"]) + utf16_len(item["value"])
    return total


@pytest.mark.parametrize("count", [2, 50, 400, 3000])
def test_a_group_lists_what_fits_and_says_how_many_more(count: int) -> None:
    docs = [
        _huge_alert(id=f"a{n}", fingerprint=f"fp{n}", summary=f"alert {n} " + "x" * 400)
        for n in range(count)
    ]
    docs[-1] = resolved(docs[-1], id="r")
    big = group(*docs)
    listed = {}
    telegram = chat_group_payload("telegram", big, ChatOptions("-1"))["text"]
    assert utf16_len(_visible_telegram(telegram)) <= TELEGRAM_LIMIT
    listed["telegram"] = telegram
    embeds = chat_group_payload("discord", big)["embeds"]
    assert len(embeds) <= 10 and discord_total(embeds) <= 6000
    assert all(utf16_len(e["description"]) <= 4096 for e in embeds)
    assert all(utf16_len(e["title"]) <= 256 for e in embeds)
    listed["discord"] = "\n".join(e["description"] for e in embeds)
    text = chat_group_payload("mattermost", big)["text"]
    assert utf16_len(text) <= MATTERMOST_LIMIT
    listed["mattermost"] = text
    slack = chat_group_payload("slack", big)
    assert utf16_len(json.dumps(slack, ensure_ascii=False)) <= SLACK_LIMIT
    listed["slack"] = "\n".join(a["text"] for a in slack["attachments"])
    teams = chat_group_payload("teams", big)
    assert len(json.dumps(teams).encode()) <= 28 * 1024
    listed["teams"] = "\n".join(b["text"] for b in teams["attachments"][0]["content"]["body"])
    for fmt, shown in listed.items():
        names = re.findall(r"alert (\d+) ", shown)
        hidden = count - len(names)
        if hidden:
            assert f"… and {hidden} more" in shown, fmt
        else:
            assert "more" not in shown, fmt
        assert names == [str(n) for n in range(count - 1)][: len(names)] or hidden == 0, fmt
        assert len(names) >= min(count, 2), fmt


def test_a_group_message_lists_firing_then_resolved_with_links_and_instance() -> None:
    docs = [
        alert(id="1", fingerprint="a", account="acct-a", severity="warning"),
        resolved(alert(fingerprint="b", account="acct-b"), id="2"),
        alert(id="3", fingerprint="c", account="acct-c", url="https://bw.example/api/alerts/c"),
        alert(id="4", fingerprint="d", account="acct-d", asset=None, venue=None),
    ]
    docs = [{**doc, "instance": "treasury-prod"} for doc in docs]
    payload = chat_group_payload("mattermost", group(*docs, labels={"rule": "low-available"}))
    assert payload["text"].splitlines() == [
        "**🔴 FIRING 3 · RESOLVED 1: low-available**",
        "🟠 acct-a USDT: bitso-treasury USDT: only 4210.55 available",
        "🔴 [acct-c USDT](https://bw.example/api/alerts/c): "
        "bitso-treasury USDT: only 4210.55 available",
        "🔴 acct-d: bitso-treasury USDT: only 4210.55 available",
        "✅ acct-b USDT: bitso-treasury USDT: only 4210.55 available",
        "_instance: treasury-prod_",
    ]
    slack = chat_group_payload("slack", group(*docs, labels={"rule": "low-available"}))
    assert [(a["title"], a["color"]) for a in slack["attachments"]] == [
        ("Firing (3)", "danger"),
        ("Resolved (1)", "good"),
    ]
    assert "<https://bw.example/api/alerts/c|acct-c USDT>" in slack["attachments"][0]["text"]
    assert slack["attachments"][-1]["footer"] == "treasury-prod"
    embeds = chat_group_payload("discord", group(*docs))["embeds"]
    assert [e["color"] for e in embeds] == [0xD32F2F, 0x2E7D32]
    assert embeds[-1]["footer"] == {"text": "instance: treasury-prod"}
    assert "[acct-c USDT](https://bw.example/api/alerts/c)" in embeds[0]["description"]
    telegram = chat_group_payload("telegram", group(*docs), ChatOptions("-1"))["text"]
    assert '<a href="https://bw.example/api/alerts/c">acct-c USDT</a>' in telegram


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
