"""Engine state in SQLite: what a flush writes, and what a restart reads back."""

from __future__ import annotations

import contextlib
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from balwatch.model import Balance
from balwatch.outbox.store import DB_FILE, OutboxStore
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule
from balwatch.statestore import prepare, restore, writer

T0 = 1_800_000_000.0
KEY = ("treasury", "bitso", "USDT", "total")
DROP = Rule(name="sudden-drop", when=parse_expression("pct_change(total, 15m) <= -20"))


def rows(total: str) -> list[Balance]:
    return [Balance("treasury", "bitso", "bitso", "USDT", "usdt", total=Decimal(total))]


def new_engine() -> Engine:
    return Engine([DROP], clock=lambda: T0)


def started(db: Path) -> Engine:
    """A first start, as the daemon does it: the engine tables are made before any flush."""
    assert prepare(db, 0).samples == []
    return new_engine()


async def flush(engine: Engine, db: Path) -> None:
    store = await OutboxStore.open(db)
    try:
        await store.write(writer(engine.states(), engine.accounts(), engine.history.take_changes()))
    finally:
        await store.close()


def stored_samples(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM engine_sample").fetchone()
    return int(count)


def restarted(db: Path, now: float) -> Engine:
    engine = new_engine()
    saved = prepare(db, now - engine.history.retention)
    engine.restore(saved.alerts, saved.accounts, now)
    restore(engine, saved, now)
    return engine


async def test_a_change_window_keeps_its_past_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / DB_FILE
    engine = started(db)
    for minute, total in ((0, "1000"), (10, "1000"), (15, "990")):
        engine.observe("treasury", "bitso", rows(total), T0 + 60 * minute)
    await flush(engine, db)

    again = restarted(db, T0 + 950)
    assert again.history.samples(KEY) == engine.history.samples(KEY)
    # 25 % below the value of 15 minutes ago, which only the saved history knows: without
    # it the window would not be full yet, and pct_change no data.
    [alert] = again.observe("treasury", "bitso", rows("750"), T0 + 1000)
    assert (alert.rule, alert.event) == ("sudden-drop", "firing")


async def test_each_flush_writes_only_what_is_new(tmp_path: Path) -> None:
    db = tmp_path / DB_FILE
    engine = started(db)
    engine.observe("treasury", "bitso", rows("1000"), T0)
    assert engine.history.take_changes().samples == [(KEY, T0, Decimal("1000"))]
    assert engine.history.take_changes().samples == []
    engine.observe("treasury", "bitso", rows("900"), T0 + 60)
    engine.observe("treasury", "bitso", rows("800"), T0 + 60)  # same instant: replaced
    assert engine.history.take_changes().samples == [(KEY, T0 + 60, Decimal("800"))]

    engine.observe("treasury", "bitso", rows("700"), T0 + 120)
    await flush(engine, db)
    again = restarted(db, T0 + 130)
    # Restored samples count as saved: the first flush after a restart does not rewrite them.
    assert again.history.take_changes().samples == []
    # The restart restored the one sample flushed, on top of nothing earlier.
    assert again.history.samples(KEY) == [(T0 + 120, Decimal("700"))]


@pytest.mark.parametrize(
    ("poll_every", "last_poll", "back_at"),
    [
        (60, 19 * 60, 49 * 60),  # stopped for half an hour, longer than the window
        (300, 20 * 60, 24 * 60 + 50),  # polls every 5 min, a 5-minute restart
    ],
)
async def test_a_drop_while_the_daemon_was_stopped_fires_after_the_restart(
    tmp_path: Path, poll_every: int, last_poll: int, back_at: float
) -> None:
    """The window's start is the last value before the stop, as for a daemon that kept
    running through the same gap: a drop nobody saw happen is still reported."""
    db = tmp_path / DB_FILE
    engine = started(db)
    for t in range(0, last_poll + 1, poll_every):
        engine.observe("treasury", "bitso", rows("1000"), T0 + t)
    await flush(engine, db)
    kept_running = engine.observe("treasury", "bitso", rows("500"), T0 + back_at)
    after_restart = restarted(db, T0 + back_at).observe(
        "treasury", "bitso", rows("500"), T0 + back_at
    )
    assert [a.event for a in kept_running] == [a.event for a in after_restart] == ["firing"]


async def test_the_table_holds_what_the_engine_holds(tmp_path: Path) -> None:
    """Trimmed samples leave the table too: it does not grow with uptime."""
    db = tmp_path / DB_FILE
    engine = started(db)
    for minute in range(120):
        engine.observe("treasury", "bitso", rows(str(1000 + minute)), T0 + 60 * minute)
        if minute % 7 == 0:
            await flush(engine, db)
    await flush(engine, db)
    assert stored_samples(db) == len(engine.history.samples(KEY)) == 17
    again = restarted(db, T0 + 60 * 119)
    assert again.history.samples(KEY) == engine.history.samples(KEY)


async def test_a_row_that_vanished_does_not_get_its_old_history_back(tmp_path: Path) -> None:
    """A row that disappears (a zero balance left out) comes back with an empty window,
    restart or not: its old samples must not return from the table."""
    db = tmp_path / DB_FILE
    engine = started(db)
    other = [Balance("treasury", "bitso", "bitso", "MXN", "mxn", total=Decimal(5))]
    for minute in range(6):
        engine.observe("treasury", "bitso", rows("1000"), T0 + 60 * minute)
        await flush(engine, db)
    for minute in range(6, 11):
        engine.observe("treasury", "bitso", other, T0 + 60 * minute)
    engine.observe("treasury", "bitso", rows("100"), T0 + 660)
    await flush(engine, db)
    again = restarted(db, T0 + 700)
    assert again.history.samples(KEY) == engine.history.samples(KEY) == [(T0 + 660, Decimal(100))]
    assert engine.observe("treasury", "bitso", rows("100"), T0 + 1200) == []
    assert again.observe("treasury", "bitso", rows("100"), T0 + 1200) == []


async def test_history_no_rule_reads_any_more_leaves_the_table(tmp_path: Path) -> None:
    db = tmp_path / DB_FILE
    engine = started(db)
    engine.observe("treasury", "bitso", rows("1000"), T0)
    await flush(engine, db)
    assert stored_samples(db) == 1
    rise = Rule(name="rise", when=parse_expression("delta(available, 1h) > 0"))
    again = Engine([rise], clock=lambda: T0 + 60)
    saved = prepare(db, T0 + 60 - again.history.retention)
    restore(again, saved, T0 + 60)
    assert KEY not in again.history
    await flush(again, db)
    assert stored_samples(db) == 0


@pytest.mark.parametrize("directory", ["st%41", "a#b", "what?"])
def test_a_state_dir_with_uri_characters_opens_again(tmp_path: Path, directory: str) -> None:
    """The read-only look before opening builds a file: URI; '%', '#' and '?' are escaped."""
    db = tmp_path / directory / DB_FILE
    prepare(db, 0)
    prepare(db, 0)  # the second start reads what the first made
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]
