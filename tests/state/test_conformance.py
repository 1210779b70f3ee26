"""What every state store must do, run against each backend (``tests/state/backends.py``).

Everything goes through the :class:`~balwatch.state.base.StateStore` interface: what one
store wrote is checked by what it, or a store opened again on the same storage (a restart),
reads back. Faults are the storage's own (a write it refuses), never a mocked store.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from balwatch.alert import Alert
from balwatch.model import Balance
from balwatch.rules.engine import AccountState, AlertState, Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.history import HistoryChanges
from balwatch.rules.rule import Rule
from balwatch.selfalerts import SELF, SelfAlerts
from balwatch.silence import Silence, new_silence
from balwatch.state.base import (
    AlertCommit,
    Delivery,
    Retried,
    RoutedAlert,
    SinkCounts,
    StateChange,
    StateError,
    StateSnapshot,
    StateStore,
)
from tests.outbox.doubles import alert
from tests.state.backends import Backend

T0 = 1_800_000_000.0
NO_HISTORY = HistoryChanges([], [], [])


def routed(doc: dict[str, Any], *sinks: str) -> RoutedAlert:
    return RoutedAlert(doc, sinks)


async def enqueue(store: StateStore, doc: dict[str, Any], *sinks: str) -> list[Delivery]:
    return await store.commit(AlertCommit([routed(doc, *sinks)]))


def state(fingerprint: str, phase: str = "firing", available: str = "4000") -> AlertState:
    return AlertState(
        fingerprint=fingerprint, rule="low", when="available < 5000", clear=None,
        severity="warning", account="treasury", exchange="bitso", venue="bitso",
        asset=fingerprint, phase=phase, since=T0,  # type: ignore[arg-type]
        last_notified=T0 if phase == "firing" else None,
        values={"available": Decimal(available)},
    )  # fmt: skip


def account(name: str, failures: int = 0) -> AccountState:
    return AccountState(name, "bitso", first_seen=T0, last_ok=T0 + 5, failures=failures)


def self_alert(account: str) -> Alert:
    [fired] = SelfAlerts(lambda: T0).fire(
        "source_auth_failed", account, "bitso", f"{account}: bad key", "critical"
    )
    return fired


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.alert["id"] for d in deliveries]


# --- the outbox ------------------------------------------------------------------------


async def test_a_commit_stores_each_alert_once_with_a_delivery_per_sink(backend: Backend) -> None:
    async with backend.store() as store:
        deliveries = await store.commit(
            AlertCommit(
                [routed(alert("fp1", 1), "mqtt", "slack", "mqtt"), routed(alert("fp2", 1), "slack")]
            )
        )
        assert [(d.sink, d.fingerprint, d.alert["id"], d.attempts) for d in deliveries] == [
            ("mqtt", "fp1", "fp1:1", 0),
            ("slack", "fp1", "fp1:1", 0),
            ("slack", "fp2", "fp2:1", 0),
        ]
        assert [d.id for d in deliveries] == sorted({d.id for d in deliveries})
        assert [(d.id, d.alert) for d in await store.pending("slack")] == [
            (d.id, d.alert) for d in deliveries[1:]
        ]
        assert await store.counts() == {"mqtt": SinkCounts(pending=1), "slack": SinkCounts(2)}


async def test_an_alert_for_no_sink_is_not_stored_but_its_state_is(backend: Backend) -> None:
    async with backend.store() as store:
        commit = AlertCommit([routed(alert("fp1", 1))], [StateChange("fp1", "low", state("fp1"))])
        assert await store.commit(commit) == []
        assert await store.counts() == {}
        assert [s.fingerprint for s in (await store.load(0)).alerts] == ["fp1"]


async def test_a_commit_with_a_document_that_cannot_be_stored_writes_nothing(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        bad = alert("fp2", 1, values={"available": Decimal(1)})  # not JSON
        with pytest.raises(TypeError):
            await store.commit(
                AlertCommit(
                    [routed(alert("fp1", 1), "mqtt"), routed(bad, "mqtt")],
                    [StateChange("fp1", "low", state("fp1"))],
                )
            )
        assert await store.counts() == {}
        assert (await store.load(0)).alerts == []


def test_a_document_without_a_fingerprint_cannot_be_routed() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        RoutedAlert({k: v for k, v in alert("fp1", 1).items() if k != "fingerprint"}, ["s"])


async def test_ack_forgets_a_delivery_and_leaves_the_alert_to_its_other_sinks(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        mqtt, slack = await enqueue(store, alert("fp1", 1), "mqtt", "slack")
        await store.ack(mqtt.id)
        assert await store.pending("mqtt") == []
        assert ids(await store.pending("slack")) == ["fp1:1"]
        await store.ack(slack.id)
        assert await store.counts() == {}


async def test_a_dead_letter_keeps_its_error_and_attempts_and_is_never_pending(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        mqtt, slack = await enqueue(store, alert("fp1", 1), "mqtt", "slack")
        await store.fail(slack.id, "HTTP 500", dead=False)
        [retried] = await store.pending("slack")
        assert retried.attempts == 1
        await store.fail(slack.id, "HTTP 400: bad payload", dead=True)
        await store.ack(mqtt.id)

        [dead] = await store.dead_letters()
        assert (dead.id, dead.sink, dead.attempts, dead.error) == (
            slack.id, "slack", 2, "HTTP 400: bad payload"
        )  # fmt: skip
        assert dead.alert == alert("fp1", 1)
        assert dead.failed_at > 0
        assert await store.dead_letters("slack") == [dead]
        assert await store.dead_letters("mqtt") == []
        assert await store.pending("slack") == []
        assert await store.counts() == {"slack": SinkCounts(pending=0, dead=1)}


async def test_pending_deliveries_survive_a_restart_in_order_with_their_attempts(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        for seq in range(3):
            await enqueue(store, alert("fp1", seq), "mqtt")
            await enqueue(store, alert("fp2", seq), "mqtt", "slack")
        [first, *_] = await store.pending("mqtt")
        await store.fail(first.id, "timeout", dead=False)
        before = await store.pending("mqtt")

    async with backend.store() as store:
        pending = await store.pending("mqtt")
        assert ids(pending) == ["fp1:0", "fp2:0", "fp1:1", "fp2:1", "fp1:2", "fp2:2"]
        assert [d.attempts for d in pending] == [1, 0, 0, 0, 0, 0]
        assert [(d.id, d.fingerprint, d.alert) for d in pending] == [
            (d.id, d.fingerprint, d.alert) for d in before
        ]
        assert await store.counts() == {"mqtt": SinkCounts(pending=6), "slack": SinkCounts(3)}


async def test_delivery_ids_keep_growing_after_pruning_and_restarts(backend: Backend) -> None:
    """Per-fingerprint order across restarts rests on this: a new delivery never gets the
    id of one that was acknowledged and pruned."""
    async with backend.store() as store:
        [first] = await enqueue(store, alert("fp1", 1), "mqtt")
        await store.ack(first.id)
        [second] = await enqueue(store, alert("fp1", 2), "mqtt")
        await store.ack(second.id)
        assert await store.counts() == {}
    async with backend.store() as store:
        [third] = await enqueue(store, alert("fp1", 3), "mqtt")
    assert first.id < second.id < third.id


async def test_concurrent_commits_get_distinct_ids_and_sequential_ones_grow(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        together = await asyncio.gather(
            *(enqueue(store, alert(f"fp{i}", 1), "mqtt", "slack") for i in range(50))
        )
        every = [d.id for pair in together for d in pair]
        assert len(set(every)) == 100
        [later] = await enqueue(store, alert("fp0", 2), "mqtt")
        assert later.id > max(every)
        assert ids(await store.pending("mqtt"))[-1] == "fp0:2"


async def test_on_commit_runs_even_when_the_caller_was_cancelled(backend: Backend) -> None:
    async with backend.store() as store:
        handed: list[list[Delivery]] = []
        task = asyncio.create_task(
            store.commit(AlertCommit([routed(alert("fp1", 1), "s")]), on_commit=handed.append)
        )
        await asyncio.sleep(0)  # the commit is under way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [after] = await enqueue(store, alert("fp1", 2), "s")  # commits after the first
        assert [[d.alert["id"] for d in batch] for batch in handed] == [["fp1:1"]]
        assert ids(await store.pending("s")) == ["fp1:1", "fp1:2"]
        assert handed[0][0].id < after.id


# --- alerts with their states ------------------------------------------------------------


@pytest.mark.parametrize("refused", ["alerts", "states"])
async def test_alerts_and_their_states_commit_together_or_not_at_all(
    backend: Backend, refused: Any
) -> None:
    async with backend.store() as store:
        await store.commit(
            AlertCommit(
                [routed(alert("fp1", 1), "mqtt")],
                [StateChange("fp1", "low", state("fp1", "pending"))],
                [self_alert("old")],
            )
        )
        await backend.refuse(refused)
        commit = AlertCommit(
            [routed(alert("fp1", 2), "mqtt"), routed(alert("fp2", 1), "mqtt")],
            [StateChange("fp1", "low", None), StateChange("fp2", "low", state("fp2"))],
            [self_alert("new")],
        )
        with pytest.raises(Exception):  # noqa: B017 - the backend's own error
            await store.commit(commit)
        # Neither half alone: no new alert, and the states are those of the first commit.
        assert ids(await store.pending("mqtt")) == ["fp1:1"]
        saved = await store.load(0)
        assert [(s.fingerprint, s.phase) for s in saved.alerts] == [("fp1", "pending")]
        assert [a.account for a in saved.self_alerts] == ["old"]

        await backend.allow()
        await store.commit(commit)  # the next try commits both
        saved = await store.load(0)
        assert [(s.fingerprint, s.phase) for s in saved.alerts] == [("fp2", "firing")]
        assert [a.account for a in saved.self_alerts] == ["new"]
        assert ids(await store.pending("mqtt")) == ["fp1:1", "fp1:2", "fp2:1"]


async def test_a_bundled_message_is_pending_with_its_id_and_settles_whole(
    backend: Backend,
) -> None:
    """A group message's deliveries: bundled before the first attempt, read back with the
    message after a restart, then acknowledged or failed in one transaction."""
    async with backend.store() as store:
        deliveries = [d for n in range(4) for d in await enqueue(store, alert(f"fp{n}", 1), "chat")]
        first, second = deliveries[:3], deliveries[3:]
        await store.bundle("m1", [d.id for d in first])
        assert [d.message for d in await store.pending("chat")] == ["m1", "m1", "m1", None]
        await store.fail_all([d.id for d in first], "HTTP 503", dead=False)
    async with backend.store() as store:
        pending = await store.pending("chat")
        assert [(d.id, d.message, d.attempts) for d in pending] == [
            *((d.id, "m1", 1) for d in first),
            (second[0].id, None, 0),
        ]
        await backend.refuse("deliveries")
        with pytest.raises(Exception):  # noqa: B017 - the backend's own error
            await store.ack_all([d.id for d in first])
        with pytest.raises(Exception):  # noqa: B017
            await store.bundle("m2", [second[0].id])
        assert [(d.message, d.attempts) for d in await store.pending("chat")] == [
            ("m1", 1), ("m1", 1), ("m1", 1), (None, 0),
        ]  # fmt: skip
        await backend.allow()
        await store.ack_all([d.id for d in first])
        assert ids(await store.pending("chat")) == ["fp3:1"]
        await store.fail_all([second[0].id], "HTTP 400: invalid_payload", dead=True)
        [dead] = await store.dead_letters("chat")
        assert (dead.id, dead.error) == (second[0].id, "HTTP 400: invalid_payload")
        assert await store.counts() == {"chat": SinkCounts(pending=0, dead=1)}


async def test_a_refused_ack_or_fail_leaves_the_delivery_as_it_was(backend: Backend) -> None:
    async with backend.store() as store:
        [delivery] = await enqueue(store, alert("fp1", 1), "mqtt")
        await backend.refuse("deliveries")
        with pytest.raises(Exception):  # noqa: B017 - the backend's own error
            await store.ack(delivery.id)
        with pytest.raises(Exception):  # noqa: B017
            await store.fail(delivery.id, "HTTP 400", dead=True)
        [still] = await store.pending("mqtt")
        assert (still.id, still.attempts) == (delivery.id, 0)
        await backend.allow()
        await store.ack(delivery.id)
        assert await store.counts() == {}


async def test_state_changes_update_and_delete_and_self_alerts_are_replaced_whole(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        await store.commit(
            AlertCommit(
                states=[StateChange("a", "low", state("a")), StateChange("b", "low", state("b"))],
                self_alerts=[self_alert("x"), self_alert("y")],
            )
        )
        await store.commit(
            AlertCommit(
                states=[
                    StateChange("a", "low", state("a", available="3000")),
                    StateChange("b", "low", None),
                ]
            )
        )
        saved = await store.load(0)
        assert [(s.fingerprint, s.values) for s in saved.alerts] == [
            ("a", {"available": Decimal(3000)})
        ]
        # None left the self-alerts alone; a list replaces them.
        assert sorted(a.account for a in saved.self_alerts) == ["x", "y"]
        await store.commit(AlertCommit(self_alerts=[self_alert("y")]))
        assert [a.account for a in (await store.load(0)).self_alerts] == ["y"]


async def test_a_restart_reads_back_states_accounts_history_self_alerts_and_deliveries(
    backend: Backend,
) -> None:
    key = ("treasury", "bitso", "USDT", "total")
    fired = self_alert("treasury")
    async with backend.store() as store:
        await store.commit(
            AlertCommit(
                [routed(alert("fp1", 1), "mqtt")],
                [StateChange("fp1", "low", state("fp1"))],
                [fired],
            )
        )
        await store.flush(
            StateSnapshot(
                [state("fp1"), state("fp2", "pending")],
                [account("treasury", failures=2)],
                HistoryChanges(
                    [], [], [(key, T0, Decimal("1000.50")), (key, T0 + 60, Decimal(900))]
                ),
            )
        )
    async with backend.store() as store:
        saved = await store.load(0)
        assert sorted((s.fingerprint, s.phase) for s in saved.alerts) == [
            ("fp1", "firing"),
            ("fp2", "pending"),
        ]
        assert {s.fingerprint: s for s in saved.alerts}["fp1"] == state("fp1")
        assert saved.accounts == [account("treasury", failures=2)]
        assert saved.samples == [(key, T0, Decimal("1000.50")), (key, T0 + 60, Decimal(900))]
        assert saved.self_alerts == [fired]
        assert ids(await store.pending("mqtt")) == ["fp1:1"]


def group_state(fingerprint: str) -> AlertState:
    """A portfolio rule's state: its group, no account or exchange."""
    return AlertState(
        fingerprint=fingerprint, rule="floor", when="sum(available) < 50000", clear=None,
        severity="critical", account=None, exchange=None, venue=None, asset="USDT",
        phase="firing", since=T0, last_notified=T0,
        values={"sum(available)": Decimal("40000.5"), "USDT@bitso-hot": Decimal(30000)},
        group={"asset": "USDT", "desk": None}, summary="USDT low", description="top up",
    )  # fmt: skip


