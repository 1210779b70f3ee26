"""Rendezvous hashing with bounded load: the same answer everywhere, an even spread even
for a few keys, and a join or death moves only about a share."""

from __future__ import annotations

import math

from balwatch.cluster.rendezvous import assign

KEYS = [f"bitso:key{i}" for i in range(600)]


def loads(owners: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for who in owners.values():
        counts[who] = counts.get(who, 0) + 1
    return counts


def test_no_replica_no_owner_and_order_does_not_matter() -> None:
    assert assign(KEYS, []) == {}
    assert assign(KEYS, ["a", "b", "c"]) == assign(list(reversed(KEYS)), ["c", "a", "b"])


def test_no_replica_gets_more_than_its_share_even_of_a_few_keys() -> None:
    for count in range(1, 13):
        keys = [f"bitso:{i:012x}" for i in range(count)]
        for replicas in (["replica-0", "replica-1", "replica-2"], ["a", "b"]):
            got = loads(assign(keys, replicas))
            assert max(got.values()) <= math.ceil(count / len(replicas)), (count, got)
            if count >= len(replicas):
                assert set(got) == set(replicas)  # nobody idle while keys pile up elsewhere


def test_a_join_moves_about_a_share_mostly_to_the_new_replica() -> None:
    before, after = assign(KEYS, ["a", "b", "c"]), assign(KEYS, ["a", "b", "c", "d"])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert loads(after)["d"] == 150
    assert len(moved) <= 200  # a quarter would be 150
    assert sum(after[k] == "d" for k in moved) == 150


def test_a_death_moves_the_dead_replicas_keys_and_few_others() -> None:
    before, after = assign(KEYS, ["a", "b", "c"]), assign(KEYS, ["a", "c"])
    moved = [k for k in KEYS if before[k] != after[k]]
    theirs = [k for k in KEYS if before[k] == "b"]
    assert set(theirs) <= set(moved) and len(moved) <= len(theirs) + 60
