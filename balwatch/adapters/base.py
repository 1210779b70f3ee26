"""The one interface every balance source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from balwatch.adapters.http import Response, send
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
    # Bytes an answer may have; a larger one fails the poll unread (`max_response_size`).
    max_response_size: int


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

    async def request(
        self,
        method: str,
        path: str,
        *,
        carrying: Iterable[Secret] = (),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Response:
        """One request to ``base_url + path`` within the account's timeout and size cap.

        The account's credentials, and ``carrying`` (what else the request holds that is
        secret: a login token, a signature), are masked wherever the answer is quoted.
        """
        account = self.account
        return await send(
            self.session,
            self.name,
            method,
            account.base_url.rstrip("/") + path,
            timeout=account.timeout,
            max_size=account.max_response_size,
            secrets=(*account.credentials.values(), *carrying),
            headers=headers,
            params=params,
            json_body=json_body,
        )