async def test_a_groups_state_and_history_series_read_back_as_written(backend: Backend) -> None:
    """A group's history key holds a rule marker, the group as JSON and an aggregate's text
    (balwatch.rules.groups): any text must come back as it went in."""
    key = ("#floor", '{"asset":"USDT","desk":null}', "sum(usd(total))", "")
    samples = [(key, T0, Decimal("2300000.5")), (key, T0 + 60, Decimal(1100000))]
    async with backend.store() as store:
        await store.commit(AlertCommit(states=[StateChange("g1", "floor", group_state("g1"))]))
        await store.flush(
            StateSnapshot(
                [group_state("g1"), group_state("g2")], [], HistoryChanges([], [], samples)
            )
        )
    async with backend.store() as store:
        saved = await store.load(0)
        assert sorted(saved.alerts, key=lambda s: s.fingerprint) == [
            group_state("g1"),
            group_state("g2"),
        ]
        assert saved.samples == samples
        await store.flush(StateSnapshot([], [], HistoryChanges([key], [], [])))
        assert (await store.load(0)).samples == []


async def test_a_flush_replaces_every_state_and_account(backend: Backend) -> None:
    async with backend.store() as store:
        await store.flush(
            StateSnapshot([state("a"), state("b")], [account("x"), account("y")], NO_HISTORY)
        )
        await store.flush(StateSnapshot([state("b", "pending")], [account("y", 3)], NO_HISTORY))
        saved = await store.load(0)
        assert [(s.fingerprint, s.phase) for s in saved.alerts] == [("b", "pending")]
        assert saved.accounts == [account("y", 3)]


