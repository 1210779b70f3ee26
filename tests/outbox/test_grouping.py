"""Chat sinks through the outbox: grouping, pacing and Retry-After, against real services.

Each test runs the real worker, the real webhook sink and a real SQLite outbox against
:class:`~tests.chatservices.ChatService`, an aiohttp server answering as the chat service's
documentation says. Time is a hand-driven clock: the service stamps each request with it,
so pacing is counted where the service counts it, and no test waits for real seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from structlog.testing import capture_logs

from balwatch import redact
from balwatch.alert import placed
from balwatch.backoff import Backoff
from balwatch.config.model import WebhookSinkConfig
from balwatch.model import Balance
from balwatch.outbox.worker import Outbox, SinkWorker
from balwatch.rules.engine import AlertState, Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.secret import Secret
from balwatch.sink import Grouping
from balwatch.sinks.webhook import WebhookSink
from balwatch.state.base import AlertCommit, RoutedAlert, StateChange, StateStore
from balwatch.state.sqlite import SqliteStateStore
from tests.chatservices import LIMITS, ChatService, Service
from tests.outbox.doubles import FakeClock, ScriptedSink, alert
from tests.waiting import within
from tests.webhooks import Reply, WebhookReceiver

FORMATS = ["slack", "discord", "telegram", "mattermost", "teams"]
SERVICE: dict[str, Service] = {fmt: fmt for fmt in FORMATS}  # type: ignore[misc]
HALF = Backoff(base=1.0, cap=30.0, rand=lambda: 0.5)
T = TypeVar("T")


def chat_sink(fmt: str, url: str, **fields: Any) -> WebhookSink:
    settings = {"type": "webhook", "name": "chat", "format": fmt, "url": url, **fields}
    if fmt == "telegram":
        settings.setdefault("chat_id", "-1001234")
    return WebhookSink(WebhookSinkConfig.model_validate(settings))


def text_of(fmt: str, body: dict[str, Any]) -> str:
    """Everything a person reads in a message."""
    if fmt == "slack":
        return "\n".join([body["text"], *(a.get("text", "") for a in body["attachments"])])
    if fmt == "discord":
        return "\n".join(f"{e['title']}\n{e.get('description', '')}" for e in body["embeds"])
    if fmt == "teams":
        blocks = body["attachments"][0]["content"]["body"]
        return "\n".join(block.get("text", "") for block in blocks)
    return str(body["text"])


def listed(fmt: str, body: dict[str, Any]) -> tuple[list[str], int]:
    """The accounts a message lists (a group's lines, or one alert's card), and how many
    more it says it has."""
    text = json.dumps(body, ensure_ascii=False)
    hidden = re.search(r"and (\d+) more", text)
    return re.findall(r"acct-\d+", text), int(hidden.group(1)) if hidden else 0


def doc(n: int, seq: int = 1, **changes: Any) -> dict[str, Any]:
    return alert(f"fp{n}", seq, account=f"acct-{n:02d}", **changes)


def firing_state(fingerprint: str) -> AlertState:
    """A firing alert's state, so that ``retry_dead`` finds its dead firing still true."""
    return AlertState(
        fingerprint=fingerprint, rule="low-available", when="available < 5000", clear=None,
        severity="warning", account="acct", exchange="bitso", venue="bitso", asset="USDT",
        phase="firing", since=0.0, last_notified=0.0, values={},
    )  # fmt: skip


async def started(store: StateStore, sink: WebhookSink, clock: FakeClock) -> Outbox:
    outbox = Outbox(store, [sink], clock=clock, backoff=HALF)
    await outbox.start()
    return outbox


async def next_deadline(clock: FakeClock, worker: SinkWorker) -> float:
    """The worker's next deadline, once it sleeps towards one with no send in flight (so a
    request is never stamped with a time the clock reached while it travelled)."""
    while True:
        deadline = await clock.sleeping_until(after=clock.sleeps - 1)
        if worker.stats().sending == 0:
            return deadline
        await clock.sleeping_until(after=clock.sleeps)  # the wait after the send ends


async def drive(clock: FakeClock, worker: SinkWorker, goal: Awaitable[T]) -> T:
    """Move the clock from one deadline of the worker to the next until ``goal`` is met."""
    done = asyncio.ensure_future(goal)
    try:
        while not done.done():
            step = asyncio.ensure_future(next_deadline(clock, worker))
            await within(
                asyncio.wait({done, step}, return_when=asyncio.FIRST_COMPLETED),
                "the worker's next deadline or the goal",
            )
            if step.done() and not done.done():
                clock.advance(max(0.0, step.result() - clock.now()))
            step.cancel()
        return done.result()
    finally:
        done.cancel()


