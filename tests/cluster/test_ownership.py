"""The ownership state machine with a fake clock: acquire free keys only, renew, release
what another replica wins, lose what is not renewed in time."""

from __future__ import annotations

from dataclasses import dataclass

from balwatch.cluster.ownership import Ownership
from balwatch.cluster.rendezvous import assign

TTL = 8.0


@dataclass
class Lease:
    key: str
    owner: str | None
    token: int
    remaining: float


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keys_won_by(who: str, replicas: list[str], count: int = 2) -> list[str]:
    owners = assign([f"k{i}" for i in range(20)], replicas)
    return [k for k, replica in sorted(owners.items()) if replica == who][:count]


def machine(instance: str = "a", keys: list[str] | None = None) -> tuple[Ownership, Clock]:
    clock = Clock()
    keys = keys or [f"k{i}" for i in range(20)]
    return Ownership(instance, TTL, clock=clock, keys=frozenset(keys)), clock


def test_alone_it_wants_and_acquires_every_free_key() -> None:
    own, clock = machine()
    plan = own.plan(["a"], {})
    assert plan.acquire == own.keys and not plan.renew and not plan.release
    got = own.acquired([Lease(k, "a", 1, TTL) for k in plan.acquire], clock.now)
    assert got == dict.fromkeys(own.keys, 1)
    assert own.tokens() == got


def test_a_key_held_by_a_live_replica_is_never_taken_even_when_desired() -> None:
    own, _ = machine()
    key = keys_won_by("a", ["a", "b"], 1)[0]
    plan = own.plan(["a", "b"], {key: Lease(key, "b", 4, 5.0)})
    assert key not in plan.acquire
    released = own.plan(["a", "b"], {key: Lease(key, None, 4, 0.0)})
    assert key in released.acquire and key not in released.failover


def test_an_expired_lease_of_another_replica_is_a_failover() -> None:
    own, _ = machine()
    key = keys_won_by("a", ["a"], 1)[0]
    plan = own.plan(["a"], {key: Lease(key, "b", 4, -0.5)})
    assert key in plan.acquire and plan.failover == {key}


def test_keys_another_replica_wins_are_released_and_the_rest_kept() -> None:
    own, clock = machine()
    own.acquired([Lease(k, "a", 1, TTL) for k in own.keys], clock.now)
    plan = own.plan(["a", "b"], {})
    assert plan.release == set(own.keys) - own.desired(["a", "b"])
    assert plan.release and not plan.acquire
    assert all(assign(own.keys, ["a", "b"])[k] == "b" for k in plan.release)


def test_renewal_every_quarter_ttl_and_the_deadline_counts_from_the_send() -> None:
    own, clock = machine(keys=["k1"])
    own.acquired([Lease("k1", "a", 3, TTL)], clock.now)
    sent = clock.now
    assert own.plan(["a"], {}).renew == {"k1"}  # never renewed yet
    assert own.renewed({"k1"}, [Lease("k1", "a", 3, TTL - 0.5)], sent) == set()
    assert own.held["k1"].deadline == sent + TTL - 0.5  # the database's remaining, from the send
    clock.now += TTL / 8
    assert not own.plan(["a"], {}).renew
    clock.now = sent + TTL / 4
    assert own.plan(["a"], {}).renew == {"k1"}


def test_a_renewal_that_does_not_come_back_as_ours_loses_the_key() -> None:
    own, clock = machine(keys=["k1", "k2"])
    own.acquired([Lease("k1", "a", 3, TTL), Lease("k2", "a", 5, TTL)], clock.now)
    lost = own.renewed({"k1", "k2"}, [Lease("k1", "a", 3, TTL)], clock.now)
    assert lost == {"k2"} and set(own.held) == {"k1"}
    # a token that moved on is another owner's lease, whatever the owner column says
    assert own.renewed({"k1"}, [Lease("k1", "a", 4, TTL)], clock.now) == {"k1"}


def test_past_the_local_deadline_the_key_is_lost_without_asking_anyone() -> None:
    own, clock = machine(keys=["k1"])
    own.acquired([Lease("k1", "a", 3, TTL)], clock.now)
    clock.now += TTL - 0.01
    assert own.expired() == set()
    clock.now += 0.02
    assert own.expired() == {"k1"} and not own.held


def test_a_deadline_coming_close_renews_before_the_quarter() -> None:
    own, clock = machine(keys=["k1"])
    own.acquired([Lease("k1", "a", 3, TTL)], clock.now)
    own.renewed({"k1"}, [Lease("k1", "a", 3, 1.0)], clock.now)  # the database said 1 s left
    assert own.plan(["a"], {}).renew == {"k1"}


def test_keys_that_left_the_config_are_released() -> None:
    own, clock = machine(keys=["k1", "k2"])
    own.acquired([Lease("k1", "a", 1, TTL), Lease("k2", "a", 1, TTL)], clock.now)
    own.keys = frozenset({"k1"})
    assert own.plan(["a"], {}).release == {"k2"}


def test_a_key_just_acquired_survives_the_look_a_beat_ahead_even_with_the_shortest_ttl() -> None:
    own, clock = machine(keys=["k1"])
    own.ttl = 2.0  # the shortest lease_ttl: beats every 0.5 s
    own.acquired([Lease("k1", "a", 1, 2.0)], clock.now)
    clock.now += 0.5
    assert own.expired(margin=0.5) == set()
    assert own.plan(["a"], {}).renew == {"k1"}


def test_a_key_past_its_deadline_is_not_valid_before_any_beat_looks() -> None:
    own, clock = machine(keys=["k1"])
    own.acquired([Lease("k1", "a", 3, TTL)], clock.now)
    assert own.valid("k1") and own.tokens() == {"k1": 3}
    clock.now += TTL  # a pause (SIGSTOP) past the lease: nothing has run since
    assert not own.valid("k1") and own.tokens() == {}
    assert "k1" in own.held  # forgotten by the next beat (expired), not here