async def test_history_is_read_from_since_with_the_sample_before_it(backend: Backend) -> None:
    """The value at a window's start after a stop longer than the window is the newest
    sample before it, as for a daemon that kept running through the gap."""
    a, b = ("acct", "v", "USDT", "total"), ("acct", "v", "BTC", "total")
    samples = [(a, T0 + t, Decimal(t)) for t in (0, 10, 20, 30)] + [(b, T0 + 5, Decimal(1))]
    async with backend.store() as store:
        await store.flush(StateSnapshot([], [], HistoryChanges([], [], samples)))
        saved = await store.load(T0 + 15)
    assert saved.samples == [(b, T0 + 5, Decimal(1))] + [
        (a, T0 + t, Decimal(t)) for t in (10, 20, 30)
    ]


async def test_history_changes_trim_and_forget_series(backend: Backend) -> None:
    a, b = ("acct", "v", "USDT", "total"), ("acct", "v", "BTC", "total")
    async with backend.store() as store:
        samples = [(k, T0 + t, Decimal(t)) for k in (a, b) for t in (0, 10, 20)]
        await store.flush(StateSnapshot([], [], HistoryChanges([], [], samples)))
        await store.flush(
            StateSnapshot([], [], HistoryChanges([b], [(a, T0 + 10)], [(a, T0 + 30, Decimal(5))]))
        )
        saved = await store.load(0)
    assert saved.samples == [
        (a, T0 + 10, Decimal(10)),
        (a, T0 + 20, Decimal(20)),
        (a, T0 + 30, Decimal(5)),
    ]


