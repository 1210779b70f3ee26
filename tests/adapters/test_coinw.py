"""CoinW spot adapter against the real fake: MD5 signing, 200-bodied errors, exact amounts."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal, localcontext
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.adapters.coinw import CoinwAdapter, body_error, parse_balances, signature
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import Balance
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import AssetFields, Fault, FaultKind, SimAccount
from tests.adapters.wellformed import (
    ACCOUNT,
    Answer,
    amounts,
    asset_codes,
    check_answer,
    maybe_spoiled,
    notes,
)
from tests.conftest import StartSim, account_spec

KEY = "coinw-key-7f3a9c"
SECRET = "coinw-secret-b41d2e"
URL_PATH = "/api/v1/private"


def coinw_account(
    assets: dict[str, AssetFields] | None = None, *, name: str = "c1", api_key: str = KEY
) -> SimAccount:
    balances = {"coinw": assets if assets is not None else {"BTC": {"available": "1"}}}
    return SimAccount(
        name=name, exchange="coinw", api_key=api_key, api_secret=SECRET, balances=balances
    )


def adapter(
    sim: Simulator,
    http: aiohttp.ClientSession,
    *,
    key: str = KEY,
    secret: str = SECRET,
    timeout: float = 2.0,
) -> CoinwAdapter:
    spec = account_spec(
        "coinw", sim.url, {"api_key": key, "api_secret": secret}, name="spot", timeout=timeout
    )
    return CoinwAdapter(spec, http)


ECHOED_SIGN = signature({"api_key": KEY}, SECRET)
ECHOED_URL = f"/api/v1/private?command=returnCompleteBalances&api_key={KEY}&sign={ECHOED_SIGN}"


def raw_200(body: object, retry_after: str | None = None) -> Fault:
    text = body if isinstance(body, str) else json.dumps(body)
    return Fault(FaultKind.RAW, status=200, body=text, retry_after=retry_after)


async def failing_poll(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault, **kwargs: Any
) -> SourceError:
    account = coinw_account()
    account.faults.append(fault)
    sim = await start_sim(account)
    with pytest.raises(SourceError) as info:
        await adapter(sim, http, **kwargs).fetch()
    return info.value


# --- signing ---------------------------------------------------------------------------


def test_signature_matches_documented_check_vector() -> None:
    assert signature({"api_key": "my-api-key"}, "my-secret-key") == (
        "F7926BA6EC02413B9990D3EF7FADB3B6"
    )


def test_signature_sorts_params_and_skips_command_and_sign() -> None:
    params = {"sign": "X", "symbol": "BTC_USDT", "command": "c", "api_key": "k"}
    recipe = "api_key=k&symbol=BTC_USDT&secret_key=s"
    md5 = hashlib.md5(recipe.encode(), usedforsecurity=False)
    assert signature(params, "s") == md5.hexdigest().upper()


# --- good polls -------------------------------------------------------------------------


async def test_good_poll_maps_exact_amounts(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(
        coinw_account(
            {
                "USDT": {"available": "12000.00", "locked": "300.00"},
                "btc": {"available": "0.00120000", "locked": "0", "frozen": "0.5"},
                # Only a total and a lock: the fake derives available = 5 - 1.25.
                "ETH": {"total": "5", "locked": "1.25", "pending_deposit": "9"},
            }
        )
    )
    rows = await adapter(sim, http).fetch()

    def row(asset: str, raw: str, available: str, locked: str, total: str) -> Balance:
        return Balance(
            account="spot",
            exchange="coinw",
            venue="coinw",
            asset=asset,
            raw_asset=raw,
            total=Decimal(total),
            available=Decimal(available),
            locked=Decimal(locked),
            extras={"frozen": "0.5"} if raw == "btc" else {},
        )

    assert rows == [
        row("USDT", "USDT", "12000.00", "300.00", "12300.00"),
        row("BTC", "btc", "0.00120000", "0", "0.00120000"),
        row("ETH", "ETH", "3.75", "1.25", "5.00"),
    ]
    # Exact wire digits survive; metrics CoinW never reports are None, not 0.
    assert [str(r.total) for r in rows] == ["12300.00", "0.00120000", "5.00"]
    assert all(r.pending_deposit is None and r.hold is None and r.rate_usd is None for r in rows)
    assert sim.state.accounts["c1"].requests == 1


async def test_numbers_where_strings_are_documented(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    body = (
        '{"code": 200, "data": {"usdt": {"available": 0.10000000000000000555, '
        '"onOrders": 2, "frozen": 1.5}}, "msg": "SUCCESS", "success": true, "failed": false}'
    )
    account = coinw_account()
    account.faults.append(raw_200(body))
    sim = await start_sim(account)
    [row] = await adapter(sim, http).fetch()
    assert (row.asset, row.raw_asset) == ("USDT", "usdt")
    assert row.available == Decimal("0.10000000000000000555")
    assert row.locked == Decimal(2)
    assert row.total == Decimal("2.10000000000000000555")
    assert row.extras == {"frozen": "1.5"}


def test_documented_sample_payload() -> None:
    body = {
        "code": "200",
        "data": {"BTC": {"onOrders": "0", "available": "0.0012"}},
        "msg": "SUCCESS",
        "success": True,
        "failed": False,
    }
    assert parse_balances(body, "a") == [
        Balance(
            account="a",
            exchange="coinw",
            venue="coinw",
            asset="BTC",
            raw_asset="BTC",
            total=Decimal("0.0012"),
            available=Decimal("0.0012"),
            locked=Decimal("0"),
        )
    ]


def test_total_is_exact_beyond_default_decimal_precision() -> None:
    # 40 significant digits: Decimal's default 28-digit context would round this sum.
    fields = {"available": "12345678901234567890.1234567890", "onOrders": "1E-20"}
    [row] = parse_balances({"code": "200", "data": {"BTC": fields}}, "a")
    assert str(row.total) == "12345678901234567890.12345678900000000001"


def test_empty_account_has_no_rows() -> None:
    assert parse_balances({"code": "200", "data": {}}, "a") == []


# --- authentication ---------------------------------------------------------------------


async def test_unknown_key_is_auth_error_and_not_counted(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw_account())
    with pytest.raises(AuthError, match="10006"):
        await adapter(sim, http, key="someone-else").fetch()
    assert sim.state.accounts["c1"].requests == 0


async def test_wrong_secret_is_auth_error_and_counted(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw_account())
    with pytest.raises(AuthError, match="10006"):
        await adapter(sim, http, secret="not-the-secret").fetch()
    assert sim.state.accounts["c1"].requests == 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.AUTH),
        Fault(FaultKind.RAW, status=401, body='{"error": "unauthorized"}'),
        Fault(FaultKind.RAW, status=403, body="<html>forbidden</html>", content_type="text/html"),
        raw_200({"code": 1003, "msg": "no permission", "success": False, "failed": True}),
        raw_200({"code": "6000", "msg": "ip not allowed"}),
        raw_200({"code": "10007", "msg": "sign error"}),
    ],
    ids=["auth-fault", "401", "403", "1003-number", "6000", "10007"],
)
async def test_auth_failures(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault
) -> None:
    assert isinstance(await failing_poll(start_sim, http, fault), AuthError)


# --- throttling -------------------------------------------------------------------------


async def test_throttle_is_rate_limited_with_documented_window(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    error = await failing_poll(start_sim, http, Fault(FaultKind.THROTTLE))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 2.0
    assert "29001" in str(error) and "API access frequently" in str(error)


async def test_throttle_honours_a_retry_after_header(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    fault = raw_200({"code": 29001, "msg": "API access frequently"}, retry_after="7")
    error = await failing_poll(start_sim, http, fault)
    assert isinstance(error, RateLimited) and error.retry_after == 7.0


async def test_sim_enforces_rate_limit_per_key(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    now = [100.0]
    sim = await start_sim(
        coinw_account(),
        coinw_account(name="c2", api_key="other-key"),
        rate_limits={"coinw": (2, 10.0)},
        clock=lambda: now[0],
    )
    poller = adapter(sim, http)
    await poller.fetch()
    await poller.fetch()
    with pytest.raises(RateLimited):
        await poller.fetch()
    await adapter(sim, http, key="other-key").fetch()  # another key has its own budget
    now[0] += 10.0
    await poller.fetch()
    assert sim.state.accounts["c1"].requests == 4
    assert sim.state.accounts["c2"].requests == 1


async def test_sim_default_limit_is_five_per_two_seconds(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    now = [0.0]
    sim = await start_sim(coinw_account(), clock=lambda: now[0])
    poller = adapter(sim, http)
    for _ in range(5):
        await poller.fetch()
    with pytest.raises(RateLimited):
        await poller.fetch()
    now[0] = 2.0
    await poller.fetch()


# --- unavailable ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.REJECT),
        raw_200({"code": 500, "msg": "system busy", "success": False, "failed": True}),
        Fault(FaultKind.STATUS, status=503),
        Fault(FaultKind.STATUS, status=500),
        Fault(FaultKind.HTML),
        Fault(FaultKind.RESET),
    ],
    ids=["reject--200", "500-in-200", "503", "500", "html", "reset"],
)
async def test_unavailable(start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault) -> None:
    assert isinstance(await failing_poll(start_sim, http, fault), SourceUnavailable)


async def test_timeout_is_unavailable(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    error = await failing_poll(start_sim, http, Fault(FaultKind.TIMEOUT), timeout=0.3)
    assert isinstance(error, SourceUnavailable) and "timed out" in str(error)


# --- bad responses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.MALFORMED_JSON),
        Fault(FaultKind.TRUNCATED),
        raw_200('{"code": "200", "data": {"BTC": {"available": NaN, "onOrders": "0"}}}'),
        raw_200({"code": "200", "data": [{"BTC": {"available": "1", "onOrders": "0"}}]}),
        raw_200({"code": "200"}),
        raw_200({"code": "-103", "msg": "parameter error"}),
        raw_200({"code": -3, "msg": "bad parameter"}),
        raw_200({"code": "10003", "msg": "parameter missing"}),
    ],
    ids=["malformed", "truncated", "nan-literal", "data-list", "no-data", "-103", "-3", "10003"],
)
async def test_bad_response(start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault) -> None:
    assert isinstance(await failing_poll(start_sim, http, fault), BadResponse)


async def test_unknown_code_is_bad_response_naming_it(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    error = await failing_poll(start_sim, http, raw_200({"code": 77777, "msg": "what"}))
    assert isinstance(error, BadResponse)
    assert error.field == "code" and "77777" in str(error) and "what" in str(error)


async def test_wrong_types_name_asset_and_field(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    error = await failing_poll(start_sim, http, Fault(FaultKind.WRONG_TYPES))
    assert isinstance(error, BadResponse)
    assert (error.asset, error.field) == ("BTC", "available")


@pytest.mark.parametrize("wire", ["NaN", "Infinity", "1,5", "", "-1", "0x10", " 1"])
@pytest.mark.parametrize("field", ["available", "locked"])
async def test_bad_amount_names_asset_and_field_and_fails_whole_poll(
    start_sim: StartSim, http: aiohttp.ClientSession, wire: str, field: str
) -> None:
    good = {"available": "1", "locked": "0"}
    sim = await start_sim(coinw_account({"USDT": good, "XRP": {**good, field: wire}}))
    with pytest.raises(BadResponse) as info:
        await adapter(sim, http).fetch()  # the good USDT row must not come back alone
    wire_field = "onOrders" if field == "locked" else field
    assert (info.value.asset, info.value.field) == ("XRP", wire_field)
    assert "XRP" in str(info.value) and wire_field in str(info.value)


@pytest.mark.parametrize("missing", ["available", "onOrders"])
def test_missing_field_names_asset_and_field(missing: str) -> None:
    fields = {"available": "1", "onOrders": "2"}
    del fields[missing]
    with pytest.raises(BadResponse) as info:
        parse_balances({"code": "200", "data": {"eth": fields}}, "a")
    assert (info.value.asset, info.value.field) == ("ETH", missing)


_GOOD = {"available": "1", "onOrders": "0"}


@pytest.mark.parametrize(
    "body",
    [
        {"code": True, "data": {}},
        {"data": {}},
        {"code": "200", "data": {"btc": {"available": "1", "onOrders": "0"}, "BTC": _GOOD}},
        {"code": "200", "data": {"": {"available": "1", "onOrders": "0"}}},
        {"code": "200", "data": {"BTC": ["1", "0"]}},
        {"code": "200", "data": {"BTC": {"available": {"v": "1"}, "onOrders": "0"}}},
        {"code": "200", "data": {"BTC": {"available": "1E+40", "onOrders": "1E-200"}}},
    ],
    ids=["bool-code", "no-code", "duplicate", "empty-asset", "asset-list", "object", "inexact"],
)
def test_shape_errors(body: dict[str, Any]) -> None:
    with pytest.raises(BadResponse):
        parse_balances(body, "a")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("29001", RateLimited),
        (29001, RateLimited),
        ("1003", AuthError),
        (6000, AuthError),
        ("10006", AuthError),
        ("10007", AuthError),
        ("-103", BadResponse),
        (-3, BadResponse),
        ("10003", BadResponse),
        ("-200", SourceUnavailable),
        (500, SourceUnavailable),
    ],
)
def test_body_error_codes(code: object, kind: type[SourceError]) -> None:
    assert type(body_error({"code": code, "msg": "m"})) is kind


@pytest.mark.parametrize("body", [{"code": "200"}, {"code": 200}, {"code": "4"}, [], None, {}])
def test_body_error_leaves_success_and_unknown_codes_alone(body: object) -> None:
    assert body_error(body) is None


# --- the fake itself --------------------------------------------------------------------


async def test_sim_accepts_params_in_a_form_body(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(coinw_account({"BTC": {"available": "0.0012", "locked": "0"}}))
    form = {"command": "returnCompleteBalances", "api_key": KEY}
    form["sign"] = signature(form, SECRET)
    async with http.post(sim.url + URL_PATH, data=form) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {
        "code": "200",
        "data": {"BTC": {"available": "0.0012", "onOrders": "0"}},
        "msg": "SUCCESS",
        "success": True,
        "failed": False,
    }


async def test_sim_error_shapes(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(coinw_account())
    url = sim.url + URL_PATH
    async with http.post(url, params={"command": "returnCompleteBalances"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["code"] == "-103"
    bad_sign = {"command": "returnCompleteBalances", "api_key": KEY, "sign": "ü"}
    async with http.post(url, params=bad_sign) as resp:
        assert await resp.json() == {
            "code": "10006",
            "msg": "invalid api_key or sign",
            "success": False,
            "failed": True,
        }
    async with http.get(url) as resp:
        assert resp.status == 405


# --- properties -------------------------------------------------------------------------

_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


_AMOUNT_FIELDS = ("available", "onOrders")


@st.composite
def coinw_answers(draw: st.DrawFn) -> Answer:
    """A documented success answer (code 200 as text or number), or one with a bad amount."""
    data: dict[str, dict[str, Any]] = {}
    rows = []
    for code in draw(asset_codes()):
        (available, free), (on_orders, held) = draw(amounts), draw(amounts)
        entry: dict[str, Any] = {"available": available, "onOrders": on_orders}
        note = draw(st.none() | notes)
        if note is not None:
            entry["note"] = note
        data[code] = entry
        rows.append(
            Balance(
                ACCOUNT,
                "coinw",
                "coinw",
                code.upper(),
                code,
                total=free + held,
                available=free,
                locked=held,
                extras={} if note is None else {"note": note},
            )
        )
    fields = [(code.upper(), entry, f) for code, entry in data.items() for f in _AMOUNT_FIELDS]
    spoiled = maybe_spoiled(draw, fields)
    code = draw(st.sampled_from(["200", 200]))
    body = {"code": code, "data": data, "msg": "SUCCESS", "success": True, "failed": False}
    return body, spoiled or rows


def check_rows_or_bad_response(body: Any) -> None:
    try:
        rows = parse_balances(body, "acct")
    except BadResponse as exc:
        assert exc.source == "coinw"
        return
    assert isinstance(body, dict)
    assert len(rows) == len(body["data"])
    for row in rows:
        assert row.asset == row.raw_asset.upper() and row.venue == "coinw"
        assert row.available is not None and row.locked is not None
        with localcontext(prec=1000):  # wide enough that this check itself does not round
            assert row.total == row.available + row.locked
        assert row.available.is_finite() and row.available >= 0 and row.locked >= 0
        assert row.pending_deposit is None and row.rate_usd is None


@settings(max_examples=200, deadline=None)
@given(_json)
def test_parse_balances_any_json(body: Any) -> None:
    check_rows_or_bad_response(body)


@settings(max_examples=200, deadline=None)
@given(coinw_answers())
def test_well_formed_answers_parse_into_their_rows(answer: Answer) -> None:
    check_answer(parse_balances, "coinw", answer)


# --- secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.AUTH),
        Fault(FaultKind.THROTTLE),
        Fault(FaultKind.REJECT),
        Fault(FaultKind.STATUS, status=500),
        Fault(FaultKind.HTML),
        Fault(FaultKind.RESET),
        Fault(FaultKind.MALFORMED_JSON),
        Fault(FaultKind.TRUNCATED),
        Fault(FaultKind.WRONG_TYPES),
        raw_200({"code": 424242, "msg": "odd"}),
        None,  # wrong secret
    ],
)
async def test_credentials_never_in_errors(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault | None
) -> None:
    if fault is None:
        account = coinw_account()
        sim = await start_sim(account)
        with pytest.raises(SourceError) as info:
            await adapter(sim, http, secret="wrong-secret-9e8d").fetch()
        secret = "wrong-secret-9e8d"
        error = info.value
    else:
        error = await failing_poll(start_sim, http, fault)
        secret = SECRET
    sign = signature({"api_key": KEY}, secret)
    text = chain_text(error)
    for leaked in (secret, KEY, sign, sign.lower(), "api_key="):
        assert leaked not in text


@pytest.mark.parametrize(
    "fault",
    [
        raw_200({"code": "10006", "msg": f"api_key {KEY} invalid"}),
        raw_200({"code": 424242, "msg": f"unknown sign {ECHOED_SIGN} for {KEY}"}),
        raw_200(f"<p>{ECHOED_URL}</p>"),
        Fault(FaultKind.RAW, status=400, body=f"Bad request: {ECHOED_URL}"),
        Fault(FaultKind.RAW, status=503, body=f"<h1>503</h1><p>{ECHOED_URL}</p>"),
    ],
)
async def test_an_echoed_request_is_masked_in_errors(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault
) -> None:
    """Servers and proxies echo the request, key and sign included. The sign never changes
    for this command, so it is as good as the secret: not even a cut-off piece may show."""
    text = chain_text(await failing_poll(start_sim, http, fault))
    assert "***" in text
    for leaked in (SECRET, KEY, ECHOED_SIGN[:8], ECHOED_SIGN[:8].lower()):
        assert leaked not in text


def chain_text(error: BaseException) -> str:
    """str, repr and args of the error and every exception chained to it, shown or not."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)
