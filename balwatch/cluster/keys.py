"""Lease keys: the units of ownership a replica acquires, polls and hands over whole.

Accounts that share a credential share a key: the source's rate limit is per credential,
and only one replica at a time may spend it. Accounts that one grouped (portfolio) rule
selects share a key too, since a group's number needs every row of the group in one engine;
keys are the union of both relations, so a grouped rule over every account puts every
account under one key. A grouped rule's alerts and history are owned by the key of the
accounts it selects (its owner name is :data:`~balwatch.rules.groups.GROUP_SERIES` + rule).

Key names carry no secret (a credential appears only as :meth:`Secret.fingerprint`), and
every replica with the same config computes the same names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from balwatch.config import Config
from balwatch.rules.groups import GROUP_SERIES
from balwatch.rules.rule import Rule
from balwatch.secret import Secret


def credential_key(exchange: str, credentials: Mapping[str, Secret], account: str) -> str:
    """Accounts that share a key share its limit; keyless accounts are limited alone."""
    for name in ("api_key", "login"):
        secret = credentials.get(name)
        if secret is not None:
            return f"{exchange}:{secret.fingerprint()}"
    return f"{exchange}:account:{account}"


@dataclass(frozen=True, slots=True)
class LeaseKeys:
    """The lease keys of one config and rule set."""

    owners: Mapping[str, str]
    """owner name (an account, or GROUP_SERIES + a grouped rule's name) -> lease key"""
    accounts: Mapping[str, tuple[str, ...]]
    """lease key -> its accounts, in config order"""
    by_key: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    """lease key -> every owner name under it (its accounts and grouped rules)"""

    def __post_init__(self) -> None:
        # Built once from ``owners``: every commit asks for the owners of its keys.
        by_key: dict[str, tuple[str, ...]] = {}
        for owner, key in self.owners.items():
            by_key[key] = (*by_key.get(key, ()), owner)
        object.__setattr__(self, "by_key", by_key)

    @property
    def keys(self) -> list[str]:
        return sorted(self.accounts)

    def key_of(self, owner: str) -> str | None:
        return self.owners.get(owner)

    def owners_of(self, keys: Iterable[str]) -> dict[str, str]:
        """owner name -> key, for the owners under ``keys``."""
        return {owner: key for key in set(keys) for owner in self.by_key.get(key, ())}

    def accounts_of(self, keys: Iterable[str]) -> list[str]:
        return [account for key in keys for account in self.accounts.get(key, ())]


def lease_keys(config: Config, rules: Sequence[Rule]) -> LeaseKeys:
    """The lease keys of ``config`` under ``rules`` (module docstring)."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        root = name
        while parent[root] != root:
            root = parent[root]
        while parent[name] != root:  # path compression
            parent[name], name = root, parent[name]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:  # the smaller name is the root: a component is named by its least key
            parent[max(ra, rb)] = min(ra, rb)

    credential: dict[str, str] = {}
    for account in config.accounts:
        key = credential_key(account.exchange, account.credentials, account.name)
        credential[account.name] = key
        parent.setdefault(key, key)
    grouped: dict[str, list[str]] = {}
    for rule in rules:
        if rule.group_by is None:
            continue
        selected = [
            a.name for a in config.accounts if rule.selector.matches_account(a.name, a.exchange)
        ]
        grouped[rule.name] = selected
        for other in selected[1:]:
            union(credential[selected[0]], credential[other])
    owners = {name: find(key) for name, key in credential.items()}
    accounts: dict[str, tuple[str, ...]] = {}
    for name, key in owners.items():
        accounts[key] = (*accounts.get(key, ()), name)
    for rule_name, selected in grouped.items():
        if selected:  # a grouped rule that selects no account has no groups to own
            owners[GROUP_SERIES + rule_name] = owners[selected[0]]
    return LeaseKeys(owners, accounts)
