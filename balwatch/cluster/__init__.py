"""Replicas on one PostgreSQL state store: which replica polls which accounts.

:mod:`~balwatch.cluster.keys` names the leases (accounts that must be polled by one replica
together), :mod:`~balwatch.cluster.rendezvous` says which live replica should hold each,
:mod:`~balwatch.cluster.ownership` decides what to acquire, renew and give up, and
:mod:`~balwatch.cluster.membership` runs that against the store every second.
"""
