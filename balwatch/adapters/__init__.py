"""Balance source adapters, registered by the name used in config (`exchange:`).

The registry is the only place that knows which sources exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from balwatch.adapters.base import AccountSpec, Adapter, RateLimit
from balwatch.adapters.bitso import BitsoAdapter
from balwatch.adapters.ccxtsource import CcxtAdapter
from balwatch.adapters.coinapi import CoinApiAdapter
from balwatch.adapters.coinw import CoinwAdapter
from balwatch.adapters.kunacore import KunaCoreAdapter

REGISTRY: Final[dict[str, type[Adapter]]] = {
    cls.name: cls
    for cls in (CoinApiAdapter, BitsoAdapter, KunaCoreAdapter, CoinwAdapter, CcxtAdapter)
}
# What each source can report: a rule reading anything else there never has data.
REPORTED_METRICS: Final[Mapping[str, frozenset[str]]] = {
    name: frozenset(cls.reported_metrics) for name, cls in REGISTRY.items()
}

__all__ = ["REGISTRY", "REPORTED_METRICS", "AccountSpec", "Adapter", "RateLimit"]
