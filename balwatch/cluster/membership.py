"""The membership loop: heartbeat, read the replicas and leases, act on the ownership plan.

Every :data:`HEARTBEAT_SECONDS` (a quarter of the lease ttl when that is shorter: renewals
need a beat to happen in) the replica writes its heartbeat, reads which replicas are
live (a heartbeat younger than the lease ttl) and the leases, then, per
:class:`~balwatch.cluster.ownership.Ownership`:

- keys it no longer should hold are *handed over*: the holder stops their polls and flushes
  their state while the lease is still held, then the lease is released (free at once, so
  the next owner takes it on its next beat, with no failover delay);
- held keys are renewed; a key whose renewal did not come back as ours, or whose local
  deadline passed, is *given up*: the holder stops polling it and forgets it without
  writing anything (another replica owns it now, or may at any moment);
- free keys it should hold are acquired and *taken*: the holder loads what the previous
  owner committed, restores it and starts polling.

The database unreachable, nothing is acquired or renewed and the local deadlines run out:
the replica stops polling its accounts when they pass, since it cannot tell an outage from
a partition, and polling a key another replica may hold would break the source's limit.

A write refused as :class:`~balwatch.state.base.Fenced` calls :meth:`Membership.verify`:
the held leases are renewed at once, and the ones lost are given up at the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

import structlog

from balwatch.cluster.keys import LeaseKeys
from balwatch.cluster.ownership import LeaseView, Ownership, ReplicaView
from balwatch.cluster.status import cluster_json
from balwatch.state.base import Scope

log = structlog.get_logger("balwatch.cluster")

HEARTBEAT_SECONDS = 1.0


class LeaseStore(Protocol):
    """The lease and membership methods of the PostgreSQL store."""

    @property
    def instance(self) -> str: ...
    async def heartbeat(self, address: str | None) -> None: ...
    async def replicas(self) -> Sequence[ReplicaView]: ...
    async def leases(self) -> Sequence[LeaseView]: ...
    async def acquire(self, keys: Sequence[str], ttl: float) -> Sequence[LeaseView]: ...
    async def renew(self, keys: Sequence[str], ttl: float) -> Sequence[LeaseView]: ...
    async def release(self, keys: Sequence[str]) -> None: ...
    async def forget_replica(self, instance: str) -> None: ...


class Holder(Protocol):
    """The daemon, which polls and evaluates the accounts of the keys held."""

    async def take(self, scope: Scope) -> None:
        """Newly held keys (``scope.tokens``): load, restore, register, poll. Raises when it
        could not (the keys are released again)."""

    async def hand_over(self, keys: Collection[str]) -> None:
        """Keys to release, still held: stop their polls, flush, forget them silently."""

    async def give_up(self, keys: Collection[str]) -> None:
        """Keys lost: stop their polls and forget them silently; write nothing of theirs."""


class LeaseEvents(Protocol):
    """What the metrics count (:class:`balwatch.metrics.Metrics` has it)."""

    def record_leases(self, *, held: int, acquired: int, lost: int, failovers: int) -> None: ...


class Membership:
    """This replica's place in the cluster (module docstring)."""

    def __init__(
        self,
        store: LeaseStore,
        holder: Holder,
        keys: LeaseKeys,
        *,
        ttl: float,
        address: str | None = None,
        events: LeaseEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.store = store
        self.instance = store.instance
        self.keys = keys
        self.ttl = ttl
        self._holder = holder
        self._address = address
        self._events = events
        self._clock = clock
        # At least four beats a lease: renewal every ttl / 4 needs a beat to happen in.
        self._heartbeat = min(heartbeat, ttl / 4)
        self.ownership = Ownership(self.instance, ttl, clock=clock, keys=frozenset(keys.keys))
        self.replicas: list[ReplicaView] = []  # as last read, for /api/cluster
        self.leases: dict[str, LeaseView] = {}
        self.moved = asyncio.Event()  # set whenever the keys held change (tests wait on it)
        self._step = asyncio.Lock()
        self._lost: set[str] = set()  # found lost outside a beat (verify): given up at the next
        self._wake = asyncio.Event()
        self._failures = 0  # beats in a row that could not reach the store

    # --- what the publisher and the API ask ------------------------------------------

    def holds(self, owner: str | None) -> bool:
        """Whether this replica speaks for ``owner`` (an account or GROUP_SERIES + rule)."""
        key = None if owner is None else self.keys.key_of(owner)
        return key is not None and self.ownership.valid(key)

    def scope(self, owners: Iterable[str | None] | None = None) -> Scope:
        """The fencing scope of ``owners`` (None: of every key held)."""
        if owners is None:
            tokens = self.ownership.tokens()
        else:
            wanted = {self.keys.key_of(o) for o in owners if o is not None}
            tokens = self.ownership.tokens(k for k in wanted if k is not None)
        return Scope(tokens, self.keys.owners_of(tokens))

    def accounts(self) -> list[str]:
        """The accounts of the keys held."""
        return self.keys.accounts_of(sorted(self.ownership.held))

    def status(self) -> dict[str, object]:
        """``/api/cluster``: this replica, what it holds, and the cluster as last read."""
        now = self._clock()
        return {
            "instance": self.instance,
            "accounts": self.accounts(),
            "held": [
                {
                    "key": key,
                    "token": held.token,
                    "deadline_in": round(held.deadline - now, 3),
                    "accounts": list(self.keys.accounts.get(key, ())),
                }
                for key, held in sorted(self.ownership.held.items())
            ],
            **cluster_json(self.replicas, self.leases.values(), ttl=self.ttl, keys=self.keys),
        }

    # --- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            await self.beat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await self._wake.wait()
            self._wake.clear()

    async def beat(self) -> None:
        """:meth:`step`, logging what it raises: a bug must not end the beats (the leases
        would all lapse) nor a start."""
        try:
            await self.step()
        except Exception:
            log.exception("membership_step_failed")

    async def step(self) -> None:
        """One beat (module docstring). A store call that fails or hangs ends the beat; the
        local deadlines keep running."""
        async with self._step:
            try:
                async with asyncio.timeout(self.ttl / 4):
                    await self.store.heartbeat(self._address)
                    replicas = list(await self.store.replicas())
                    leases = {lease.key: lease for lease in await self.store.leases()}
            except (Exception, TimeoutError) as exc:
                self._unreachable(exc)
                await self._expire()
                return
            if self._failures:
                log.info("cluster_store_reachable", failures=self._failures)
                self._failures = 0
            self.replicas, self.leases = replicas, leases
            live = [r.instance for r in replicas if r.age < self.ttl]
            plan = self.ownership.plan(live, leases)
            if plan.release:
                await self.hand_over(plan.release)
            if plan.renew:
                await self._renew(plan.renew)
            if plan.acquire:
                await self._acquire(plan.acquire, plan.failover)
            await self._expire()
            self._record()

    async def _expire(self) -> None:
        """Give up the keys lost outside a beat, and those whose local deadline passes
        before the next beat could renew them."""
        lost = self.ownership.expired(self._heartbeat)
        if lost:
            log.warning("lease_deadline_passed", keys=_shown(lost))
        lost |= self._lost
        self._lost = set()
        if lost:
            await self._give_up(lost)

    def fenced(self) -> None:
        """A write was fenced: look at the leases now rather than at the next beat."""
        self._wake.set()

    async def verify(self) -> set[str]:
        """Renew every held key now (a write was fenced); returns the keys lost, which are
        no longer held (:meth:`holds`) and are given up at the next beat."""
        keys = set(self.ownership.held)
        if not keys:
            return set()
        sent = self._clock()
        try:
            async with asyncio.timeout(self.ttl / 4):
                got = await self.store.renew(sorted(keys), self.ttl)
        except (Exception, TimeoutError):
            return set()
        lost = self.ownership.renewed(keys, got, sent)
        if lost:
            self._lost.update(lost)
            self._wake.set()
        return lost

    async def hand_over(self, keys: Collection[str]) -> None:
        """Give ``keys`` up cleanly (still held): the holder flushes them, then the leases
        are released for the next owner."""
        held = [k for k in keys if k in self.ownership.held]
        if not held:
            return
        await self._holder.hand_over(held)
        self.ownership.forget(held)
        try:
            async with asyncio.timeout(self.ttl / 4):
                await self.store.release(sorted(held))
        except (Exception, TimeoutError) as exc:  # they expire: the next owner waits a ttl
            log.warning("lease_release_failed", keys=_shown(held), error=type(exc).__name__)
        log.info("leases_released", keys=_shown(held), accounts=len(self.keys.accounts_of(held)))
        self._record()

    async def leave(self) -> None:
        """At stop, with polling stopped and the state flushed: release every lease (the
        others take the accounts on their next beat) and take this replica off the list."""
        async with self._step:
            held = sorted(self.ownership.held)
            self.ownership.forget(held)
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(self.ttl / 4):
                    if held:
                        await self.store.release(held)
                    await self.store.forget_replica(self.instance)
            accounts = len(self.keys.accounts_of(held))
            log.info("leases_released", keys=_shown(held), accounts=accounts)

    async def rekey(self, keys: LeaseKeys) -> None:
        """The config or rules changed: held keys whose accounts or grouped rules changed
        are handed over (under the old keys); the new keys are acquired from the next beat."""
        async with self._step:
            old = self.keys
            changed = [
                key
                for key in self.ownership.held
                if keys.accounts.get(key) != old.accounts.get(key)
                or keys.owners_of([key]) != old.owners_of([key])
            ]
            await self.hand_over(changed)
            self.keys = keys
            self.ownership.keys = frozenset(keys.keys)

    # --- the steps -------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:  # once per outage: every beat fails
            log.warning("cluster_store_unreachable", error=type(exc).__name__)

    async def _renew(self, keys: Collection[str]) -> None:
        sent = self._clock()
        try:
            async with asyncio.timeout(self.ttl / 4):
                got = await self.store.renew(sorted(keys), self.ttl)
        except (Exception, TimeoutError) as exc:
            self._unreachable(exc)
            return
        lost = self.ownership.renewed(keys, got, sent)
        if lost:
            log.warning("leases_lost", keys=_shown(lost))
            await self._give_up(lost)

    async def _acquire(self, keys: Collection[str], failover: Collection[str]) -> None:
        sent = self._clock()
        try:
            async with asyncio.timeout(self.ttl / 4):
                got = await self.store.acquire(sorted(keys), self.ttl)
        except (Exception, TimeoutError) as exc:
            self._unreachable(exc)
            return
        tokens = self.ownership.acquired(got, sent)
        if not tokens:
            return
        scope = Scope(tokens, self.keys.owners_of(tokens))
        try:
            await self._holder.take(scope)
        except Exception:
            log.exception("lease_take_failed", keys=_shown(tokens))
            self.ownership.forget(tokens)
            with contextlib.suppress(Exception, TimeoutError):
                async with asyncio.timeout(self.ttl / 4):
                    await self.store.release(sorted(tokens))
            return
        taken = sorted(tokens)
        failovers = [k for k in taken if k in failover]
        self.moved.set()
        if self._events is not None:
            self._events.record_leases(
                held=len(self.ownership.held),
                acquired=len(taken),
                lost=0,
                failovers=len(failovers),
            )
        log.info(
            "leases_acquired",
            keys=_shown(taken),
            accounts=len(self.keys.accounts_of(taken)),
            failover=_shown(failovers),
        )

    async def _give_up(self, keys: Collection[str]) -> None:
        self.ownership.forget(keys)
        await self._holder.give_up(keys)
        self.moved.set()
        if self._events is not None:
            self._events.record_leases(
                held=len(self.ownership.held), acquired=0, lost=len(keys), failovers=0
            )

    def _record(self) -> None:
        self.moved.set()
        if self._events is not None:
            self._events.record_leases(
                held=len(self.ownership.held), acquired=0, lost=0, failovers=0
            )


# A log line names this many keys at most: a thousand accounts on one replica would make
# lines of tens of kilobytes (journald cuts them), and the count is in ``accounts``.
KEYS_SHOWN = 20


def _shown(keys: Collection[str]) -> list[str]:
    """``keys`` sorted, the first :data:`KEYS_SHOWN` and ``+N more`` for the rest."""
    ordered = sorted(keys)
    if len(ordered) <= KEYS_SHOWN:
        return ordered
    return [*ordered[:KEYS_SHOWN], f"+{len(ordered) - KEYS_SHOWN} more"]
