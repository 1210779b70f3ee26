"""Test doubles of balwatch's own interfaces: a scripted Sink and a hand-driven Clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from balwatch.sink import AlertDoc, AlertGroup, Grouping, Sink
from tests.waiting import within

# Decides one attempt: (alert, attempt number for this alert id, from 1) -> error or None.
Script = Callable[[AlertDoc, int], BaseException | None]


def alert(fingerprint: str, seq: int, **changes: Any) -> dict[str, Any]:
    """An alert document; the id names the fingerprint and the sequence number."""
    doc: dict[str, Any] = {
        "version": 1,
        "id": f"{fingerprint}:{seq}",
        "fingerprint": fingerprint,
        "status": "firing",
        "event": "firing",
        "rule": "low-available",
        "severity": "warning",
        "account": "acct",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "summary": "",
        "description": "",
        "labels": {},
        "expression": "available < 5000",
        "values": {"available": "4210.55", "seq": str(seq)},
        "started_at": "2026-11-25T10:00:00Z",
        "resolved_at": None,
        "observed_at": "2026-11-25T10:02:00Z",
    }
    doc.update(changes)
    return doc


class ScriptedSink(Sink):
    """Records every attempt; fails as ``script`` says; holds sends while ``gate`` is clear.

    ``yields`` makes each send give way to the loop that many times, so concurrent sends
    interleave the way network round trips would, without waiting on time.
    """

    def __init__(
        self,
        name: str,
        script: Script | None = None,
        *,
        gate: asyncio.Event | None = None,
        yields: Callable[[AlertDoc], int] = lambda alert: 0,
        grouping: Grouping | None = None,
    ) -> None:
        self.name = name
        self.grouping = grouping
        self.groups: list[AlertGroup] = []  # group messages delivered
        self.script = script or (lambda alert, attempt: None)
        self.gate = gate
        self.yields = yields
        self.attempts: list[AlertDoc] = []
        self.delivered: list[AlertDoc] = []
        self.sending: Counter[str] = Counter()  # fingerprint -> sends in flight
        self.max_sending = 0
        self.overlaps: list[str] = []  # fingerprints sent twice at once: must stay empty
        self._tries: Counter[str] = Counter()
        self._attempted = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, alert: AlertDoc) -> None:
        fingerprint = alert["fingerprint"]
        if self.sending[fingerprint]:
            self.overlaps.append(fingerprint)
        self.sending[fingerprint] += 1
        self.max_sending = max(self.max_sending, sum(self.sending.values()))
        self.attempts.append(alert)
        self._attempted.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            for _ in range(self.yields(alert)):
                await asyncio.sleep(0)
            self._tries[alert["id"]] += 1
            error = self.script(alert, self._tries[alert["id"]])
            if error is not None:
                raise error
            self.delivered.append(alert)
        finally:
            self.sending[fingerprint] -= 1

    async def send_group(self, group: AlertGroup) -> None:
        """A group message: its alerts count as attempts (and overlaps) like single ones."""
        await asyncio.gather(*(self.send(alert) for alert in group.alerts))
        self.groups.append(group)

    async def wait_attempts(self, count: int) -> None:
        """Return once ``count`` attempts have started; fail the test if they do not."""

        async def attempted() -> None:
            while len(self.attempts) < count:
                self._attempted.clear()
                await self._attempted.wait()

        await within(attempted(), f"{count} send attempts on sink {self.name}")

    def delivered_ids(self) -> list[str]:
        return [a["id"] for a in self.delivered]


class FakeClock:
    """A clock that moves only on :meth:`advance`; waits end at their deadline or wake-up."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, asyncio.Event]] = []
        self._slept = asyncio.Event()
        self.sleeps = 0  # waits begun so far

    def now(self) -> float:
        return self._now

    async def wait(self, wake: asyncio.Event, until: float | None) -> None:
        if until is not None and until <= self._now:
            return
        entry = (float("inf") if until is None else until, wake)
        self._sleepers.append(entry)
        self.sleeps += 1
        self._slept.set()
        try:
            await wake.wait()
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for until, wake in self._sleepers:
            if until <= self._now:
                wake.set()

    async def sleeping_until(self, *, after: int = 0) -> float:
        """Wait until someone sleeps towards a deadline, in a wait begun after the first
        ``after`` ones, and return the earliest deadline; fail the test if nobody does."""

        async def slept() -> None:
            while self.sleeps <= after or not any(u < float("inf") for u, _ in self._sleepers):
                self._slept.clear()
                await self._slept.wait()

        await within(slept(), f"a wait with a deadline (after {after} waits)")
        return min(until for until, _ in self._sleepers)
