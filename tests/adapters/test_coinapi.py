"""CoinAPI EMS: the adapter against the fake gateway over loopback, and its parser alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.adapters.coinapi import (
    KEY_HEADER,
    CoinApiAdapter,
    auth_headers,
    parse_balances,
)
from balwatch.errors import (
    AuthError,
    BadResponse,
    RateLimited,
    SourceError,
    SourceUnavailable,
)
from balwatch.model import METRICS, Balance
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.adapters.wellformed import (
    ACCOUNT,
    Answer,
    amounts,
    asset_codes,
    check_answer,
    maybe_spoiled,
)
from tests.conftest import StartSim, account_spec

KEY = "ems-key-5d0c1a77e2"
WRONG_KEY = "ems-key-wrong-93b2f1"

# The example answer of docs.coinapi.io, EMS REST API, "Get balances" (200).
DOCS_BALANCES = """[
  {
    "exchange_id": "KRAKEN",
    "data": [
      {
        "asset_id_exchange": "XBT",
        "asset_id_coinapi": "BTC",
        "balance": 0.00134444,
        "available": 0.00134444,
        "locked": 0,
        "last_updated_by": "EXCHANGE",
        "rate_usd": 1355.12,
        "traded": 0.007
      }
    ]
  }
]"""

# The example 490 of the same page, which the docs serve as "appliction/json".
DOCS_REJECT = json.dumps(
    {
        "type": "MESSAGE_REJECT",
        "reject_reason": "ORDER_ID_NOT_FOUND",
        "exchange_id": "BINANCE",
        "message": "Order with ID: BINANCE-7d8a-4888 not found",
        "rejected_message": '{"client_order_id":"BINANCE-7d8a-4888","exchange_id":"BINANCE",'
        '"type":"ORDER_CANCEL_SINGLE_REQUEST"}',
    }
)


def ems(*, api_key: str | None = KEY) -> SimAccount:
    """Two venues; values chosen to catch float round trips and sent-as-string amounts."""
    return SimAccount(
        name="ems",
        exchange="coinapi",
        api_key=api_key,
        balances={
            "KRAKEN": {
                "BTC": {
                    "asset_id_exchange": "XBT",
                    "total": "2.50000000000000000001",  # beyond float precision
                    "available": "2",
                    "locked": "0.50000000000000000001",
                    "rate_usd": "61250.10",
                    "traded": "0.007",
                    "hold": "5",  # a metric EMS has no field for: never sent
                },
            },
            "BINANCESPOT": {
                "USDT": {"total": "1.5E+5", "available": ".5", "last_updated_by": "INITIALIZATION"},
            },
        },
    )


async def poll(
    sim: Simulator,
    http: aiohttp.ClientSession,
    credentials: dict[str, str] | None = None,
    **spec: Any,
) -> list[Balance]:
    creds = {"api_key": KEY} if credentials is None else credentials
    return await CoinApiAdapter(account_spec("coinapi", sim.url, creds, **spec), http).fetch()


async def failing_poll(sim: Simulator, http: aiohttp.ClientSession, **kwargs: Any) -> SourceError:
    with pytest.raises(SourceError) as caught:
        await poll(sim, http, **kwargs)
    return caught.value


def queue(sim: Simulator, kind: FaultKind, **fault: Any) -> None:
    sim.state.accounts["ems"].faults.append(Fault(kind, **fault))


def test_auth_headers_carry_the_key_or_nothing() -> None:
    assert auth_headers("k-123") == {"X-CoinAPI-Key": "k-123"}
    assert auth_headers(None) == {}


async def test_good_poll_exact_decimals(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(ems())
    rows = await poll(sim, http)
    assert rows == [
        Balance(
            account="acct",
            exchange="coinapi",
            venue="KRAKEN",
            asset="BTC",
            raw_asset="XBT",
            total=Decimal("2.50000000000000000001"),
            available=Decimal("2"),
            locked=Decimal("0.50000000000000000001"),
            rate_usd=Decimal("61250.10"),
            extras={"last_updated_by": "EXCHANGE", "traded": "0.007"},
        ),
        Balance(
            account="acct",
            exchange="coinapi",
            venue="BINANCESPOT",
            asset="USDT",
            raw_asset="USDT",
            total=Decimal("150000"),  # a JSON number in exponent form
            available=Decimal("0.5"),  # ".5" is no JSON number: sent as a string
            locked=None,  # null on the wire
            rate_usd=None,
            extras={"last_updated_by": "INITIALIZATION"},
        ),
    ]
    assert str(rows[0].rate_usd) == "61250.10"  # digits as sent, no float round trip
    for metric in ("pending_deposit", "pending_withdrawal", "hold", "aml_locked", "referral"):
        assert rows[0].metric(metric) is None
    assert sim.state.accounts["ems"].requests == 1


async def test_wire_format_numbers_and_filter(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    url = f"{sim.url}/v1/balances"
    async with http.get(url, headers={KEY_HEADER: KEY}, params={"exchange_id": "KRAKEN"}) as r:
        text = await r.text()
    assert '"balance": 2.50000000000000000001' in text
    assert '"rate_usd": 61250.10' in text
    assert "hold" not in text
    assert [venue["exchange_id"] for venue in json.loads(text)] == ["KRAKEN"]
    # The real API also takes the key as a query parameter.
    async with http.get(url, params={"apikey": KEY}) as r:
        assert r.status == 200


def test_docs_sample_parses() -> None:
    body = json.loads(DOCS_BALANCES, parse_float=Decimal)
    assert parse_balances(body, "main") == [
        Balance(
            account="main",
            exchange="coinapi",
            venue="KRAKEN",
            asset="BTC",
            raw_asset="XBT",
            total=Decimal("0.00134444"),
            available=Decimal("0.00134444"),
            locked=Decimal(0),
            rate_usd=Decimal("1355.12"),
            extras={"last_updated_by": "EXCHANGE", "traded": "0.007"},
        )
    ]


def test_string_amounts_accepted_and_lower_case_codes_upper_cased() -> None:
    body = [{"exchange_id": "BITSTAMP", "data": [{"asset_id_coinapi": "eth", "balance": "1.25"}]}]
    [row] = parse_balances(body, "a")
    assert (row.asset, row.raw_asset, row.total, row.available) == (
        "ETH",
        "eth",
        Decimal("1.25"),
        None,
    )


async def test_exchange_id_option_filters_venues(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    rows = await poll(sim, http, options={"exchange_id": "BINANCESPOT"})
    assert [(r.venue, r.asset) for r in rows] == [("BINANCESPOT", "USDT")]
    assert await poll(sim, http, options={"exchange_id": "NOWHERE"}) == []


async def test_self_hosted_gateway_without_auth(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems(api_key=None))
    # Served only because no key was presented: a presented key must match one.
    rows = await poll(sim, http, credentials={})
    assert len(rows) == 2
    assert sim.state.accounts["ems"].requests == 1


async def test_wrong_or_missing_key_is_auth_error(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    assert isinstance(await failing_poll(sim, http, credentials={"api_key": WRONG_KEY}), AuthError)
    assert isinstance(await failing_poll(sim, http, credentials={}), AuthError)
    assert sim.state.accounts["ems"].requests == 0  # unknown keys are not counted
    queue(sim, FaultKind.AUTH)
    assert isinstance(await failing_poll(sim, http), AuthError)


async def test_reject_fault_is_unavailable_despite_text_plain(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    queue(sim, FaultKind.REJECT)
    async with http.get(f"{sim.url}/v1/balances", headers={KEY_HEADER: KEY}) as r:
        assert (r.status, r.content_type) == (490, "text/plain")
    queue(sim, FaultKind.REJECT)
    error = await failing_poll(sim, http, options={"exchange_id": "KRAKEN"})
    assert isinstance(error, SourceUnavailable)
    assert "EXCHANGE_UNREACHABLE" in str(error) and "KRAKEN" in str(error)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("EXCHANGE_UNREACHABLE", SourceUnavailable),
        ("EXCHANGE_RESPONSE_TIMEOUT", SourceUnavailable),
        ("OTHER", SourceUnavailable),
        ("SOME_NEW_REASON", SourceUnavailable),
        ("INVALID_TYPE", BadResponse),
        ("METHOD_NOT_SUPPORTED", BadResponse),
        ("JSON_ERROR", BadResponse),
        ("ORDER_ID_NOT_FOUND", BadResponse),
    ],
)
async def test_reject_reasons(
    start_sim: StartSim, http: aiohttp.ClientSession, reason: str, kind: type[SourceError]
) -> None:
    sim = await start_sim(ems())
    body = json.dumps({"type": "MESSAGE_REJECT", "reject_reason": reason, "message": "no"})
    queue(sim, FaultKind.RAW, status=490, body=body, content_type="text/plain")
    error = await failing_poll(sim, http)
    assert type(error) is kind
    assert reason in str(error)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (DOCS_REJECT, "appliction/json"),  # the docs' own misspelling
        ("<html>gateway says no</html>", "application/json"),
        ("", "text/plain"),
        ('{"type": "MESSAGE_REJECT"}', "application/json"),
    ],
)
async def test_490_bodies(
    start_sim: StartSim, http: aiohttp.ClientSession, body: str, content_type: str
) -> None:
    sim = await start_sim(ems())
    queue(sim, FaultKind.RAW, status=490, body=body, content_type=content_type)
    error = await failing_poll(sim, http)
    # Only the docs' sample names a request-shape reason; a 490 we cannot read is an outage.
    assert type(error) is (BadResponse if body == DOCS_REJECT else SourceUnavailable)


async def test_throttle_is_rate_limited_with_retry_after(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    queue(sim, FaultKind.THROTTLE, retry_after="7")
    queue(sim, FaultKind.THROTTLE)
    first, second = await failing_poll(sim, http), await failing_poll(sim, http)
    assert isinstance(first, RateLimited) and first.retry_after == 7.0
    assert isinstance(second, RateLimited) and second.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthError),
        (403, AuthError),
        (429, RateLimited),
        (500, SourceUnavailable),
        (503, SourceUnavailable),
        (404, BadResponse),
    ],
)
async def test_generic_statuses(
    start_sim: StartSim, http: aiohttp.ClientSession, status: int, kind: type[SourceError]
) -> None:
    sim = await start_sim(ems())
    queue(sim, FaultKind.STATUS, status=status)
    assert type(await failing_poll(sim, http)) is kind


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (FaultKind.TIMEOUT, SourceUnavailable),
        (FaultKind.RESET, SourceUnavailable),
        (FaultKind.HTML, SourceUnavailable),
        (FaultKind.MALFORMED_JSON, BadResponse),
        (FaultKind.TRUNCATED, BadResponse),
    ],
)
async def test_transport_and_body_faults(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: FaultKind, kind: type[SourceError]
) -> None:
    sim = await start_sim(ems())
    # aiohttp resends an idempotent request once after a dropped connection.
    queue(sim, fault, times=2 if fault is FaultKind.RESET else 1)
    assert type(await failing_poll(sim, http, timeout=0.3)) is kind


async def test_wrong_types_name_asset_and_field(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ems())
    queue(sim, FaultKind.WRONG_TYPES)
    error = await failing_poll(sim, http)
    assert isinstance(error, BadResponse)
    assert (error.asset, error.field) == ("BTC", "balance")


@pytest.mark.parametrize("bad", ["1,5", "", "NaN", "Infinity", "-1", "0x10", " 1"])
async def test_bad_amount_fails_the_whole_poll(
    start_sim: StartSim, http: aiohttp.ClientSession, bad: str
) -> None:
    account = ems()
    # USDT is good and KRAKEN BTC comes first: a bad later row must still fail everything.
    account.balances["BINANCESPOT"]["USDT"]["available"] = bad
    sim = await start_sim(account)
    error = await failing_poll(sim, http)
    assert isinstance(error, BadResponse)
    assert (error.asset, error.field) == ("USDT", "available")
    assert "USDT" in str(error) and "available" in str(error)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_json_number_tokens(
    start_sim: StartSim, http: aiohttp.ClientSession, token: str
) -> None:
    sim = await start_sim(ems())
    body = f'[{{"exchange_id": "K", "data": [{{"asset_id_coinapi": "BTC", "balance": {token}}}]}}]'
    queue(sim, FaultKind.RAW, status=200, body=body)
    assert isinstance(await failing_poll(sim, http), BadResponse)


async def test_missing_balance_names_field(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    account = ems()
    del account.balances["KRAKEN"]["BTC"]["total"]  # rendered as "balance": null
    sim = await start_sim(account)
    error = await failing_poll(sim, http)
    assert isinstance(error, BadResponse)
    assert (error.asset, error.field) == ("BTC", "balance")


@pytest.mark.parametrize(
    ("row", "asset", "field"),
    [
        ({"asset_id_exchange": "XBT", "balance": 1}, "XBT", "asset_id_coinapi"),
        ({"asset_id_coinapi": "", "balance": 1}, None, "asset_id_coinapi"),
        ({"asset_id_coinapi": 7, "balance": 1}, None, "asset_id_coinapi"),
        (
            {"asset_id_coinapi": "BTC", "asset_id_exchange": 1, "balance": 1},
            "BTC",
            "asset_id_exchange",
        ),
        ({"asset_id_coinapi": "BTC", "balance": True}, "BTC", "balance"),
        ({"asset_id_coinapi": "BTC", "balance": 1, "locked": {"v": 1}}, "BTC", "locked"),
        ({"asset_id_coinapi": "BTC", "balance": 1, "rate_usd": Decimal("-2")}, "BTC", "rate_usd"),
    ],
)
def test_bad_rows_name_asset_and_field(row: dict[str, Any], asset: str | None, field: str) -> None:
    good = {"asset_id_coinapi": "ETH", "balance": 1}
    with pytest.raises(BadResponse) as caught:
        parse_balances([{"exchange_id": "K", "data": [good, row]}], "a")
    assert (caught.value.asset, caught.value.field) == (asset, field)


@pytest.mark.parametrize(
    "body",
    [
        {"exchange_id": "K", "data": []},
        [{"data": []}],
        [{"exchange_id": "K"}],
        [{"exchange_id": "K", "data": {}}],
        ["K"],
    ],
)
def test_bad_shapes(body: Any) -> None:
    with pytest.raises(BadResponse):
        parse_balances(body, "a")


def test_duplicate_venue_asset_is_rejected_even_across_elements() -> None:
    body = [
        {"exchange_id": "K", "data": [{"asset_id_coinapi": "BTC", "balance": 1}]},
        {"exchange_id": "B", "data": [{"asset_id_coinapi": "BTC", "balance": 1}]},
        {"exchange_id": "K", "data": [{"asset_id_coinapi": "btc", "balance": 2}]},
    ]
    with pytest.raises(BadResponse) as caught:
        parse_balances(body, "a")
    assert (caught.value.asset, caught.value.field) == ("BTC", "asset_id_coinapi")
    assert len(parse_balances(body[:2], "a")) == 2  # same asset on two venues is fine


async def test_sim_rate_limit_override(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    now = [100.0]
    sim = await start_sim(ems(), rate_limits={"coinapi": (2, 60.0)}, clock=lambda: now[0])
    await poll(sim, http)
    await poll(sim, http)
    error = await failing_poll(sim, http)
    assert isinstance(error, RateLimited) and error.retry_after == 60.0
    assert sim.state.accounts["ems"].requests == 3  # counted before the limit check
    now[0] += 60.0
    assert len(await poll(sim, http)) == 2


async def test_no_rate_limit_by_default(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(ems())
    for _ in range(15):
        await poll(sim, http)
    assert sim.state.accounts["ems"].requests == 15


async def test_key_never_in_errors(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(ems())
    errors = [await failing_poll(sim, http, credentials={"api_key": WRONG_KEY})]
    for kind in (FaultKind.AUTH, FaultKind.REJECT, FaultKind.THROTTLE, FaultKind.HTML):
        queue(sim, kind)
        errors.append(await failing_poll(sim, http))
    for kind in (FaultKind.WRONG_TYPES, FaultKind.TRUNCATED, FaultKind.RESET, FaultKind.TIMEOUT):
        queue(sim, kind, times=2 if kind is FaultKind.RESET else 1)
        errors.append(await failing_poll(sim, http, timeout=0.3))
    queue(sim, FaultKind.STATUS, status=500)
    errors.append(await failing_poll(sim, http))
    # A server that echoes the key back, in an error page or a 490 reject's message.
    queue(sim, FaultKind.RAW, status=403, body=f'{{"message": "key {KEY} has no EMS access"}}')
    errors.append(await failing_poll(sim, http))
    reject = {"reject_reason": "OTHER", "exchange_id": "X", "message": f"bad key {KEY}"}
    queue(sim, FaultKind.RAW, status=490, body=json.dumps(reject))
    errors.append(await failing_poll(sim, http))
    for error in errors:
        for text in _texts(error):
            assert KEY not in text and WRONG_KEY not in text


def _texts(error: BaseException) -> Iterator[str]:
    current: BaseException | None = error
    while current is not None:
        yield str(current)
        yield repr(current)
        yield from (repr(arg) for arg in current.args)
        yield repr(vars(current))
        current = current.__cause__ or current.__context__


# --- properties -----------------------------------------------------------------------------

_FIELDS = [
    "exchange_id",
    "data",
    "asset_id_coinapi",
    "asset_id_exchange",
    "balance",
    "available",
    "locked",
    "rate_usd",
    "traded",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals()
    | st.text(max_size=10)
    | st.sampled_from(["BTC", "1.5", "NaN", "1e999", "-0"])
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=25,
)
_OPTIONAL = ("available", "locked", "rate_usd")


@st.composite
def coinapi_answers(draw: st.DrawFn) -> Answer:
    """A documented answer (venues with their rows, ``balance`` always, the other amounts
    maybe absent or null), or one with a bad amount."""
    venues = draw(st.lists(st.sampled_from(["KRAKEN", "BINANCE", "BITSTAMP"]), unique=True))
    body: list[dict[str, Any]] = []
    rows = []
    for venue in venues:
        data: list[dict[str, Any]] = []
        for code in draw(asset_codes()):
            row: dict[str, Any] = {"asset_id_coinapi": code}
            venue_code = draw(st.none() | st.from_regex(r"[A-Z]{1,5}", fullmatch=True))
            if venue_code is not None:
                row["asset_id_exchange"] = venue_code
            row["balance"], total = draw(amounts)
            values: dict[str, Decimal | None] = {}
            for name in _OPTIONAL:
                form = draw(st.sampled_from(["absent", "null", "amount", "amount"]))
                values[name] = None
                if form == "null":
                    row[name] = None
                elif form == "amount":
                    row[name], values[name] = draw(amounts)
            updated = draw(st.none() | st.sampled_from(["INITIALIZATION", "EXCHANGE"]))
            if updated is not None:
                row["last_updated_by"] = updated
            data.append(row)
            rows.append(
                Balance(
                    ACCOUNT,
                    "coinapi",
                    venue,
                    code.upper(),
                    code if venue_code is None else venue_code,
                    total=total,
                    available=values["available"],
                    locked=values["locked"],
                    rate_usd=values["rate_usd"],
                    extras={} if updated is None else {"last_updated_by": updated},
                )
            )
        body.append({"exchange_id": venue, "data": data})
    fields = [
        (row["asset_id_coinapi"].upper(), row, name)
        for entry in body
        for row in entry["data"]
        for name in ("balance", *_OPTIONAL)
        if name in row
    ]
    spoiled = maybe_spoiled(draw, fields)
    return body, spoiled or rows


def _check(body: Any) -> None:
    try:
        rows = parse_balances(body, "a")
    except BadResponse:
        return
    assert len(rows) == sum(len(entry["data"]) for entry in body)
    assert len({(r.venue, r.asset) for r in rows}) == len(rows)
    for row in rows:
        assert row.asset and row.venue and row.raw_asset
        assert row.total is not None
        for metric in METRICS:
            value = row.metric(metric)
            assert value is None or (
                isinstance(value, Decimal) and value.is_finite() and value >= 0
            )
        assert all(isinstance(v, str) for v in row.extras.values())


@settings(max_examples=200, deadline=None)
@given(_json)
def test_parse_arbitrary_json(body: Any) -> None:
    _check(body)


@settings(max_examples=200, deadline=None)
@given(coinapi_answers())
def test_well_formed_answers_parse_into_their_rows(answer: Answer) -> None:
    check_answer(parse_balances, "coinapi", answer)