async def settled(outbox: Outbox) -> None:
    await within(outbox.wait_settled(), "every delivery settled")


# --- grouping ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_storm_of_50_alerts_in_one_group_arrives_as_one_message(
    fmt: str, store: StateStore, clock: FakeClock
) -> None:
    service = ChatService(SERVICE[fmt], now=clock.now)
    async with service, chat_sink(fmt, service.url) as sink:
        outbox = await started(store, sink, clock)
        for n in range(50):  # over several polls, within the group's 30 s wait
            await outbox.enqueue(doc(n), ["chat"])
            clock.advance(0.1)
        assert await clock.sleeping_until() == 30.0
        clock.advance(30.0 - 0.1 - clock.now())
        assert service.arrivals == []  # 29.9 s: the group still waits
        clock.advance(0.1)
        [message] = await service.wait_accepted(1)
        await settled(outbox)
        await outbox.stop()

    shown, hidden = listed(fmt, message)
    assert sorted(set(shown)) == shown == [f"acct-{n:02d}" for n in range(len(shown))]
    assert len(shown) + hidden == 50
    assert fmt == "telegram" or hidden == 0  # only Telegram's 4096 cuts the list short
    assert "FIRING 50" in text_of(fmt, message)
    assert len(service.arrivals) == 1
    assert await store.counts() == {}
    assert outbox.stats()["chat"].delivered == 50


async def test_groups_wait_then_send_at_most_every_interval(
    store: StateStore, clock: FakeClock
) -> None:
    async with ChatService("slack", now=clock.now) as service:
        sink = chat_sink("slack", service.url, group_wait="10s", group_interval="2m")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1), ["chat"])
            await drive(clock, outbox.workers["chat"], service.wait_accepted(1))
            assert clock.now() == 10.0
            # More of the same group: after the interval, counted from the first message.
            await outbox.enqueue(doc(2), ["chat"])
            await outbox.enqueue(doc(3), ["chat"])
            clock.advance(60)
            await outbox.enqueue(doc(4, rule="other-rule"), ["chat"])  # another group
            await drive(clock, outbox.workers["chat"], service.wait_accepted(3))
            await settled(outbox)
            await outbox.stop()

    times = [arrival.at for arrival in service.arrivals]
    assert times == [10.0, 80.0, 130.0]  # other-rule's own 10 s wait; ours 10 s + 2 m
    assert [listed("slack", m)[0] for m in service.messages] == [
        ["acct-01"],
        ["acct-04"],
        ["acct-02", "acct-03"],
    ]


async def test_order_per_fingerprint_holds_across_group_messages(
    store: StateStore, clock: FakeClock
) -> None:
    """A fingerprint's resolve goes in a later message than its firing, and one that fired
    and resolved within the wait is listed once, as resolved."""
    async with ChatService("mattermost", now=clock.now) as service:
        sink = chat_sink("mattermost", service.url, group_wait="5s", group_interval="5s")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1), ["chat"])
            await outbox.enqueue(doc(2), ["chat"])
            await outbox.enqueue(doc(2, 2, event="resolved", status="resolved"), ["chat"])
            await drive(clock, outbox.workers["chat"], service.wait_accepted(1))
            await outbox.enqueue(doc(1, 2, event="resolved", status="resolved"), ["chat"])
            await drive(clock, outbox.workers["chat"], service.wait_accepted(2))
            await settled(outbox)
            await outbox.stop()

    first, second = (text_of("mattermost", m).splitlines() for m in service.messages)
    assert first[0].startswith("**🟠 FIRING 1 · RESOLVED 1")
    assert [line[:1] for line in first[1:3]] == ["🟠", "✅"]
    assert "acct-01" in first[1] and "acct-02" in first[2]
    assert second[0] == "✅ **RESOLVED** warning: **low-available**"  # one alert: its card
    assert "Account: acct-01" in second
    assert await store.counts() == {}


