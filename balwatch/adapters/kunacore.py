"""Kuna Core: ``POST /v2/balance`` with an api-key or a JWT from ``/v2/auth/login``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from balwatch.adapters.base import Adapter
from balwatch.model import Balance, Metric


class KunaCoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wallet_id: str | None = None
    assets: list[str] | None = None


class KunaCoreAdapter(Adapter):
    name = "kunacore"
    default_base_url = None  # not published
    credential_sets = (frozenset({"api_key"}), frozenset({"merchant_id", "login", "password"}))
    options_model = KunaCoreOptions
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "hold", "aml_locked", "referral"}
    )

    async def fetch(self) -> list[Balance]:
        raise NotImplementedError
