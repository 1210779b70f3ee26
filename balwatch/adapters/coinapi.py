"""CoinAPI EMS: ``GET /v1/balances``, one account spanning many venues."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from balwatch.adapters.base import Adapter
from balwatch.model import Balance, Metric


class CoinApiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange_id: str | None = None


class CoinApiAdapter(Adapter):
    name = "coinapi"
    default_base_url = None  # per deployment; self-hosted gateways run without auth
    credential_sets = (frozenset({"api_key"}), frozenset())
    options_model = CoinApiOptions
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "locked", "rate_usd"}
    )

    async def fetch(self) -> list[Balance]:
        raise NotImplementedError
