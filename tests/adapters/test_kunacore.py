"""Kuna Core adapter against the fake service over loopback, plus its pure parts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.adapters.http import Response
from balwatch.adapters.kunacore import (
    KunaCoreAdapter,
    KunaCoreOptions,
    balance_body,
    login_body,
    parse_balances,
    token_from_login,
)
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import Balance
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.adapters.wellformed import (
    ACCOUNT,
    Answer,
    amount_texts,
    amounts,
    asset_codes,
    check_answer,
    maybe_spoiled,
)
from tests.conftest import StartSim, account_spec

KEY = "kuna-test-api-key-5f1c"
MERCHANT = "merchant-4411"
LOGIN = "treasury@example.com"
PASSWORD = "kuna-test-password-9d2e"

API_KEY = {"api_key": KEY}
JWT = {"merchant_id": MERCHANT, "login": LOGIN, "password": PASSWORD}
BOTH_MODES = pytest.mark.parametrize("creds", [API_KEY, JWT], ids=["api_key", "jwt"])

# The sample entry of Kuna Core's documentation, filled in.
DOCS_SAMPLE = """{"data": [{"balance": "1520.75", "asset": "USDT", "holdBalance": "20.25",
  "lockBalance": "5", "referralBalance": "0.5",
  "depositAddress": {"TRC20": {"address": "TXYZ1234", "memo": null}}}]}"""


def sim_account(**fields: dict[str, str]) -> SimAccount:
    return SimAccount(
        name="acct",
        exchange="kunacore",
        api_key=KEY,
        merchant_id=MERCHANT,
        login=LOGIN,
        password=PASSWORD,
        balances={"kunacore": dict(fields)},
    )


def adapter(
    sim: Simulator,
    http: aiohttp.ClientSession,
    creds: dict[str, str],
    *,
    timeout: float = 2.0,
    **options: object,
) -> KunaCoreAdapter:
    return KunaCoreAdapter(
        account_spec("kunacore", sim.url, creds, timeout=timeout, options=options), http
    )


def logins(sim: Simulator) -> int:
    """Tokens the fake issued since the last expiry: one per successful login."""
    return len(sim.state.tokens)


def fault(sim: Simulator, kind: FaultKind, **kwargs: Any) -> None:
    sim.state.accounts["acct"].faults.append(Fault(kind, **kwargs))


def decode(text: str) -> Any:
    return Response("kunacore", 200, {}, text).json()


# --- pure parts ---------------------------------------------------------------------------


def test_request_bodies() -> None:
    assert balance_body(KunaCoreOptions()) == {}
    assert balance_body(KunaCoreOptions(wallet_id="w-1", assets=["USDT", "BTC"])) == {
        "walletId": "w-1",
        "assets": ["USDT", "BTC"],
    }
    assert login_body("me", "pw") == {"login": "me", "password": "pw"}
    assert login_body("me", "pw", field="email") == {"email": "me", "password": "pw"}


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, '{"statusCode": 401, "message": "Unauthorized"}', AuthError),
        (400, '{"statusCode": 400, "message": "bad"}', AuthError),
        (200, '{"data": {}}', AuthError),
        (200, '{"data": {"accessToken": 7}}', AuthError),
        (200, "<html>", AuthError),
        (429, "{}", RateLimited),
        (503, "{}", SourceUnavailable),
    ],
)
def test_failed_login_mapping(status: int, body: str, error: type[SourceError]) -> None:
    with pytest.raises(error) as caught:
        token_from_login(Response("kunacore", status, {}, body))
    assert type(caught.value) is error


def test_login_token() -> None:
    body = '{"data": {"accessToken": "tok", "refreshToken": "r"}}'
    assert token_from_login(Response("kunacore", 201, {}, body)) == "tok"


def test_docs_sample() -> None:
    [row] = parse_balances(decode(DOCS_SAMPLE), "acct")
    assert row == Balance(
        account="acct",
        exchange="kunacore",
        venue="kunacore",
        asset="USDT",
        raw_asset="USDT",
        total=Decimal("1546.00"),
        available=Decimal("1520.75"),
        hold=Decimal("20.25"),
        aml_locked=Decimal("5"),
        referral=Decimal("0.5"),
    )


def test_numbers_and_unknown_fields() -> None:
    body = decode(
        '{"data": [{"asset": "btc", "balance": 1.5, "holdBalance": 0, "lockBalance": 2,'
        ' "referralBalance": null, "settlementBalance": 0.25, "note": "x", "flag": true,'
        ' "more": {"a": 1}, "depositAddress": "not an object"}]}'
    )
    [row] = parse_balances(body, "acct")
    assert (row.asset, row.raw_asset) == ("BTC", "btc")
    assert (row.available, row.hold, row.aml_locked) == (Decimal("1.5"), Decimal(0), Decimal(2))
    assert row.total == Decimal("3.5")
    assert row.referral is None
    assert row.extras == {"settlementBalance": "0.25", "note": "x"}


def test_missing_components_leave_total_unknown() -> None:
    [row] = parse_balances({"data": [{"asset": "TRX", "balance": "10", "lockBalance": "1"}]}, "a")
    assert (row.available, row.aml_locked) == (Decimal("10"), Decimal("1"))
    assert row.hold is None and row.total is None and row.referral is None


def test_total_is_exact_beyond_28_digits() -> None:
    entry = {"asset": "X", "balance": "12345678901234567890.123456789", "holdBalance": "1e-20"}
    [row] = parse_balances({"data": [{**entry, "lockBalance": "0"}]}, "a")
    assert row.total == Decimal("12345678901234567890.12345678900000000001")


@pytest.mark.parametrize(
    ("body", "asset", "field"),
    [
        ({"data": [{"asset": "usdt", "balance": "NaN"}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": "Infinity"}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": "1,5"}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": ""}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": "-1"}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": True}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "holdBalance": "1"}]}, "USDT", "balance"),
        ({"data": [{"asset": "USDT", "balance": "1", "lockBalance": {}}]}, "USDT", "lockBalance"),
        ({"data": [{"balance": "1"}]}, None, "asset"),
        ({"data": [{"asset": "", "balance": "1"}]}, None, "asset"),
        (
            {"data": [{"asset": "usdt", "balance": "1"}, {"asset": "USDT", "balance": "2"}]},
            "USDT",
            "asset",
        ),
    ],
)
def test_bad_values_name_asset_and_field(body: Any, asset: str | None, field: str) -> None:
    with pytest.raises(BadResponse) as caught:
        parse_balances(body, "acct")
    assert (caught.value.asset, caught.value.field) == (asset, field)


@pytest.mark.parametrize("body", [None, [], {"data": None}, {"data": {}}, {"data": ["x"]}])
def test_bad_shapes(body: Any) -> None:
    with pytest.raises(BadResponse):
        parse_balances(body, "acct")


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_bodies = st.one_of(_json, st.fixed_dictionaries({"data": _json}))
_PARTS = ("holdBalance", "lockBalance", "referralBalance")


@st.composite
def kunacore_answers(draw: st.DrawFn) -> Answer:
    """A documented answer (``balance`` always; hold, lock and referral maybe absent or null;
    a deposit address; maybe a field newer than the docs), or one with a bad amount."""
    data: list[dict[str, Any]] = []
    rows = []
    for code in draw(asset_codes()):
        entry: dict[str, Any] = {"asset": code}
        entry["balance"], available = draw(amounts)
        parts: dict[str, Decimal | None] = {}
        for name in _PARTS:
            form = draw(st.sampled_from(["absent", "null", "amount", "amount", "amount"]))
            parts[name] = None
            if form == "null":
                entry[name] = None
            elif form == "amount":
                entry[name], parts[name] = draw(amounts)
        entry["depositAddress"] = {code: {"address": "T9yD14Nj9j7xAB4dbGeiX9h8unkKHxuWwb"}}
        settlement = draw(st.none() | amount_texts)  # a field newer than the docs
        if settlement is not None:
            entry["settlementBalance"] = settlement
        data.append(entry)
        hold, locked = parts["holdBalance"], parts["lockBalance"]
        rows.append(
            Balance(
                ACCOUNT,
                "kunacore",
                "kunacore",
                code.upper(),
                code,
                total=None if hold is None or locked is None else available + hold + locked,
                available=available,
                hold=hold,
                aml_locked=locked,
                referral=parts["referralBalance"],
                extras={} if settlement is None else {"settlementBalance": settlement},
            )
        )
    fields = [
        (e["asset"].upper(), e, name) for e in data for name in ("balance", *_PARTS) if name in e
    ]
    spoiled = maybe_spoiled(draw, fields)
    return {"data": data}, spoiled or rows


@settings(max_examples=200, deadline=None)
@given(_bodies)
def test_parse_never_raises_anything_but_bad_response(body: Any) -> None:
    try:
        rows = parse_balances(body, "acct")
    except BadResponse:
        return
    assert len({row.asset for row in rows}) == len(rows)
    for row in rows:
        assert row.asset == row.asset.upper() and row.raw_asset
        assert row.available is not None
        for value in (row.available, row.hold, row.aml_locked, row.referral):
            assert value is None or (value.is_finite() and value >= 0)
        if row.hold is None or row.aml_locked is None:
            assert row.total is None
        else:
            assert row.total == row.available + row.hold + row.aml_locked
        assert all(isinstance(v, str) for v in row.extras.values())


@settings(max_examples=200, deadline=None)
@given(kunacore_answers())
def test_well_formed_answers_parse_into_their_rows(answer: Answer) -> None:
    check_answer(parse_balances, "kunacore", answer)


# --- against the fake service -------------------------------------------------------------


@BOTH_MODES
async def test_good_poll(start_sim: StartSim, http: aiohttp.ClientSession, creds: Any) -> None:
    sim = await start_sim(
        sim_account(
            USDT={"available": "88000.10", "hold": "12.5", "aml_locked": "0.40", "referral": "3"},
            trx={"available": "500000", "settlementBalance": "7.25"},
        )
    )
    usdt, trx = await adapter(sim, http, creds).fetch()
    assert usdt == Balance(
        account="acct",
        exchange="kunacore",
        venue="kunacore",
        asset="USDT",
        raw_asset="USDT",
        total=Decimal("88013.00"),
        available=Decimal("88000.10"),
        hold=Decimal("12.5"),
        aml_locked=Decimal("0.40"),
        referral=Decimal("3"),
    )
    assert (trx.asset, trx.raw_asset, trx.total) == ("TRX", "trx", Decimal("500000"))
    assert trx.extras == {"settlementBalance": "7.25"}
    for row in (usdt, trx):
        assert (row.locked, row.pending_deposit, row.pending_withdrawal, row.rate_usd) == (
            None,
            None,
            None,
            None,
        )


async def test_numbers_on_the_wire(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(sim_account())
    body = '{"data": [{"asset": "BTC", "balance": 0.00012, "holdBalance": 1E-8, "lockBalance": 0}]}'
    fault(sim, FaultKind.RAW, status=200, body=body)
    [row] = await adapter(sim, http, API_KEY).fetch()
    assert (row.available, row.hold, row.total) == (
        Decimal("0.00012"),
        Decimal("1E-8"),
        Decimal("0.00012001"),
    )
    assert row.referral is None


@BOTH_MODES
async def test_filters(start_sim: StartSim, http: aiohttp.ClientSession, creds: Any) -> None:
    account = sim_account(USDT={"available": "1"}, BTC={"available": "2"}, ETH={"available": "3"})
    account.balances["6f1e-wallet"] = {"USDT": {"available": "9"}, "TRX": {"available": "8"}}
    sim = await start_sim(account)
    rows = await adapter(sim, http, creds, assets=["usdt", "ETH"]).fetch()
    assert [(r.asset, r.available) for r in rows] == [("USDT", Decimal(1)), ("ETH", Decimal(3))]
    rows = await adapter(sim, http, creds, wallet_id="6f1e-wallet").fetch()
    assert [(r.asset, r.available) for r in rows] == [("USDT", Decimal(9)), ("TRX", Decimal(8))]
    rows = await adapter(sim, http, creds, wallet_id="6f1e-wallet", assets=["TRX"]).fetch()
    assert [r.asset for r in rows] == ["TRX"]
    with pytest.raises(BadResponse, match="404"):
        await adapter(sim, http, creds, wallet_id="no-such-wallet").fetch()


@pytest.mark.parametrize("field", ["login", "email"])
async def test_login_field_readings(
    start_sim: StartSim, http: aiohttp.ClientSession, field: str
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    [row] = await adapter(sim, http, JWT, login_field=field).fetch()
    assert row.available == 1
    assert logins(sim) == 1
    # And the fake, spoken to directly, takes either name with the documented header.
    async with http.post(
        sim.url + "/v2/auth/login",
        headers={"merchant_id": MERCHANT},
        json={field: LOGIN, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["data"]["accessToken"]
    assert sim.state.tokens[token] == "acct"


async def test_token_is_cached_and_renewed_after_expiry(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    kuna = adapter(sim, http, JWT)
    await kuna.fetch()
    await kuna.fetch()
    assert logins(sim) == 1
    assert sim.state.accounts["acct"].requests == 3  # one login, two balance calls

    sim.state.expire_tokens()
    [row] = await kuna.fetch()  # 401, one fresh login, retry
    assert row.available == 1
    assert logins(sim) == 1
    await kuna.fetch()
    assert logins(sim) == 1


async def test_persistent_401_fails_after_one_relogin(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    fault(sim, FaultKind.AUTH, times=None)
    kuna = adapter(sim, http, JWT)
    with pytest.raises(AuthError, match="HTTP 401"):
        await kuna.fetch()
    assert logins(sim) == 2  # the first login and exactly one re-login
    assert sim.state.accounts["acct"].requests == 4

    sim.state.accounts["acct"].faults.clear()
    await kuna.fetch()  # the refused token was dropped: a fresh login
    assert logins(sim) == 3


async def test_one_401_is_absorbed_by_jwt_but_not_by_api_key(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    fault(sim, FaultKind.AUTH)
    with pytest.raises(AuthError, match="Unauthorized"):
        await adapter(sim, http, API_KEY).fetch()
    fault(sim, FaultKind.AUTH)
    [row] = await adapter(sim, http, JWT).fetch()
    assert row.available == 1 and logins(sim) == 2


@pytest.mark.parametrize(
    "creds",
    [
        {"api_key": "wrong-key"},
        {**JWT, "password": "wrong-password"},
        {**JWT, "merchant_id": "other-merchant"},
        {**JWT, "login": "someone@example.com"},
    ],
    ids=["api_key", "password", "merchant", "login"],
)
async def test_wrong_credentials(
    start_sim: StartSim, http: aiohttp.ClientSession, creds: dict[str, str]
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    with pytest.raises(AuthError, match="401"):
        await adapter(sim, http, creds).fetch()
    assert logins(sim) == 0


async def test_login_without_the_login_field_is_refused(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    async with http.post(
        sim.url + "/v2/auth/login",
        headers={"merchant_id": MERCHANT},
        json={"username": LOGIN, "password": PASSWORD},
    ) as resp:
        assert resp.status == 400
    assert logins(sim) == 0


@BOTH_MODES
@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (Fault(FaultKind.THROTTLE, retry_after="7"), RateLimited),
        (Fault(FaultKind.STATUS, status=503), SourceUnavailable),
        (Fault(FaultKind.STATUS, status=500), SourceUnavailable),
        (Fault(FaultKind.REJECT), SourceUnavailable),
        (Fault(FaultKind.RESET), SourceUnavailable),
        (Fault(FaultKind.HTML), SourceUnavailable),
        (Fault(FaultKind.STATUS, status=403), AuthError),
        (Fault(FaultKind.MALFORMED_JSON), BadResponse),
        (Fault(FaultKind.TRUNCATED), BadResponse),
        (Fault(FaultKind.RAW, status=200, body="[]"), BadResponse),
    ],
    ids=lambda v: (
        (f"{v.kind}{v.status}" if v.kind is FaultKind.STATUS else str(v.kind))
        if isinstance(v, Fault)
        else v.__name__
    ),
)
async def test_error_shapes(
    start_sim: StartSim,
    http: aiohttp.ClientSession,
    creds: Any,
    spec: Fault,
    error: type[SourceError],
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}, BTC={"available": "2"}))
    sim.state.accounts["acct"].faults.append(spec)
    with pytest.raises(error) as caught:
        await adapter(sim, http, creds).fetch()
    assert type(caught.value) is error
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7.0


async def test_timeout(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    fault(sim, FaultKind.TIMEOUT)
    with pytest.raises(SourceUnavailable, match="timed out"):
        await adapter(sim, http, JWT, timeout=0.3).fetch()


async def test_wrong_types(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    fault(sim, FaultKind.WRONG_TYPES)
    with pytest.raises(BadResponse) as caught:
        await adapter(sim, http, API_KEY).fetch()
    assert (caught.value.asset, caught.value.field) == ("USDT", "balance")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "1,5", ""])
async def test_one_bad_amount_fails_the_whole_poll(
    start_sim: StartSim, http: aiohttp.ClientSession, bad: str
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}, BTC={"hold": bad}))
    with pytest.raises(BadResponse) as caught:
        await adapter(sim, http, API_KEY).fetch()
    assert (caught.value.asset, caught.value.field) == ("BTC", "holdBalance")


async def test_missing_balance_field(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = await start_sim(sim_account())
    fault(sim, FaultKind.RAW, status=200, body='{"data": [{"asset": "ETH", "holdBalance": "1"}]}')
    with pytest.raises(BadResponse) as caught:
        await adapter(sim, http, API_KEY).fetch()
    assert (caught.value.asset, caught.value.field) == ("ETH", "balance")


async def test_no_rate_limit_is_enforced(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    assert KunaCoreAdapter.rate_limit is None  # none documented
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    kuna = adapter(sim, http, API_KEY)
    for _ in range(40):
        await kuna.fetch()
    assert sim.state.accounts["acct"].requests == 40


# --- secrets ------------------------------------------------------------------------------


@pytest.fixture
async def traced() -> AsyncIterator[tuple[aiohttp.ClientSession, list[tuple[str, str]]]]:
    """A session recording, per request path, its headers and every body chunk sent."""
    seen: list[tuple[str, str]] = []

    async def on_start(_: Any, __: SimpleNamespace, params: Any) -> None:
        seen.append((params.url.path, repr(params.url) + repr(dict(params.headers))))

    async def on_chunk(_: Any, __: SimpleNamespace, params: Any) -> None:
        seen.append((params.url.path, params.chunk.decode()))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_chunk_sent.append(on_chunk)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, seen


def _texts(exc: BaseException) -> str:
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        parts += [str(current), repr(current), repr(current.args), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


async def test_password_travels_only_in_the_login_body(
    start_sim: StartSim, traced: tuple[aiohttp.ClientSession, list[tuple[str, str]]]
) -> None:
    session, seen = traced
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    kuna = adapter(sim, session, JWT)
    await kuna.fetch()
    sim.state.expire_tokens()
    await kuna.fetch()
    carrying = [(path, text) for path, text in seen if PASSWORD in text]
    assert [path for path, _ in carrying] == ["/v2/auth/login"] * 2
    assert all(json.loads(text)["password"] == PASSWORD for _, text in carrying)
    assert PASSWORD not in repr(vars(kuna)) and PASSWORD not in repr(kuna.account)


async def test_credentials_never_in_errors(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account(USDT={"available": "1"}))
    # Bodies echoing what each mode sent: masked before they are quoted.
    key_echo = json.dumps({"message": f"bad key {KEY}"})
    password_echo = json.dumps({"message": f"bad password {PASSWORD}"})
    failures: list[SourceError] = []
    cases: list[tuple[dict[str, str], Fault | None]] = [
        ({"api_key": KEY + "x"}, None),
        ({**JWT, "password": PASSWORD + "x"}, None),
        (API_KEY, Fault(FaultKind.RAW, status=400, body=key_echo)),
        (JWT, Fault(FaultKind.RAW, status=401, body=password_echo, times=2)),
        (JWT, Fault(FaultKind.STATUS, status=503)),
        (JWT, Fault(FaultKind.RESET)),
        (API_KEY, Fault(FaultKind.WRONG_TYPES)),
    ]
    for creds, spec in cases:
        if spec is not None:
            sim.state.accounts["acct"].faults.append(spec)
        with pytest.raises(SourceError) as caught:
            await adapter(sim, http, creds).fetch()
        failures.append(caught.value)
    texts = "\n".join(_texts(exc) for exc in failures)
    for secret in (KEY, PASSWORD, *sim.state.tokens):
        assert secret not in texts
    assert "***" in texts  # the echoed credentials were masked, not dropped silently
