"""The one interface every balance source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from balwatch.model import Balance, Metric
from balwatch.secret import Secret


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` per ``per_seconds`` per credential (the source's documented limit)."""

    requests: int
    per_seconds: float


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """What an adapter needs of one configured account."""

    name: str
    base_url: str
    timeout: float
    credentials: Mapping[str, Secret]
    options: BaseModel


class Adapter(ABC):
    """Polls one account of one source and returns normalized rows.

    ``fetch`` returns every row or raises a :class:`balwatch.errors.SourceError`: never a
    partial result, never another exception type for anything the source sends.
    """

    name: ClassVar[str]
    # None: the source has no public default and `base_url` is required in config.
    default_base_url: ClassVar[str | None]
    # Each allowed set of credential keys; an account must give exactly one of them. Empty:
    # the keys needed depend on the options, and `check_credentials` says which.
    credential_sets: ClassVar[tuple[frozenset[str], ...]]
    options_model: ClassVar[type[BaseModel]] = NoOptions
    # Metrics this source can ever report; the rest are always None (for `balwatch check`).
    reported_metrics: ClassVar[frozenset[Metric]]
    rate_limit: ClassVar[RateLimit | None] = None

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        """Every credential key an account of this source may give (for the JSON Schema)."""
        return frozenset().union(*cls.credential_sets)

    @classmethod
    def check_credentials(
        cls, credentials: Mapping[str, Secret], options: BaseModel
    ) -> list[tuple[tuple[str, ...], str]]:
        """Problems with credentials that depend on the validated ``options``, each as (where
        in the account, message); checked after the fixed `credential_sets`."""
        return []

    def __init__(self, account: AccountSpec, session: aiohttp.ClientSession) -> None:
        self.account = account
        self.session = session

    @abstractmethod
    async def fetch(self) -> list[Balance]: ...
