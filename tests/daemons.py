"""A daemon in this process, and waits on what it does: its alerts, the simulator's requests.

The real :class:`~balwatch.daemon.Daemon` with its SQLite state, against real simulators,
brokers and receivers: only the process boundary is skipped (``tests/test_e2e.py`` has it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from balwatch.alert import Alert
from balwatch.daemon import Daemon
from balwatch.simulator.state import SimAccount, SimState
from balwatch.systemd import Notifier

WAIT = 20.0


class AlertLog:
    """``on_alerts`` of the daemon: every alert it committed, in order, and waits on them."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self._changed = asyncio.Event()

    def __call__(self, batch: Sequence[Alert]) -> None:
        self.alerts.extend(batch)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Alert], bool], *, after: int = 0, timeout: float = WAIT
    ) -> Alert:
        """The first alert at index >= ``after`` that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            index = after
            while True:
                while index < len(self.alerts):
                    if predicate(self.alerts[index]):
                        return self.alerts[index]
                    index += 1
                self._changed.clear()
                await self._changed.wait()

    async def event(
        self, rule: str, account: str, event: str, *, asset: str | None = None, after: int = 0
    ) -> Alert:
        def match(a: Alert) -> bool:
            return (
                a.rule == rule
                and a.account == account
                and a.event == event
                and (asset is None or a.asset == asset)
            )

        try:
            return await self.wait_for(match, after=after)
        except TimeoutError:
            seen = [(a.rule, a.account, a.asset, a.event) for a in self.alerts[after:]]
            raise AssertionError(f"no {event} of {rule} for {account}; got {seen}") from None


@contextlib.asynccontextmanager
async def running(
    config: Path,
    alerts: AlertLog,
    notifier: Notifier | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> AsyncIterator[Daemon]:
    """A started daemon (first poll round done, sinks connected); stopped on exit: exit 0.

    ``environ``: what ``${VAR}`` in the config reads, instead of this process's environment.
    """
    daemon = Daemon(
        config,
        environ=environ,
        on_alerts=alerts,
        notifier=notifier or Notifier(None),
        configure_logs=False,
    )
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=WAIT, return_when="FIRST_COMPLETED")
    if task in done:
        raise AssertionError(f"the daemon ended before it was ready: {task.result()}")
    if started not in done:
        started.cancel()
        daemon.stopping.set()
        await task
        raise AssertionError(f"not ready within {WAIT}s: {daemon.ready()[1]}")
    try:
        yield daemon
    finally:
        daemon.stopping.set()
        code = await asyncio.wait_for(task, 30)
    assert code == 0


class CountingState(SimState):
    """SimState that lets a test wait for an account's n-th request."""

    def __init__(self, accounts: list[SimAccount]) -> None:
        super().__init__(accounts)
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    def record(self, account: SimAccount) -> None:
        super().record(account)
        for waiter in list(self._waiters):
            name, count, future = waiter
            if name == account.name and account.requests >= count and not future.done():
                future.set_result(None)
                self._waiters.remove(waiter)

    async def requests(self, account: str, count: int, timeout: float = WAIT) -> None:
        if self.accounts[account].requests >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((account, count, future))
        await asyncio.wait_for(future, timeout)