async def test_a_fingerprint_whose_group_changed_keeps_its_order(
    store: StateStore, clock: FakeClock
) -> None:
    """Its labels changed between firing and resolve (a reload), so the two are in
    different groups: the resolve still waits until the firing was delivered."""
    async with ChatService("slack", now=clock.now) as service:
        service.script([Reply(503)])
        sink = chat_sink("slack", service.url, group_by=["team"], group_wait="1s")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1, labels={"team": "a"}), ["chat"])
            clock.advance(0.2)
            resolve = doc(1, 2, event="resolved", status="resolved", labels={"team": "b"})
            await outbox.enqueue(resolve, ["chat"])
            await drive(clock, outbox.workers["chat"], service.wait_accepted(2))
            await settled(outbox)
            await outbox.stop()

    events = [json.loads(a.request.body)["text"].split()[1] for a in service.arrivals]
    assert [a.status for a in service.arrivals] == [503, 200, 200]
    assert events == ["FIRING", "FIRING", "RESOLVED"]


async def test_alerts_of_portfolio_rules_group_with_their_absent_fields_empty(
    store: StateStore, clock: FakeClock
) -> None:
    """Real group alerts (the engine's, placed as the publisher places them) have no
    account or venue: grouped by those they fall in one group, listed by their groups."""
    floor = Rule(
        name="floor",
        when=parse_expression("sum(available) < 100"),
        group_by=("asset",),
        severity="critical",
    )
    engine = Engine([floor], clock=lambda: 0.0)
    rows = [
        Balance("bitso-hot", "bitso", "bitso", asset, asset.lower(), available=Decimal("1"))
        for asset in ("USDT", "BTC")
    ]
    fired = engine.observe("bitso-hot", "bitso", rows, 0.0) + engine.tick(0.0)
    docs = [placed(a, "treasury-prod", None).to_json() for a in fired]
    assert sorted(str(d["group"]) for d in docs) == ["{'asset': 'BTC'}", "{'asset': 'USDT'}"]
    assert {(d["account"], d["venue"]) for d in docs} == {(None, None)}
    async with ChatService("mattermost", now=clock.now) as service:
        sink = chat_sink("mattermost", service.url, group_by=["rule", "account", "venue"])
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.commit(AlertCommit([RoutedAlert(d, ["chat"]) for d in docs]))
            await drive(clock, outbox.workers["chat"], service.wait_accepted(1))
            await settled(outbox)
            await outbox.stop()
    [message] = service.messages
    assert sorted(text_of("mattermost", message).splitlines()[1:3]) == [
        "🔴 asset=BTC: floor asset=BTC: sum(available)=1",
        "🔴 asset=USDT: floor asset=USDT: sum(available)=1",
    ]
    assert text_of("mattermost", message).splitlines()[0] == "**🔴 FIRING 2: floor**"


async def test_a_failed_group_message_is_retried_whole_as_the_same_message(
    store: StateStore, clock: FakeClock
) -> None:
    """What arrives while a message is retried waits for the next one: a retry never
    changes what the message holds, nor its id."""
    async with ChatService("slack", now=clock.now) as service:
        service.script([Reply(503), Reply(500)])
        sink = chat_sink("slack", service.url, group_wait="1s", group_interval="1m")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1), ["chat"])
            await outbox.enqueue(doc(2), ["chat"])
            await drive(clock, outbox.workers["chat"], service.wait_for(1))
            await outbox.enqueue(doc(3), ["chat"])  # while the message is being retried
            await drive(clock, outbox.workers["chat"], service.wait_accepted(2))
            await settled(outbox)
            await outbox.stop()

    bodies = [arrival.request.body for arrival in service.arrivals]
    assert len(bodies) == 4 and bodies[0] == bodies[1] == bodies[2] != bodies[3]
    assert [listed("slack", m)[0] for m in service.messages] == [
        ["acct-01", "acct-02"],
        ["acct-03"],
    ]


async def test_a_generic_webhook_groups_only_when_asked_and_keys_the_message_id(
    store: StateStore, clock: FakeClock
) -> None:
    async with WebhookReceiver(Reply(502)) as receiver:
        config = {"type": "webhook", "name": "chat", "url": receiver.url, "group_by": ["exchange"]}
        async with WebhookSink(WebhookSinkConfig.model_validate(config)) as sink:
            outbox = await started(store, sink, clock)
            for n in range(3):
                await outbox.enqueue(doc(n), ["chat"])
            await drive(clock, outbox.workers["chat"], receiver.wait_for(2))
            await settled(outbox)
            await outbox.stop()
    failed, sent = receiver.requests
    keys = {request.headers["Idempotency-Key"] for request in (failed, sent)}
    body = sent.json()
    assert keys == {body["id"]} and failed.body == sent.body
    assert body["group"] == {"exchange": "bitso"}
    assert [a["id"] for a in body["alerts"]] == ["fp0:1", "fp1:1", "fp2:1"]
    del config["group_by"]  # generic and nothing set: one message per alert, as before
    assert WebhookSinkConfig.model_validate(config).grouping is None


