"""CoinAPI EMS: ``GET /v1/balances``, one account spanning many venues.

Wire format (docs.coinapi.io, EMS REST API, Get balances): a JSON array with one element per
venue::

    [{"exchange_id": "KRAKEN", "data": [{"asset_id_exchange": "XBT", "asset_id_coinapi": "BTC",
      "balance": 0.00134444, "available": 0.00134444, "locked": 0,
      "last_updated_by": "EXCHANGE", "rate_usd": 1355.12, "traded": 0.007}]}]

Amounts are JSON numbers, read as Decimal from their text (strings are accepted too).

Mapping: venue = ``exchange_id``; asset = ``asset_id_coinapi`` upper-cased (raw_asset =
``asset_id_exchange``, or ``asset_id_coinapi`` when the venue's own code is absent);
total = ``balance``; ``available``; ``locked``; ``rate_usd``. ``balance`` is required: a row
without a total says nothing to alert on and means the gateway answered something else. The
other amounts are None when absent or null (the docs show ``"rate_usd": null`` for an unknown
rate). Every other scalar field (``traded``, ``last_updated_by``, anything newer) is kept in
``extras`` as text. One (venue, asset) listed twice is a bad response: which row is true?

Errors. 490 is the EMS MESSAGE_REJECT ``{type, reject_reason, exchange_id, message,
rejected_message}``. Its Content-Type cannot be trusted (the docs themselves spell it
"appliction/json"), so the body is parsed as JSON whatever the header says. Reasons that blame
the request itself (INVALID_TYPE, METHOD_NOT_SUPPORTED, JSON_ERROR, ORDER_ID_NOT_FOUND) are
:class:`BadResponse`: sending the same request again cannot succeed, so it must surface as a
defect, not be retried as an outage. Everything else (EXCHANGE_UNREACHABLE,
EXCHANGE_RESPONSE_TIMEOUT, OTHER, a reason we do not know, a 490 body that is not a reject
or not JSON) is :class:`SourceUnavailable`, as the docs describe 490 as "Exchange is
unreachable". 401/403/429/5xx are not documented for EMS and get the generic mapping.

Auth: header ``X-CoinAPI-Key`` when the account has an ``api_key``; nothing for a self-hosted
gateway (empty credential set). The ``apikey=`` query form is never used: URLs end up in logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict

from balwatch.adapters.base import Adapter
from balwatch.adapters.http import Response, generic_status_error
from balwatch.adapters.wire import (
    distinct,
    expect_code,
    expect_list,
    expect_object,
    extras,
)
from balwatch.errors import BadResponse, SourceError, SourceUnavailable
from balwatch.model import Balance, Metric
from balwatch.money import optional_amount, required_amount

SOURCE: Final = "coinapi"
BALANCES_PATH: Final = "/v1/balances"
KEY_HEADER: Final = "X-CoinAPI-Key"
REJECT_STATUS: Final = 490
# Wire amount field -> normalized metric. The simulator renders its store through this too.
AMOUNT_FIELDS: Final[dict[str, Metric]] = {
    "balance": "total",
    "available": "available",
    "locked": "locked",
    "rate_usd": "rate_usd",
}
# Reject reasons that say our request was wrong, not that the venue is out of reach.
REQUEST_REJECTS: Final = frozenset(
    {"INVALID_TYPE", "METHOD_NOT_SUPPORTED", "JSON_ERROR", "ORDER_ID_NOT_FOUND"}
)
_ROW_FIELDS: Final = frozenset({"asset_id_exchange", "asset_id_coinapi", *AMOUNT_FIELDS})


class CoinApiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange_id: str | None = None


class CoinApiAdapter(Adapter):
    name = SOURCE
    default_base_url = None  # per deployment; self-hosted gateways run without auth
    credential_sets = (frozenset({"api_key"}), frozenset())
    options_model = CoinApiOptions
    reported_metrics: ClassVar[frozenset[Metric]] = frozenset(
        {"total", "available", "locked", "rate_usd"}
    )

    async def fetch(self) -> list[Balance]:
        key = self.account.credentials.get("api_key")
        options = self.account.options
        exchange_id = options.exchange_id if isinstance(options, CoinApiOptions) else None
        resp = await self.request(
            "GET",
            BALANCES_PATH,
            headers=auth_headers(None if key is None else key.reveal()),
            params=None if exchange_id is None else {"exchange_id": exchange_id},
        )
        if resp.status == REJECT_STATUS:
            raise reject_error(resp)
        error = generic_status_error(resp)
        if error is not None:
            raise error
        return parse_balances(resp.json(), self.account.name)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The request's auth headers: the key as given, or none for a gateway without auth."""
    return {} if api_key is None else {KEY_HEADER: api_key}


def reject_error(resp: Response) -> SourceError:
    """The typed error for a 490, read from its body whatever its Content-Type claims."""
    body = resp.json_or_none()
    if not isinstance(body, dict) or not isinstance(body.get("reject_reason"), str):
        return SourceUnavailable(resp.source, f"HTTP 490 without a reject: {resp.snippet()}")
    reason: str = body["reject_reason"]

    def quoted(value: object) -> str:
        return resp.quote(value) if isinstance(value, str) else "-"

    where = quoted(body.get("exchange_id"))
    text = f"HTTP 490 MESSAGE_REJECT {quoted(reason)} from {where}: {quoted(body.get('message'))}"
    if reason in REQUEST_REJECTS:
        return BadResponse(resp.source, text)
    return SourceUnavailable(resp.source, text)


def parse_balances(body: Any, account: str) -> list[Balance]:
    """Every row of a ``/v1/balances`` answer, or BadResponse naming asset and field."""
    return distinct(
        _rows(body, account), SOURCE, message="listed twice on {venue}", field="asset_id_coinapi"
    )


def _rows(body: Any, account: str) -> Iterator[Balance]:
    for index, raw_entry in enumerate(expect_list(body, SOURCE, "balances")):
        entry = expect_object(raw_entry, SOURCE, f"balances[{index}]")
        venue = expect_code(entry.get("exchange_id"), SOURCE, "exchange_id")
        for raw_row in expect_list(entry.get("data"), SOURCE, f"{venue} data"):
            yield _parse_row(raw_row, account, venue)


def _parse_row(raw: Any, account: str, venue: str) -> Balance:
    row = expect_object(raw, SOURCE, f"{venue} data entry")
    venue_code = row.get("asset_id_exchange")
    # Name the asset by the venue's code when CoinAPI's own is what is broken.
    known = venue_code if isinstance(venue_code, str) and venue_code.isprintable() else None
    coinapi_code = expect_code(row.get("asset_id_coinapi"), SOURCE, "asset_id_coinapi", asset=known)
    asset = coinapi_code.upper()
    raw_asset = (
        coinapi_code
        if venue_code is None
        else expect_code(venue_code, SOURCE, "asset_id_exchange", asset=asset)
    )
    # Positional, in Balance's field order: building a row this way costs half what
    # keywords do, which counts at 10,000 rows a round.
    return Balance(
        account,
        SOURCE,  # exchange
        venue,
        asset,
        raw_asset,
        required_amount(row, "balance", source=SOURCE, asset=asset),  # total
        optional_amount(row, "available", source=SOURCE, asset=asset),
        optional_amount(row, "locked", source=SOURCE, asset=asset),
        None,  # pending_deposit
        None,  # pending_withdrawal
        None,  # hold
        None,  # aml_locked
        None,  # referral
        optional_amount(row, "rate_usd", source=SOURCE, asset=asset),
        # Scalar fields with no column of their own (``traded``, ``last_updated_by``).
        extras(row, _ROW_FIELDS),
    )