# --- the engine's history across restarts ---------------------------------------------

KEY = ("treasury", "bitso", "USDT", "total")
DROP = Rule(name="sudden-drop", when=parse_expression("pct_change(total, 15m) <= -20"))


def rows(total: str, available: str | None = None) -> list[Balance]:
    free = None if available is None else Decimal(available)
    return [
        Balance("treasury", "bitso", "bitso", "USDT", "usdt", total=Decimal(total), available=free)
    ]


async def flush(engine: Engine, backend: Backend) -> None:
    async with backend.store() as store:
        history = engine.history.take_changes()
        await store.flush(StateSnapshot(engine.states(), engine.accounts(), history))


async def restarted(backend: Backend, now: float, rules: list[Rule] | None = None) -> Engine:
    engine = Engine(rules or [DROP], clock=lambda: now)
    async with backend.store() as store:
        saved = await store.load(now - engine.history.retention)
    saved.restore(engine, now)
    return engine


async def stored_samples(backend: Backend) -> int:
    async with backend.store() as store:
        return len((await store.load(0)).samples)


async def test_a_change_window_keeps_its_past_across_a_restart(backend: Backend) -> None:
    engine = Engine([DROP], clock=lambda: T0)
    for minute, total in ((0, "1000"), (10, "1000"), (15, "990")):
        engine.observe("treasury", "bitso", rows(total), T0 + 60 * minute)
    await flush(engine, backend)

    again = await restarted(backend, T0 + 950)
    assert again.history.samples(KEY) == engine.history.samples(KEY)
    # 25 % below the value of 15 minutes ago, which only the saved history knows: without
    # it the window would not be full yet, and pct_change no data.
    [fired] = again.observe("treasury", "bitso", rows("750"), T0 + 1000)
    assert (fired.rule, fired.event) == ("sudden-drop", "firing")