async def test_a_group_message_cut_off_by_a_stop_is_sent_again_whole_after_a_restart(
    state_dir: Path,
) -> None:
    """Sent, no answer, process gone: the next run sends the same message again at once
    (same alerts, same body), and what came after goes in a message of its own."""
    async with ChatService("discord") as service:
        service.script([Reply(hang=True)])
        store = SqliteStateStore(state_dir)
        await store.open()
        clock = FakeClock()
        sink = chat_sink("discord", service.url, group_wait="1s", group_interval="1s")
        async with sink:
            outbox = await started(store, sink, clock)
            for n in range(5):
                await outbox.enqueue(doc(n), ["chat"])
            clock.advance(1)
            await service.wait_for(1)
            await outbox.enqueue(doc(5), ["chat"])  # same group, after the message went
            await outbox.stop()
        await store.close()

        store = SqliteStateStore(state_dir)
        await store.open()
        clock = FakeClock()
        async with chat_sink("discord", service.url, group_wait="1s") as sink:
            outbox = await started(store, sink, clock)
            again = await service.wait_for(2)  # at once: no group wait for it
            assert clock.now() == 0.0
            await drive(clock, outbox.workers["chat"], service.wait_accepted(2))
            await settled(outbox)
            await outbox.stop()
        assert await store.counts() == {}
        await store.close()

    assert again[1].request.body == again[0].request.body
    assert [listed("discord", m)[0] for m in service.messages] == [
        [f"acct-{n:02d}" for n in range(5)],
        ["acct-05"],
    ]
    assert len(service.arrivals) == 3


async def test_a_dead_group_message_retried_by_hand_goes_out_as_a_new_message(
    store: StateStore, state_dir: Path, clock: FakeClock
) -> None:
    """``outbox retry`` (a store beside the daemon's) makes the message's rows pending
    without it; the running worker takes them in and groups them anew, with what came
    since, behind what of their fingerprints is on its way."""
    firing = [StateChange(f"fp{n}", "low-available", firing_state(f"fp{n}")) for n in (1, 2, 3)]
    await store.commit(AlertCommit(states=firing))
    async with WebhookReceiver() as receiver:
        receiver.script([Reply(400)])
        config = {"type": "webhook", "name": "chat", "url": receiver.url, "group_wait": "5s"}
        async with WebhookSink(WebhookSinkConfig.model_validate(config)) as sink:
            outbox = await started(store, sink, clock)
            await outbox.commit(AlertCommit([RoutedAlert(doc(n), ["chat"]) for n in (1, 2)]))
            await drive(clock, outbox.workers["chat"], receiver.wait_for(1))
            await settled(outbox)
            assert outbox.stats()["chat"].dead_letters == 2
            # The receiver answers 200 from now on: it was fixed.
            await outbox.enqueue(doc(3), ["chat"])
            async with SqliteStateStore(state_dir, exclusive=False) as beside:
                assert len((await beside.retry_dead(None)).retried) == 2
            assert await outbox.resync() == 2
            assert await outbox.resync() == 0  # held already
            await drive(clock, outbox.workers["chat"], receiver.wait_for(2))
            await settled(outbox)
            await outbox.stop()
    first, second = (r.json() for r in receiver.requests)
    assert second["id"] != first["id"]
    assert [a["id"] for a in second["alerts"]] == ["fp1:1", "fp2:1", "fp3:1"]
    assert outbox.stats()["chat"].dead_letters == 0 and await store.counts() == {}


async def test_two_messages_of_an_earlier_run_that_share_an_alert_go_one_after_the_other(
    store: StateStore, clock: FakeClock
) -> None:
    """Two bundled messages pending with the same fingerprint (the store's rows allow it,
    though ``outbox retry`` clears a retried row's message): the older goes first."""
    committed = await store.commit(
        AlertCommit([RoutedAlert(d, ["chat"]) for d in (doc(1), doc(1, 2), doc(2))])
    )
    old, new, other = (d.id for d in committed)
    await store.bundle("older", [old])
    await store.bundle("newer", [new, other])
    gate = asyncio.Event()
    sink = ScriptedSink("chat", gate=gate, grouping=Grouping(("rule",), 30.0, 300.0))
    outbox = Outbox(store, [sink], clock=clock)
    await outbox.start()
    await sink.wait_attempts(1)
    gate.set()
    await settled(outbox)
    await outbox.stop()

    assert [g.id for g in sink.groups] == ["older", "newer"]
    assert sink.overlaps == []  # fp1 never sent twice at once
    assert [a["id"] for a in sink.delivered] == ["fp1:1", "fp1:2", "fp2:1"]
    assert await store.counts() == {}


