"""Which lease keys this replica acquires, renews and gives up: a state machine, no I/O.

Fed what the store says (the live replicas, the leases and their owners) and what it
answered to acquire and renew, it keeps the keys held with a *local* deadline each: the
moment, on this replica's monotonic clock, before which the lease surely has not expired
in the database. The deadline counts from when the request was sent (the database set the
expiry later than that), with the lease's remaining time as the database computed it, so
it errs early: a replica whose renewals stop getting through (the database down, a network
partition, a long pause) stops polling before another replica can take the key over.

- desired keys: those whose rendezvous owner among the live replicas is this one;
- acquire a desired key only when its lease is free: released, expired, or already ours
  (the previous owner gave it up or died; a key is never taken from a live holder);
- renew held keys every ``ttl / 4``, and at once when a deadline is within half a ttl;
- release held keys no longer desired (another replica joined and wins them) and keys that
  left the config;
- lose a key when its renewal did not come back as ours, or its local deadline passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from balwatch.cluster.rendezvous import assign


class LeaseView(Protocol):
    """What is read of a lease row (:class:`balwatch.state.base.Lease` has it)."""

    @property
    def key(self) -> str: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def token(self) -> int: ...
    @property
    def remaining(self) -> float: ...


class ReplicaView(Protocol):
    """What is read of a replica row (:class:`balwatch.state.base.Replica` has it)."""

    @property
    def instance(self) -> str: ...
    @property
    def age(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Held:
    token: int
    deadline: float  # local monotonic time before which the lease is surely still ours


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now. ``failover``: keys of ``acquire`` whose last owner did not release
    them (it died or was cut off): the lease expired."""

    acquire: frozenset[str] = frozenset()
    renew: frozenset[str] = frozenset()
    release: frozenset[str] = frozenset()
    failover: frozenset[str] = frozenset()


@dataclass
class Ownership:
    """The lease keys of one replica (module docstring)."""

    instance: str
    ttl: float
    clock: Callable[[], float] = time.monotonic
    keys: frozenset[str] = frozenset()
    held: dict[str, Held] = field(default_factory=dict)
    _renewed_at: float = float("-inf")

    def desired(self, live: Collection[str]) -> set[str]:
        owners = assign(self.keys, {*live, self.instance})
        return {key for key, replica in owners.items() if replica == self.instance}

    def plan(self, live: Collection[str], leases: Mapping[str, LeaseView]) -> Plan:
        """What to acquire, renew and release, given the live replicas and the leases."""
        now = self.clock()
        desired = self.desired(live)
        free = {
            key
            for key in desired - self.held.keys()
            if (lease := leases.get(key)) is None
            or lease.owner is None
            or lease.owner == self.instance
            or lease.remaining <= 0
        }
        failover = {
            key
            for key in free
            if (lease := leases.get(key)) is not None and lease.owner not in (None, self.instance)
        }
        kept = desired & self.held.keys()
        soon = any(self.held[k].deadline - now < self.ttl / 2 for k in kept)
        renew = kept if soon or now - self._renewed_at >= self.ttl / 4 else set()
        return Plan(
            frozenset(free),
            frozenset(renew),
            frozenset(self.held.keys() - desired),
            frozenset(failover),
        )

    def acquired(self, leases: Iterable[LeaseView], sent: float) -> dict[str, int]:
        """The answer to an acquire sent at ``sent``: the keys now ours, with their tokens."""
        got = {}
        for lease in leases:
            if lease.owner == self.instance:
                self.held[lease.key] = Held(lease.token, sent + min(self.ttl, lease.remaining))
                got[lease.key] = lease.token
        return got

    def renewed(self, asked: Collection[str], leases: Iterable[LeaseView], sent: float) -> set[str]:
        """The answer to a renew of ``asked`` sent at ``sent``; returns the keys lost."""
        self._renewed_at = sent
        kept = set()
        for lease in leases:
            held = self.held.get(lease.key)
            if lease.owner == self.instance and held is not None and lease.token == held.token:
                self.held[lease.key] = Held(held.token, sent + min(self.ttl, lease.remaining))
                kept.add(lease.key)
        lost = {key for key in asked if key in self.held} - kept
        self.forget(lost)
        return lost

    def expired(self, margin: float = 0.0) -> set[str]:
        """The held keys whose local deadline passed (or comes within ``margin``, the time
        to the next look): lost, forgotten here."""
        now = self.clock() + margin
        lost = {key for key, held in self.held.items() if held.deadline <= now}
        self.forget(lost)
        return lost

    def valid(self, key: str) -> bool:
        """Whether ``key`` is held and its local deadline not passed (checked every time:
        a process paused past it must not act on it before the next beat notices)."""
        held = self.held.get(key)
        return held is not None and held.deadline > self.clock()

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.held.pop(key, None)

    def tokens(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """The fencing tokens of the held keys (of ``keys`` among them)."""
        wanted = self.held.keys() if keys is None else keys
        return {key: self.held[key].token for key in wanted if self.valid(key)}