async def test_restored_samples_count_as_saved(backend: Backend) -> None:
    engine = Engine([DROP], clock=lambda: T0)
    engine.observe("treasury", "bitso", rows("1000"), T0)
    engine.observe("treasury", "bitso", rows("700"), T0 + 120)
    await flush(engine, backend)
    again = await restarted(backend, T0 + 130)
    # The first flush after a restart does not write the restored samples again.
    assert again.history.take_changes().samples == []
    assert again.history.samples(KEY) == [(T0, Decimal(1000)), (T0 + 120, Decimal(700))]


@pytest.mark.parametrize(
    ("poll_every", "last_poll", "back_at"),
    [
        (60, 19 * 60, 49 * 60),  # stopped for half an hour, longer than the window
        (300, 20 * 60, 24 * 60 + 50),  # polls every 5 min, a 5-minute restart
    ],
)
async def test_a_drop_while_the_daemon_was_stopped_fires_after_the_restart(
    backend: Backend, poll_every: int, last_poll: int, back_at: float
) -> None:
    """The window's start is the last value before the stop, as for a daemon that kept
    running through the same gap: a drop nobody saw happen is still reported."""
    engine = Engine([DROP], clock=lambda: T0)
    for t in range(0, last_poll + 1, poll_every):
        engine.observe("treasury", "bitso", rows("1000"), T0 + t)
    await flush(engine, backend)
    kept_running = engine.observe("treasury", "bitso", rows("500"), T0 + back_at)
    after_restart = (await restarted(backend, T0 + back_at)).observe(
        "treasury", "bitso", rows("500"), T0 + back_at
    )
    assert [a.event for a in kept_running] == [a.event for a in after_restart] == ["firing"]