# --- what the services say ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "answer", "reason"),
    [
        ("slack", Reply(410, body=b"channel_is_archived"), "HTTP 410: channel_is_archived"),
        ("slack", Reply(400, body=b"invalid_payload"), "HTTP 400: invalid_payload"),
        (
            "telegram",
            Reply.json(
                400,
                {
                    "ok": False,
                    "error_code": 400,
                    "description": "Bad Request: group chat was upgraded to a supergroup chat",
                    "parameters": {"migrate_to_chat_id": -1001987654321},
                },
            ),
            "HTTP 400: Bad Request: group chat was upgraded to a supergroup chat "
            "(migrate_to_chat_id -1001987654321: set chat_id to it)",
        ),
        (
            "discord",
            Reply.json(404, {"message": "Unknown Webhook", "code": 10015}),
            "HTTP 404: Unknown Webhook (10015)",
        ),
        (
            "mattermost",
            Reply.json(
                400, {"id": "web.incoming_webhook.disabled.app_error", "message": "Disabled"}
            ),
            "HTTP 400: Disabled (web.incoming_webhook.disabled.app_error)",
        ),
        (
            "teams",
            Reply(200, body=b"Summary or Text is required."),
            "HTTP 200 with an error: Summary or Text is required.",
        ),
    ],
)
async def test_a_permanent_error_keeps_the_service_reason_in_the_log_and_dead_letters(
    fmt: str, answer: Reply, reason: str, store: StateStore, clock: FakeClock
) -> None:
    async with ChatService(SERVICE[fmt], now=clock.now) as service:
        service.script([answer])
        async with chat_sink(fmt, service.url, group_wait="0s") as sink:
            outbox = await started(store, sink, clock)
            with capture_logs() as logs:
                await outbox.commit(AlertCommit([RoutedAlert(doc(n), ["chat"]) for n in (1, 2)]))
                await settled(outbox)
            await outbox.stop()
    expected = f"webhook sink chat: {reason}"
    assert [(d.alert["id"], d.error) for d in await store.dead_letters()] == [
        ("fp1:1", expected),
        ("fp2:1", expected),
    ]
    [logged] = [e for e in logs if e["event"] == "group_dead_lettered"]
    assert (logged["error"], logged["alerts"], logged["group"]) == (
        expected,
        2,
        {"rule": "low-available"},
    )


async def test_the_sink_secret_echoed_by_a_service_is_masked(
    store: StateStore, clock: FakeClock
) -> None:
    """The URL's token as the service may quote it (plain, URL-encoded, in base64), and a
    secret of another part of the config (the installed redactor's): all masked."""
    redact.install([Secret("account-api-key-0042")])
    async with ChatService("slack", now=clock.now) as service:
        token = service.url.rsplit("/", 1)[1]
        encoded = base64.b64encode(f"x{token}".encode()).decode()
        echo = (
            f"invalid_token {token} for {quote(service.url, safe='')} ({encoded}) "
            "with account-api-key-0042"
        )
        service.script([Reply(403, body=echo.encode())])
        async with chat_sink("slack", service.url, group_wait="0s") as sink:
            outbox = await started(store, sink, clock)
            with capture_logs() as logs:
                await outbox.enqueue(doc(1), ["chat"])
                await settled(outbox)
            await outbox.stop()
    [dead] = await store.dead_letters()
    assert dead.error.startswith("webhook sink chat: HTTP 403: invalid_token *** for ")
    for shown in (dead.error, str(logs)):
        assert token not in shown and quote(token, safe="") not in shown
        assert encoded[4:-4] not in shown and "account-api-key-0042" not in shown


