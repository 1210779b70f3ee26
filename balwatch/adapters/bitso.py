"""Bitso: ``GET /api/v3/balance/`` with HMAC-SHA256 request signing."""

from __future__ import annotations

from typing import ClassVar

from balwatch.adapters.base import Adapter, RateLimit
from balwatch.model import Balance, Metric


class BitsoAdapter(Adapter):
    name = "bitso"
    default_base_url = "https://api.bitso.com"
    credential_sets = (frozenset({"api_key", "api_secret"}),)
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "locked", "pending_deposit", "pending_withdrawal"}
    )
    # Documented: 300/min per account; over it locks the account out.
    rate_limit = RateLimit(300, 60.0)

    async def fetch(self) -> list[Balance]:
        raise NotImplementedError
