"""Rendezvous hashing: the same answer everywhere, and a join or death moves only a share."""

from __future__ import annotations

from balwatch.cluster.rendezvous import owner

KEYS = [f"bitso:key{i}" for i in range(600)]


def owners(replicas: list[str]) -> dict[str, str | None]:
    return {key: owner(key, replicas) for key in KEYS}


def test_no_replica_no_owner_and_order_does_not_matter() -> None:
    assert owner("k", []) is None
    assert owners(["a", "b", "c"]) == owners(["c", "a", "b"])


def test_keys_spread_over_the_replicas() -> None:
    counts: dict[str | None, int] = {}
    for who in owners(["a", "b", "c"]).values():
        counts[who] = counts.get(who, 0) + 1
    assert set(counts) == {"a", "b", "c"}
    assert all(150 <= n <= 250 for n in counts.values()), counts


def test_a_join_moves_only_keys_to_the_new_replica() -> None:
    before, after = owners(["a", "b", "c"]), owners(["a", "b", "c", "d"])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)
    assert 100 <= len(moved) <= 200  # about a quarter


def test_a_death_moves_only_the_dead_replicas_keys() -> None:
    before, after = owners(["a", "b", "c"]), owners(["a", "c"])
    assert [k for k in KEYS if before[k] != after[k]] == [k for k in KEYS if before[k] == "b"]