async def test_the_store_holds_what_the_engine_holds(backend: Backend) -> None:
    """Trimmed samples leave the store too: it does not grow with uptime."""
    engine = Engine([DROP], clock=lambda: T0)
    for minute in range(120):
        engine.observe("treasury", "bitso", rows(str(1000 + minute)), T0 + 60 * minute)
        if minute % 7 == 0:
            await flush(engine, backend)
    await flush(engine, backend)
    assert await stored_samples(backend) == len(engine.history.samples(KEY)) == 17
    again = await restarted(backend, T0 + 60 * 119)
    assert again.history.samples(KEY) == engine.history.samples(KEY)


async def test_a_row_that_vanished_does_not_get_its_old_history_back(backend: Backend) -> None:
    """A row that disappears (a zero balance left out) comes back with an empty window,
    restart or not: its old samples must not return from the store."""
    engine = Engine([DROP], clock=lambda: T0)
    other = [Balance("treasury", "bitso", "bitso", "MXN", "mxn", total=Decimal(5))]
    for minute in range(6):
        engine.observe("treasury", "bitso", rows("1000"), T0 + 60 * minute)
        await flush(engine, backend)
    for minute in range(6, 11):
        engine.observe("treasury", "bitso", other, T0 + 60 * minute)
    engine.observe("treasury", "bitso", rows("100"), T0 + 660)
    await flush(engine, backend)
    again = await restarted(backend, T0 + 700)
    assert again.history.samples(KEY) == engine.history.samples(KEY) == [(T0 + 660, Decimal(100))]
    assert engine.observe("treasury", "bitso", rows("100"), T0 + 1200) == []
    assert again.observe("treasury", "bitso", rows("100"), T0 + 1200) == []


async def test_history_no_rule_reads_any_more_leaves_the_store(backend: Backend) -> None:
    engine = Engine([DROP], clock=lambda: T0)
    engine.observe("treasury", "bitso", rows("1000"), T0)
    await flush(engine, backend)
    assert await stored_samples(backend) == 1
    rise = Rule(name="rise", when=parse_expression("delta(available, 1h) > 0"))
    again = await restarted(backend, T0 + 60, [rise])
    assert KEY not in again.history
    await flush(again, backend)
    assert await stored_samples(backend) == 0


FLOOR = Rule(name="usdt-floor", when=parse_expression("sum(available) < 100"), group_by=("asset",))
GROUP_DROP = Rule(
    name="group-drop",
    when=parse_expression("pct_change(sum(total), 15m) <= -20"),
    group_by=("asset",),
)


async def test_a_groups_alert_and_history_carry_on_after_a_restart(backend: Backend) -> None:
    """The group's firing alert neither fires again nor is forgotten, and its 15-minute
    window starts from the sum the store kept."""
    engine = Engine([FLOOR, GROUP_DROP], clock=lambda: T0)
    for minute, total in ((0, "1000"), (10, "1000"), (15, "990")):
        engine.observe("treasury", "bitso", rows(total, available="50"), T0 + 60 * minute)
        engine.tick(T0 + 60 * minute)
    [floor] = engine.firing()
    await flush(engine, backend)

    again = await restarted(backend, T0 + 950, [FLOOR, GROUP_DROP])
    assert [(s.fingerprint, s.group) for s in again.firing()] == [
        (floor.fingerprint, {"asset": "USDT"})
    ]
    assert again.find(floor.fingerprint) is not None
    again.observe("treasury", "bitso", rows("750", available="500"), T0 + 1000)
    alerts = again.tick(T0 + 1000)
    assert sorted((a.rule, a.event) for a in alerts) == [
        ("group-drop", "firing"),  # 1000 -> 750: only the kept history knows the 1000
        ("usdt-floor", "resolved"),
    ]


