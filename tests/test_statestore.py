"""Engine state in SQLite: what a flush writes, and what a restart reads back."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

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


async def flush(engine: Engine, db: Path, now: float) -> None:
    store = await OutboxStore.open(db)
    try:
        await store.write(
            writer(
                engine.states(),
                engine.accounts(),
                engine.history.take_unsaved(),
                prune_before=now - engine.history.retention,
            )
        )
    finally:
        await store.close()


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
    await flush(engine, db, T0 + 900)

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
    assert engine.history.take_unsaved() == [(KEY, T0, Decimal("1000"))]
    assert engine.history.take_unsaved() == []
    engine.observe("treasury", "bitso", rows("900"), T0 + 60)
    engine.observe("treasury", "bitso", rows("800"), T0 + 60)  # same instant: replaced
    assert engine.history.take_unsaved() == [(KEY, T0 + 60, Decimal("800"))]

    engine.observe("treasury", "bitso", rows("700"), T0 + 120)
    await flush(engine, db, T0 + 120)
    again = restarted(db, T0 + 130)
    # Restored samples count as saved: the first flush after a restart does not rewrite them.
    assert again.history.take_unsaved() == []
    # The restart restored the one sample flushed, on top of nothing earlier.
    assert again.history.samples(KEY) == [(T0 + 120, Decimal("700"))]
