"""Moving a state into PostgreSQL (``balwatch state migrate``): everything one store holds,
copied into another as it is.

Alert states (firing stay firing, so no alert fires again or goes unresolved), account
liveness, the whole metric history, self-alerts, markers, silences, and the outbox: pending
deliveries stay pending (with their attempts and group message), dead letters stay dead
(with their errors). Everything is read through the source's
:class:`~balwatch.state.base.StateStore` interface; the outbox rows go in with
:meth:`PostgresStateStore.import_outbox`, the one write the interface has no words for.
"""

from __future__ import annotations

from dataclasses import dataclass

from balwatch.rules.history import HistoryChanges
from balwatch.state.base import AlertCommit, StateError, StateSnapshot, StateStore
from balwatch.state.postgres import ImportedDelivery, PostgresStateStore


@dataclass(frozen=True, slots=True)
class Copied:
    """How much of each kind was copied."""

    alert_states: int
    accounts: int
    samples: int
    self_alerts: int
    markers: int
    pending: int
    dead: int
    silences: int

    def summary(self) -> str:
        parts = [
            (self.alert_states, "alert state"),
            (self.accounts, "account"),
            (self.samples, "history sample"),
            (self.self_alerts, "self-alert"),
            (self.markers, "marker"),
            (self.pending, "pending delivery"),
            (self.dead, "dead letter"),
            (self.silences, "silence"),
        ]
        return ", ".join(f"{count} {_plural(count, word)}" for count, word in parts)


def _plural(count: int, word: str) -> str:
    if count == 1:
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


async def is_empty(store: StateStore) -> bool:
    """Whether ``store`` holds no state at all (its instance's self-alerts included)."""
    saved = await store.load(0.0)
    held = (saved.alerts, saved.accounts, saved.samples, saved.self_alerts, saved.markers)
    return not any(held) and not await store.counts() and not await store.silences()


async def copy_state(source: StateStore, target: PostgresStateStore, *, force: bool) -> Copied:
    """Copy everything ``source`` holds into ``target``. A target that holds state already
    is refused (StateError) unless ``force``: then the states are replaced and the rest added
    (silences it has already are kept as they are)."""
    if not force and not await is_empty(target):
        raise StateError(
            f"{target.location}: holds balwatch state already; migrate into an empty "
            "database, or give --force to copy over it"
        )
    saved = await source.load(0.0)
    entries = await source.outbox()
    # pending() adds what outbox() leaves out: the group message a delivery went into.
    messages = {
        delivery.id: delivery.message
        for sink in sorted({entry.sink for entry in entries if entry.status == "pending"})
        for delivery in await source.pending(sink)
    }
    rows = [
        ImportedDelivery(
            sink=entry.sink,
            alert=entry.alert,
            status=entry.status,
            attempts=entry.attempts,
            error=entry.error,
            updated_at=entry.updated_at,
            message=messages.get(entry.id),
        )
        for entry in entries
    ]
    await target.flush(
        StateSnapshot(saved.alerts, saved.accounts, HistoryChanges([], [], saved.samples))
    )
    await target.commit(AlertCommit(self_alerts=saved.self_alerts, markers=saved.markers))
    await target.import_outbox(rows)
    present = {silence.id for silence in await target.silences()}
    silences = [silence for silence in await source.silences() if silence.id not in present]
    for silence in silences:
        await target.add_silence(silence)
    return Copied(
        alert_states=len(saved.alerts),
        accounts=len(saved.accounts),
        samples=len(saved.samples),
        self_alerts=len(saved.self_alerts),
        markers=len(saved.markers),
        pending=sum(row.status == "pending" for row in rows),
        dead=sum(row.status == "dead" for row in rows),
        silences=len(silences),
    )
