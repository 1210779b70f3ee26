"""The normalized balance row (docs/rules.md, "Rows and metrics")."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

Metric = Literal[
    "total",
    "available",
    "locked",
    "pending_deposit",
    "pending_withdrawal",
    "hold",
    "aml_locked",
    "referral",
    "rate_usd",
]

METRICS: Final[tuple[Metric, ...]] = (
    "total",
    "available",
    "locked",
    "pending_deposit",
    "pending_withdrawal",
    "hold",
    "aml_locked",
    "referral",
    "rate_usd",
)
# The metrics that are quantities of the asset: every one but the price.
AMOUNTS: Final[tuple[Metric, ...]] = tuple(m for m in METRICS if m != "rate_usd")


_NO_EXTRAS: Final[Mapping[str, str]] = MappingProxyType({})


class Balance(NamedTuple):
    """One (account, venue, asset) row. A metric the source does not report is ``None``.

    A NamedTuple rather than a frozen dataclass: just as immutable, and several times
    cheaper to build, which matters when 10,000 rows arrive per poll round.
    """

    account: str
    exchange: str
    venue: str
    asset: str
    raw_asset: str
    total: Decimal | None = None
    available: Decimal | None = None
    locked: Decimal | None = None
    pending_deposit: Decimal | None = None
    pending_withdrawal: Decimal | None = None
    hold: Decimal | None = None
    aml_locked: Decimal | None = None
    referral: Decimal | None = None
    rate_usd: Decimal | None = None
    # Source fields with no column of their own (CoinAPI `traded`, unknown Kuna amounts).
    extras: Mapping[str, str] = _NO_EXTRAS

    def metric(self, name: Metric) -> Decimal | None:
        value: Decimal | None = getattr(self, name)
        return value

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict: amounts as decimal strings, missing metrics as null."""
        out: dict[str, object] = {
            "account": self.account,
            "exchange": self.exchange,
            "venue": self.venue,
            "asset": self.asset,
            "raw_asset": self.raw_asset,
        }
        for name in METRICS:
            value = self.metric(name)
            out[name] = None if value is None else str(value)
        out["extras"] = dict(self.extras)
        return out
