"""Balance answers in each source's own wire shape, for the simulator's RAW fault.

The simulator renders good answers itself; a test that wants a bad value in the right
place (a bare ``NaN`` where CoinAPI sends a number, a negative string where Bitso sends a
string) builds the body here. :class:`Raw` text goes into the JSON verbatim, so a body can
carry tokens ``json.dumps`` would never write (``NaN``, ``Infinity``, ``1e400``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

SOURCES: Final = ("coinapi", "bitso", "kunacore", "coinw")
# CoinAPI is multi-venue; the others name their one venue after themselves.
VENUE: Final = {"coinapi": "BINANCE", "bitso": "bitso", "kunacore": "kunacore", "coinw": "coinw"}

# What every simulated account holds, in the simulator's normalized field names. Far from
# every balance rule's threshold: any alert on these rows is a false one.
GOOD_BALANCES: Final = {
    "USDT": {"total": "10000", "available": "10000", "locked": "0"},
    "BTC": {"total": "2", "available": "2", "locked": "0"},
}

# The wire field of USDT that a bad amount goes into: each one feeds a balance rule, so a
# value taken as a balance would show up as an alert (or an engine error).
AMOUNT_FIELD: Final = {
    "coinapi": "balance",  # total: pct_change(total, 1m)
    "bitso": "available",  # available < 5000
    "kunacore": "lockBalance",  # aml_locked > 0
    "coinw": "available",  # available < 5000
}
# A field the adapter requires: without it the row says nothing.
REQUIRED_FIELD: Final = {
    "coinapi": "balance",
    "bitso": "total",
    "kunacore": "balance",
    "coinw": "onOrders",
}
# A field the adapter may miss: the metric is then None (no data), never zero. CoinW's
# two amounts are both required.
OPTIONAL_FIELD: Final = {
    "coinapi": "available",
    "bitso": "pending_withdrawal",
    "kunacore": "lockBalance",
}


@dataclass(frozen=True, slots=True)
class Raw:
    """JSON text written as is."""

    text: str


Row = dict[str, object]


def good_rows(source: str) -> dict[str, Row]:
    """The wire rows of :data:`GOOD_BALANCES` as ``source`` sends them, by asset."""
    rows: dict[str, Row] = {}
    for asset, fields in GOOD_BALANCES.items():
        total, available, locked = fields["total"], fields["available"], fields["locked"]
        match source:
            case "coinapi":  # amounts are JSON numbers
                rows[asset] = {
                    "asset_id_exchange": asset,
                    "asset_id_coinapi": asset,
                    "balance": Raw(total),
                    "available": Raw(available),
                    "locked": Raw(locked),
                    "rate_usd": None,
                    "last_updated_by": "EXCHANGE",
                }
            case "bitso":
                rows[asset] = {
                    "currency": asset.lower(),
                    "total": total,
                    "available": available,
                    "locked": locked,
                    "pending_deposit": "0",
                    "pending_withdrawal": "0",
                }
            case "kunacore":
                rows[asset] = {
                    "asset": asset,
                    "balance": available,
                    "holdBalance": "0",
                    "lockBalance": "0",
                    "referralBalance": "0",
                }
            case "coinw":
                rows[asset] = {"available": available, "onOrders": locked}
            case _:
                raise ValueError(source)
    return rows


def document(source: str, rows: dict[str, Row], extra: Row | None = None) -> str:
    """The 200 body with ``rows``; ``extra`` fields join the envelope (CoinAPI: the venue)."""
    more = extra or {}
    body: object
    match source:
        case "coinapi":
            body = [{"exchange_id": VENUE[source], "data": list(rows.values()), **more}]
        case "bitso":
            body = {"success": True, "payload": {"balances": list(rows.values())}, **more}
        case "kunacore":
            body = {"data": list(rows.values()), **more}
        case "coinw":
            body = {
                "code": "200",
                "data": rows,
                "msg": "SUCCESS",
                "success": True,
                "failed": False,
                **more,
            }
        case _:
            raise ValueError(source)
    return encode(body)


def encode(value: object) -> str:
    """``json.dumps``, with :class:`Raw` values written verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v) for v in value) + "]"
    return json.dumps(value)