async def test_a_restored_self_alert_resolves_once_its_cause_is_gone(backend: Backend) -> None:
    fired = SelfAlerts(lambda: T0)
    [alert_] = fired.fire("config_error", SELF, SELF, "reload rejected", "critical")
    async with backend.store() as store:
        await store.commit(AlertCommit(self_alerts=fired.firing()))
    again = SelfAlerts(lambda: T0 + 60)
    async with backend.store() as store:
        again.restore((await store.load(0)).self_alerts)
    assert again.fire("config_error", SELF, SELF, "reload rejected", "critical") == []
    [resolved] = again.resolve("config_error", SELF)
    assert (resolved.fingerprint, resolved.event) == (alert_.fingerprint, "resolved")


# --- opening and closing -----------------------------------------------------------------


async def test_a_schema_from_a_newer_balwatch_is_refused(backend: Backend) -> None:
    async with backend.store() as store:
        await enqueue(store, alert("fp1", 1), "mqtt")
    await backend.make_schema_newer()
    with pytest.raises(StateError, match="newer than this balwatch"):
        async with backend.store():
            pass


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    async with backend.store() as store:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await enqueue(store, alert("fp1", 1), "mqtt")
    with pytest.raises(RuntimeError, match="closed"):
        await store.pending("mqtt")


