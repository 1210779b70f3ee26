"""Rendezvous (highest random weight) hashing: the replica that should hold a lease key.

Every replica computes the same answer from the same set of live replicas, with no
coordination; a replica joining or leaving moves only the keys it wins or held (about
1/n of them), not a reshuffle of everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection


def weight(replica: str, key: str) -> int:
    digest = hashlib.blake2b(f"{replica}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, replicas: Collection[str]) -> str | None:
    """The replica of ``replicas`` with the highest weight for ``key`` (None: none live)."""
    return max(replicas, key=lambda replica: (weight(replica, key), replica), default=None)