async def test_a_teams_connector_throttling_with_200_is_retried_and_workflows_202_delivers(
    store: StateStore, clock: FakeClock
) -> None:
    async with ChatService("teams", now=clock.now) as connector:
        connector.script([Reply(200, body=b"Microsoft Teams endpoint returned HTTP error 429 x")])
        async with chat_sink("teams", connector.url, group_wait="0s") as sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1), ["chat"])
            await drive(clock, outbox.workers["chat"], connector.wait_accepted(1))
            await settled(outbox)
            await outbox.stop()
    assert [a.status for a in connector.arrivals] == [200, 200]
    assert outbox.stats()["chat"].failed == 1 and await store.counts() == {}

    flow = ChatService("teams-workflows", now=clock.now)
    async with flow, chat_sink("teams", flow.url, group_wait="0s") as sink:
        outbox = await started(store, sink, clock)
        await outbox.enqueue(doc(2), ["chat"])
        await flow.wait_accepted(1)
        await settled(outbox)
        await outbox.stop()
    assert [a.status for a in flow.arrivals] == [202]


# --- pacing and Retry-After ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "service", "messages"),
    [
        ("slack", "slack", 8),
        ("discord", "discord", 17),
        ("telegram", "telegram", 25),
        ("mattermost", "mattermost", 30),
        ("teams", "teams", 70),
    ],
)
async def test_pacing_never_exceeds_the_service_rate_where_it_counts(
    fmt: str, service: Service, messages: int, store: StateStore, clock: FakeClock
) -> None:
    """A group per account, all due at once: the service still sees no more than its
    documented limit in any window (it answers 429 to any request over it)."""
    async with ChatService(service, now=clock.now) as chat:
        # (Teams: a legacy connector's /webhookb2/ URL, so its whole table applies.)
        sink = chat_sink(fmt, chat.url, group_by=["account"], group_wait="0s")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.commit(
                AlertCommit([RoutedAlert(doc(n), ["chat"]) for n in range(messages)])
            )
            await drive(clock, outbox.workers["chat"], chat.wait_accepted(messages, timeout=30))
            await settled(outbox)
            await outbox.stop()

    assert len(chat.arrivals) == messages  # no 429, no retry
    for count, seconds in LIMITS[service]:
        assert chat.busiest(seconds) <= count, (count, seconds)
    # ... and no slower than the tightest limit needs (with the pacer's 10% margin).
    count, seconds = LIMITS[service][0]
    assert chat.arrivals[-1].at <= (messages / count) * seconds * 1.1 + 60


@pytest.mark.parametrize(
    ("fmt", "answer"),
    [
        ("slack", Reply(429, headers={"Retry-After": "60"}, body=b"rate_limited")),
        (
            "telegram",
            Reply.json(
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 60",
                    "parameters": {"retry_after": 60},
                },
            ),
        ),
        (
            "discord",
            Reply.json(
                429,
                {"message": "You are being rate limited.", "retry_after": 60.0, "global": False},
            ),
        ),
        ("mattermost", Reply(429, headers={"Retry-After": "60"})),
    ],
)
async def test_a_60_second_retry_after_is_honoured(
    fmt: str, answer: Reply, store: StateStore, clock: FakeClock
) -> None:
    """Beyond the 30 s backoff cap: nothing at all goes to the service for 60 s."""
    async with ChatService(SERVICE[fmt], now=clock.now) as service:
        service.script([answer])
        sink = chat_sink(fmt, service.url, group_by=["account"], group_wait="0s")
        async with sink:
            outbox = await started(store, sink, clock)
            await outbox.enqueue(doc(1), ["chat"])
            await service.wait_for(1)
            await outbox.enqueue(doc(2), ["chat"])  # another group: waits too
            await drive(clock, outbox.workers["chat"], service.wait_accepted(2))
            await settled(outbox)
            await outbox.stop()

    limited, *after = service.arrivals
    assert limited.status == 429 and limited.at == 0.0
    assert len(after) == 2 and min(a.at for a in after) >= 60.0
    assert await store.counts() == {}


async def test_pacing_holds_in_real_time_at_the_receiver(store: StateStore) -> None:
    """The same check on the real clock, once: Discord's 5 per 2 s, 12 messages."""
    async with ChatService("discord") as chat:
        sink = chat_sink("discord", chat.url, group_by=["account"], group_wait="0s")
        async with sink:
            outbox = Outbox(store, [sink])
            await outbox.start()
            await outbox.commit(AlertCommit([RoutedAlert(doc(n), ["chat"]) for n in range(12)]))
            await chat.wait_accepted(12, timeout=20)
            await settled(outbox)
            await outbox.stop()
    assert [a.status for a in chat.arrivals] == [204] * 12
    assert chat.busiest(2.0) <= 5