async def test_close_finishes_the_writes_already_called(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    writes = [asyncio.create_task(enqueue(store, alert(f"fp{i}", 1), "mqtt")) for i in range(20)]
    await asyncio.sleep(0)  # every write called
    await store.close()
    await asyncio.gather(*writes)
    async with backend.store() as again:
        assert len(await again.pending("mqtt")) == 20


# --- by hand: silences and dead letters, beside a running daemon ---------------------------


def silence(matcher: str, *, starts: float = T0, hours: float = 2, made: float = T0) -> Silence:
    return new_silence(
        [matcher], starts_at=starts, ends_at=starts + hours * 3600, author="ana",
        comment="maintenance", now=made,
    )  # fmt: skip


async def test_silences_added_beside_the_daemon_are_seen_by_it_and_survive(
    backend: Backend,
) -> None:
    async with backend.store() as daemon:
        before = await daemon.changes()
        first, second = silence("rule=low"), silence("account=~bitso-.*", made=T0 + 1)
        async with backend.beside() as cli:
            await cli.add_silence(first)
            await cli.add_silence(second)
        after = await daemon.changes()
        assert after.silences > before.silences and after.outbox == before.outbox
        assert await daemon.silences() == [first, second]
        with pytest.raises(Exception):  # noqa: B017 - the backend's own error: ids are unique
            await daemon.add_silence(first)
        assert await daemon.silences() == [first, second]
    async with backend.store() as restarted:
        assert await restarted.silences() == [first, second]


async def test_expiring_ends_a_silence_now_once(backend: Backend) -> None:
    async with backend.store() as store:
        made = silence("rule=low")
        await store.add_silence(made)
        counted = await store.changes()
        ended = await store.expire_silence(made.id, T0 + 60)
        assert ended is not None and (ended.starts_at, ended.ends_at) == (T0, T0 + 60)
        assert await store.silences() == [ended]
        moved = await store.changes()
        assert moved.silences > counted.silences
        assert await store.expire_silence(made.id, T0 + 120) == ended  # over already: kept
        assert await store.changes() == moved
        assert await store.expire_silence("no-such-id", T0) is None


async def test_pruning_removes_only_silences_that_ended_before(backend: Backend) -> None:
    async with backend.store() as store:
        old, recent = silence("rule=a", hours=1), silence("rule=b", hours=3)
        for made in (old, recent):
            await store.add_silence(made)
        counted = await store.changes()
        assert await store.prune_silences(T0 + 2 * 3600) == 1
        assert await store.silences() == [recent]
        assert (await store.changes()).silences > counted.silences
        assert await store.prune_silences(T0 + 2 * 3600) == 0


async def test_a_store_beside_the_daemon_needs_the_daemon_to_have_made_the_storage(
    backend: Backend,
) -> None:
    """A silence written where no daemon looks would mute nothing: refused instead."""
    with pytest.raises(StateError, match="no state database"):
        async with backend.beside():
            pass


async def dead_letter(store: StateStore, doc: dict[str, Any], sink: str = "hook") -> int:
    [delivery] = await enqueue(store, doc, sink)
    await store.fail(delivery.id, "HTTP 404: no such hook", dead=True)
    return delivery.id


async def test_the_outbox_lists_pending_and_dead_rows_with_their_errors(backend: Backend) -> None:
    async with backend.store() as store:
        dead = await dead_letter(store, alert("fp1", 1))
        [pending] = await enqueue(store, alert("fp2", 1), "mqtt")
        await store.fail(pending.id, "timeout", dead=False)
        rows = await store.outbox()
        assert [(r.id, r.sink, r.status, r.attempts, r.error) for r in rows] == [
            (dead, "hook", "dead", 1, "HTTP 404: no such hook"),
            (pending.id, "mqtt", "pending", 1, "timeout"),
        ]
        assert rows[0].alert == alert("fp1", 1) and rows[0].updated_at > 0
        assert [r.id for r in await store.outbox(dead_only=True)] == [dead]


async def test_retrying_makes_dead_letters_pending_unless_they_became_untrue(
    backend: Backend,
) -> None:
    """A firing of an alert that resolved since, or a resolve of one firing again, stays
    dead: sending it would show the alert in a state it is not in."""
    async with backend.store() as store:
        await store.commit(AlertCommit(states=[StateChange("fp1", "low", state("fp1"))]))
        still_firing = await dead_letter(store, alert("fp1", 1))
        over = await dead_letter(store, alert("fp2", 1))  # fp2 has no firing state
        resolved = await dead_letter(store, alert("fp2", 2, event="resolved", status="resolved"))
        untrue_resolve = await dead_letter(
            store, alert("fp1", 0, event="resolved", status="resolved")
        )
        counted = await store.changes()
        async with backend.beside() as cli:
            outcome = await cli.retry_dead(None)
        assert outcome == Retried([still_firing, resolved], [over, untrue_resolve], [])
        assert (await store.changes()).outbox > counted.outbox
        pending = await store.pending("hook")
        assert [(d.id, d.attempts) for d in pending] == [(still_firing, 0), (resolved, 0)]
        assert await store.retry_dead([still_firing, 999]) == Retried([], [], [still_firing, 999])


async def test_a_retried_dead_letter_of_a_group_message_is_no_longer_in_that_message(
    backend: Backend,
) -> None:
    """A dead group message's rows keep its id for inspection; retried, each is pending
    without it, so the worker groups it anew instead of resending the old message."""
    async with backend.store() as store:
        for fingerprint in ("fp1", "fp2"):
            await store.commit(
                AlertCommit(states=[StateChange(fingerprint, "low", state(fingerprint))])
            )
        deliveries = [d for n in (1, 2) for d in await enqueue(store, alert(f"fp{n}", 1), "chat")]
        message_ids = [d.id for d in deliveries]
        await store.bundle("m1", message_ids)
        await store.fail_all(message_ids, "HTTP 400: invalid_payload", dead=True)
        assert await store.pending("chat") == []
        async with backend.beside() as cli:
            assert (await cli.retry_dead([message_ids[0]])).retried == [message_ids[0]]
        async with backend.beside() as cli:
            assert (await cli.retry_dead(None)).retried == [message_ids[1]]
    async with backend.store() as store:
        pending = await store.pending("chat")
        assert [(d.id, d.message, d.attempts) for d in pending] == [
            (message_ids[0], None, 0),
            (message_ids[1], None, 0),
        ]


async def test_a_self_alert_firing_keeps_its_dead_firing_true(backend: Backend) -> None:
    fired = self_alert("treasury")
    async with backend.store() as store:
        await store.commit(AlertCommit(self_alerts=[fired]))
        dead = await dead_letter(store, alert(fired.fingerprint, 1))
        assert (await store.retry_dead([dead])).retried == [dead]


async def test_dropping_deletes_dead_letters_only(backend: Backend) -> None:
    async with backend.store() as store:
        dead = await dead_letter(store, alert("fp1", 1))
        [pending] = await enqueue(store, alert("fp2", 1), "mqtt")
        counted = await store.changes()
        async with backend.beside() as cli:
            assert await cli.drop_dead([dead, pending.id, 999]) == [dead]
        assert [r.id for r in await store.outbox()] == [pending.id]
        assert (await store.changes()).outbox > counted.outbox
        assert await store.drop_dead([dead]) == []


async def test_which_sinks_got_the_firing_survives_a_restart(backend: Backend) -> None:
    told = state("fp1")
    told.sent_to = ("mqtt",)
    async with backend.store() as store:
        await store.commit(AlertCommit(states=[StateChange("fp1", "low", told)]))
    async with backend.store() as store:
        [saved] = (await store.load(0)).alerts
    assert saved.sent_to == ("mqtt",)
