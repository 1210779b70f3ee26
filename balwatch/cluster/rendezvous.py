"""Rendezvous (highest random weight) hashing with bounded load: which live replica should
hold each lease key.

Each key ranks the replicas by a hash of (replica, key) and goes to the first one in its
ranking that has room; no replica gets more than ``ceil(keys / replicas)``. Every replica
computes the same answer from the same keys and live replicas, with no coordination. A
replica joining or leaving moves about its share of the keys (those it wins or held, and a
few displaced by the bound), not a reshuffle of everything; the bound keeps a handful of
keys from landing all on one replica by chance, as plain rendezvous hashing lets happen.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection


def weight(replica: str, key: str) -> int:
    digest = hashlib.blake2b(f"{replica}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(keys: Collection[str], replicas: Collection[str]) -> dict[str, str]:
    """key -> the replica that should hold it (module docstring); empty with no replica."""
    if not replicas:
        return {}
    room = math.ceil(len(keys) / len(replicas))
    load: Counter[str] = Counter()
    out = {}
    for key in sorted(keys):
        ranked = sorted(replicas, key=lambda replica: (weight(replica, key), replica))
        chosen = next(r for r in reversed(ranked) if load[r] < room)
        load[chosen] += 1
        out[key] = chosen
    return out
