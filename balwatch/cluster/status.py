"""What ``/api/cluster`` and ``balwatch cluster status`` show: the replicas, the leases
with their fencing tokens and accounts, and (for a running replica) what it holds."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from balwatch.alert import iso_z
from balwatch.cluster.keys import LeaseKeys, lease_keys
from balwatch.cluster.ownership import LeaseView, ReplicaView
from balwatch.config import Config
from balwatch.rules.rule import Rule
from balwatch.state import postgres_store


def _time(value: object) -> object:
    if isinstance(value, datetime):
        return iso_z(value.astimezone(UTC))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso_z(datetime.fromtimestamp(value, UTC))
    return value


def replica_json(replica: ReplicaView, ttl: float) -> dict[str, object]:
    return {
        "instance": replica.instance,
        "live": replica.age < ttl,
        "heartbeat_age": round(replica.age, 3),
        "started_at": _time(getattr(replica, "started_at", None)),
        "heartbeat_at": _time(getattr(replica, "heartbeat_at", None)),
        "version": getattr(replica, "version", None),
        "address": getattr(replica, "address", None),
    }


def lease_json(lease: LeaseView, keys: LeaseKeys | None) -> dict[str, object]:
    out: dict[str, object] = {
        "key": lease.key,
        "owner": lease.owner,
        "token": lease.token,
        "remaining": round(lease.remaining, 3),
        "expires_at": _time(getattr(lease, "expires_at", None)),
        "acquired_at": _time(getattr(lease, "acquired_at", None)),
    }
    if keys is not None:
        out["accounts"] = list(keys.accounts.get(lease.key, ()))
    return out


def cluster_json(
    replicas: Sequence[ReplicaView],
    leases: Collection[LeaseView],
    *,
    ttl: float,
    keys: LeaseKeys | None = None,
) -> dict[str, object]:
    """The replicas and leases as the database has them; with ``keys`` (the config's), each
    lease's accounts and the accounts under no lease yet."""
    doc: dict[str, object] = {
        "lease_ttl": ttl,
        "replicas": [replica_json(r, ttl) for r in sorted(replicas, key=lambda r: r.instance)],
        "leases": [lease_json(lease, keys) for lease in sorted(leases, key=lambda x: x.key)],
    }
    if keys is not None:
        live = {lease.key for lease in leases if lease.owner is not None and lease.remaining > 0}
        doc["unowned_accounts"] = keys.accounts_of(k for k in keys.keys if k not in live)
    return doc


async def read_cluster(config: Config, rules: Sequence[Rule]) -> dict[str, object]:
    """``balwatch cluster status``: the replicas and leases in ``config``'s database, with
    the accounts of each lease key by this config and rules. StateError when the database
    cannot be used (the tables must exist: a replica created them)."""
    async with postgres_store(config, create=False) as store:
        replicas, leases = await store.replicas(), await store.leases()
    return cluster_json(
        replicas, leases, ttl=config.state.lease_ttl, keys=lease_keys(config, rules)
    )
