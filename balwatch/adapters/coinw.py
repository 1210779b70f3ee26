"""CoinW spot: ``POST /api/v1/private?command=returnCompleteBalances`` with MD5 signing."""

from __future__ import annotations

from typing import ClassVar

from balwatch.adapters.base import Adapter, RateLimit
from balwatch.model import Balance, Metric


class CoinwAdapter(Adapter):
    name = "coinw"
    default_base_url = "https://api.coinw.com"
    credential_sets = (frozenset({"api_key", "api_secret"}),)
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset({"total", "available", "locked"})
    # Documented: 5 requests per 2 s per user for this endpoint.
    rate_limit = RateLimit(5, 2.0)

    async def fetch(self) -> list[Balance]:
        raise NotImplementedError
