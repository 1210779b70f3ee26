"""Bitso adapter against the fake Bitso over loopback, plus its pure parts."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balwatch.adapters.bitso import (
    BALANCE_PATH,
    BitsoAdapter,
    NonceSource,
    authorization,
    parse_balances,
    sign,
)
from balwatch.errors import AuthError, BadResponse, RateLimited, SourceError, SourceUnavailable
from balwatch.model import METRICS, Balance
from balwatch.secret import Secret
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount
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

KEY = "bitso-test-key"
SECRET = "bitso-test-secret-XYZ"


class ManualClock:
    """A clock that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sim_account(
    balances: dict[str, dict[str, str]] | None = None, faults: list[Fault] | None = None
) -> SimAccount:
    return SimAccount(
        name="bitso-main",
        exchange="bitso",
        api_key=KEY,
        api_secret=SECRET,
        balances={"bitso": balances if balances is not None else {"BTC": {"available": "1"}}},
        faults=deque(faults or []),
    )


def adapter(
    sim: Simulator,
    http: aiohttp.ClientSession,
    *,
    key: str = KEY,
    secret: str = SECRET,
    timeout: float = 2.0,
) -> BitsoAdapter:
    spec = account_spec(
        "bitso", sim.url, {"api_key": key, "api_secret": secret}, name="treasury", timeout=timeout
    )
    return BitsoAdapter(spec, http)


def by_asset(rows: list[Balance]) -> dict[str, Balance]:
    return {row.asset: row for row in rows}


def raw_body(body: object, status: int = 200) -> Fault:
    text = body if isinstance(body, str) else json.dumps(body)
    return Fault(FaultKind.RAW, status=status, body=text)


async def raw_get(
    sim: Simulator, http: aiohttp.ClientSession, header: str | None
) -> tuple[int, Any]:
    headers = {} if header is None else {"Authorization": header}
    async with http.get(sim.url + BALANCE_PATH, headers=headers) as resp:
        return resp.status, await resp.json()


def signed(nonce: str, *, key: str = KEY, secret: str = SECRET) -> str:
    return f"Bitso {key}:{nonce}:{sign(secret, nonce, 'GET', BALANCE_PATH)}"


# --- signing and nonces -------------------------------------------------------------------


def test_signature_matches_the_documented_check_vector() -> None:
    assert (
        sign("BITSO_SECRET", "1700000000000", "GET", "/api/v3/balance/")
        == "e5ac2ac6d5121a5c61c98ff6f3235f522bba87fad50411845f995a2d90832693"
    )


def test_authorization_header_carries_key_nonce_and_signature() -> None:
    header = authorization(
        Secret("K"), Secret("BITSO_SECRET"), 1700000000000, "GET", "/api/v3/balance/"
    )
    assert header == (
        "Bitso K:1700000000000:e5ac2ac6d5121a5c61c98ff6f3235f522bba87fad50411845f995a2d90832693"
    )


def test_nonces_increase_within_a_millisecond_and_when_the_clock_steps_back() -> None:
    clock = ManualClock(1700000000.000)
    nonces = NonceSource(clock)
    first = [nonces.next("k") for _ in range(3)]
    assert first == [1700000000000, 1700000000001, 1700000000002]
    clock.now = 1699999990.0  # NTP steps the clock back ten seconds
    assert nonces.next("k") == 1700000000003
    clock.now = 1700000005.0
    assert nonces.next("k") == 1700000005000
    assert nonces.next("other-key") == 1700000005000  # each key has its own sequence


async def test_adapters_sharing_a_key_share_the_nonce_sequence(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # The sim refuses any nonce not above the last accepted one, in arrival order; fresh
    # adapters per poll and two accounts with one key, all at once, must never trip it.
    sim = await start_sim(sim_account())
    adapters = [adapter(sim, http) for _ in range(4)]
    results = await asyncio.gather(*(a.fetch() for a in adapters for _ in range(5)))
    assert all(rows[0].available == Decimal("1") for rows in results)
    assert sim.state.accounts["bitso-main"].requests == 20


# --- good answers -------------------------------------------------------------------------


async def test_good_poll_gives_exact_decimals_and_none_for_unreported(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(
        sim_account(
            {
                "BTC": {
                    "total": "1.50000000",
                    "available": "1.20000000",
                    "locked": "0.30000000",
                    "pending_deposit": "0.00100000",
                    "pending_withdrawal": "0.2",
                    "staked": "0.5",
                },
                "MXN": {"available": "400000.50", "locked": "10000.00"},
            }
        )
    )
    rows = by_asset(await adapter(sim, http).fetch())
    btc, mxn = rows["BTC"], rows["MXN"]
    assert (btc.account, btc.exchange, btc.venue, btc.raw_asset) == (
        "treasury",
        "bitso",
        "bitso",
        "btc",
    )
    assert btc.total == Decimal("1.50000000") and str(btc.total) == "1.50000000"
    assert (btc.available, btc.locked) == (Decimal("1.2"), Decimal("0.3"))
    assert (btc.pending_deposit, btc.pending_withdrawal) == (Decimal("0.001"), Decimal("0.2"))
    assert btc.extras == {"staked": "0.5"}
    # The sim derives what Bitso would send: total = available + locked, pending "0".
    assert mxn.total == Decimal("410000.50")
    assert (mxn.pending_deposit, mxn.pending_withdrawal) == (Decimal(0), Decimal(0))
    for row in (btc, mxn):
        assert (row.hold, row.aml_locked, row.referral, row.rate_usd) == (None,) * 4
    assert sim.state.accounts["bitso-main"].requests == 1


async def test_amounts_as_json_numbers_and_omitted_pending_fields(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    text = (
        '{"success": true, "payload": {"balances": [{"currency": "usdt", "total": 12000.50,'
        ' "available": 12000, "locked": 0.5000}]}}'
    )
    sim = await start_sim(sim_account(faults=[raw_body(text)]))
    [row] = await adapter(sim, http).fetch()
    assert (row.asset, row.raw_asset) == ("USDT", "usdt")
    assert (row.total, row.available, row.locked) == (
        Decimal("12000.50"),
        Decimal(12000),
        Decimal("0.5000"),
    )
    assert str(row.locked) == "0.5000"
    assert row.pending_deposit is None and row.pending_withdrawal is None


def test_docs_sample_payload() -> None:
    # Shape of the sample on docs.bitso.com, Get Account Balance (its locked > total is kept).
    sample = json.loads(
        """{"success": true, "payload": {"balances": [
          {"currency": "mxn", "total": "100.1234", "locked": "25.1234", "available": "75.0000",
           "pending_deposit": "5.1234", "pending_withdrawal": "20.0000"},
          {"currency": "btc", "total": "4.12345678", "locked": "25.00000000",
           "available": "75.12345678", "pending_deposit": "0", "pending_withdrawal": "0"},
          {"currency": "eth", "total": "50.1234", "locked": "40.1234", "available": "10.0000",
           "pending_deposit": "0", "pending_withdrawal": "0"}]}}""",
        parse_float=Decimal,
    )
    rows = by_asset(parse_balances(sample, "acct"))
    assert list(rows) == ["MXN", "BTC", "ETH"]
    mxn = rows["MXN"]
    assert (mxn.total, mxn.available, mxn.locked) == (
        Decimal("100.1234"),
        Decimal("75.0000"),
        Decimal("25.1234"),
    )
    assert (mxn.pending_deposit, mxn.pending_withdrawal) == (Decimal("5.1234"), Decimal("20"))
    assert rows["BTC"].locked == Decimal("25") and rows["ETH"].raw_asset == "eth"
    assert all(r.extras == {} and r.rate_usd is None for r in rows.values())


# --- error shapes -------------------------------------------------------------------------


async def test_wrong_key_is_an_auth_error_with_bitso_code(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    with pytest.raises(AuthError, match="0201"):
        await adapter(sim, http, key="not-a-key").fetch()
    assert sim.state.accounts["bitso-main"].requests == 0  # unknown keys are not counted


async def test_wrong_secret_is_an_auth_error_with_bitso_code(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    with pytest.raises(AuthError, match="0215"):
        await adapter(sim, http, secret="wrong-secret").fetch()
    assert sim.state.accounts["bitso-main"].requests == 1


@pytest.mark.parametrize(
    ("fault", "error", "code", "retry_after"),
    [
        (Fault(FaultKind.THROTTLE), RateLimited, "0801", 60.0),
        (Fault(FaultKind.THROTTLE, retry_after="7"), RateLimited, "0801", 7.0),
        (Fault(FaultKind.AUTH), AuthError, "0201", None),
        (Fault(FaultKind.STATUS, status=400), BadResponse, "0303", None),
        (Fault(FaultKind.STATUS, status=503), SourceUnavailable, "0101", None),
        (Fault(FaultKind.STATUS, status=429), RateLimited, "0101", None),
        (Fault(FaultKind.REJECT), SourceUnavailable, "503", None),
        (Fault(FaultKind.HTML), SourceUnavailable, "502", None),
        (Fault(FaultKind.RESET), SourceUnavailable, "connection failed", None),
        # Codes may come as numbers; 420 without a body is still throttling.
        (raw_body({"success": False, "error": {"code": 802}}, 420), RateLimited, "0802", 60.0),
        (raw_body("<html>slow down</html>", 420), RateLimited, "420", 60.0),
        (raw_body({"success": False, "error": {"code": 215}}, 401), AuthError, "0215", None),
        # success: false on a 200 maps by the code's category.
        (raw_body({"success": False, "error": {"code": "0213"}}), AuthError, "0213", None),
        (raw_body({"success": False, "error": {"code": 801}}), RateLimited, "0801", 60.0),
        (raw_body({"success": False, "error": {"code": "0101"}}), SourceUnavailable, "0101", None),
        (raw_body({"success": False, "error": {"code": "0303"}}), BadResponse, "0303", None),
        (raw_body({"success": False}), BadResponse, "Bitso error", None),
    ],
)
async def test_error_answers_map_to_typed_errors(
    start_sim: StartSim,
    http: aiohttp.ClientSession,
    fault: Fault,
    error: type[SourceError],
    code: str,
    retry_after: float | None,
) -> None:
    sim = await start_sim(sim_account(faults=[fault]))
    with pytest.raises(error, match=code) as caught:
        await adapter(sim, http).fetch()
    assert type(caught.value) is error
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == retry_after
    # The fault was one-off: the next poll succeeds (the nonce sequence went on).
    assert (await adapter(sim, http).fetch())[0].asset == "BTC"


async def test_timeout_is_source_unavailable(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account(faults=[Fault(FaultKind.TIMEOUT)]))
    with pytest.raises(SourceUnavailable, match="timed out"):
        await adapter(sim, http, timeout=0.3).fetch()


async def test_refused_connection_is_source_unavailable(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    await sim.stop()
    with pytest.raises(SourceUnavailable, match="connection failed"):
        await adapter(sim, http).fetch()


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (Fault(FaultKind.MALFORMED_JSON), "not valid JSON"),
        (Fault(FaultKind.TRUNCATED), "not valid JSON"),
        (Fault(FaultKind.WRONG_TYPES), "boolean .*asset BTC, field total"),
        (
            raw_body(
                '{"success": true, "payload": {"balances": [{"currency": "btc", "total": NaN'
                ', "available": "1", "locked": "0"}]}}'
            ),
            "not valid JSON",
        ),
        (
            raw_body(
                {
                    "success": True,
                    "payload": {"balances": [{"currency": "btc", "total": "1", "locked": "0"}]},
                }
            ),
            "asset BTC, field available",
        ),
        (raw_body({"success": True, "payload": {"balances": {"btc": {}}}}), "expected a list"),
        (raw_body({"success": True, "payload": None}), "payload"),
        (
            raw_body(
                {
                    "success": True,
                    "payload": {
                        "balances": [{"currency": 7, "total": "1", "available": "1", "locked": "0"}]
                    },
                }
            ),
            "field currency",
        ),
        (raw_body([1, 2]), "expected an object"),
    ],
)
async def test_bad_bodies_are_bad_responses(
    start_sim: StartSim, http: aiohttp.ClientSession, fault: Fault, match: str
) -> None:
    sim = await start_sim(sim_account(faults=[fault]))
    with pytest.raises(BadResponse, match=match):
        await adapter(sim, http).fetch()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1,5", "", " 1", "-1", "0x10"])
@pytest.mark.parametrize("field", ["total", "available", "locked", "pending_withdrawal"])
async def test_bad_amounts_fail_the_whole_poll_naming_asset_and_field(
    start_sim: StartSim, http: aiohttp.ClientSession, value: str, field: str
) -> None:
    # ETH is fine; USDT's broken field must fail the poll, never give ETH alone.
    good = {"total": "3", "available": "2", "locked": "1"}
    sim = await start_sim(sim_account({"ETH": dict(good), "USDT": {**good, field: value}}))
    with pytest.raises(BadResponse) as caught:
        await adapter(sim, http).fetch()
    assert (caught.value.asset, caught.value.field) == ("USDT", field)


def test_currency_listed_twice_is_a_bad_response() -> None:
    entry = {"currency": "btc", "total": "1", "available": "1", "locked": "0"}
    body = {"success": True, "payload": {"balances": [entry, {**entry, "currency": "BTC"}]}}
    with pytest.raises(BadResponse, match="twice") as caught:
        parse_balances(body, "acct")
    assert caught.value.asset == "BTC"


# --- the fake's own checks ----------------------------------------------------------------


async def test_sim_checks_authentication_like_bitso(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    cases = [
        (None, "0208"),
        ("Bearer abc", "0201"),
        (f"Bitso {KEY}:123", "0201"),
        (signed("1000", key="unknown"), "0201"),
        (signed("12ab"), "0206"),
        (signed("1000", secret="other"), "0215"),
        (signed("1000", key=KEY.upper()), "0201"),  # keys are case-sensitive
        (f"Bitso {KEY}:1000:{sign(SECRET, '1000', 'GET', BALANCE_PATH).upper()}", "0215"),
        (signed("1000"), None),
        (signed("1000"), "0207"),  # replayed
        (signed("999"), "0207"),  # late
        (signed("1001"), None),
    ]
    for header, code in cases:
        status, body = await raw_get(sim, http, header)
        if code is None:
            assert (status, body["success"]) == (200, True), header
        else:
            assert status == 401, header
            assert body["success"] is False
            assert body["error"]["code"] == code, header
            assert isinstance(body["error"]["message"], str)


async def test_sim_signs_the_path_as_requested_query_included(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(sim_account())
    path = BALANCE_PATH + "?currency=btc"
    for nonce, signed_path, status in (("1", BALANCE_PATH, 401), ("2", path, 200)):
        header = f"Bitso {KEY}:{nonce}:{sign(SECRET, nonce, 'GET', signed_path)}"
        async with http.get(sim.url + path, headers={"Authorization": header}) as resp:
            assert resp.status == status


async def test_sim_rate_limit_answers_420_and_locks_the_key_out(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await start_sim(sim_account(), rate_limits={"bitso": (3, 60.0)}, clock=clock)
    client = adapter(sim, http)
    for _ in range(3):
        await client.fetch()
    with pytest.raises(RateLimited, match="0801") as caught:
        await client.fetch()
    assert caught.value.retry_after == 60.0
    status, body = await raw_get(sim, http, signed("5"))  # the lock-out comes before the nonce
    assert (status, body["error"]["code"]) == (420, "0801")
    clock.now += 59.9  # the lock-out lasts a full minute
    with pytest.raises(RateLimited):
        await client.fetch()
    clock.now += 0.1
    await client.fetch()
    # Every request with a known key counts, refused or not.
    assert sim.state.accounts["bitso-main"].requests == 7


async def test_sim_lockout_follows_an_overridden_window(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sim = await start_sim(sim_account(), clock=clock)
    sim.state.rate_limits["bitso"] = (1, 0.5)  # read per request: a running sim picks it up
    client = adapter(sim, http)
    await client.fetch()
    with pytest.raises(RateLimited):
        await client.fetch()
    clock.now += 0.5
    await client.fetch()


# --- properties ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_PENDING = ("pending_deposit", "pending_withdrawal")
_AMOUNT_NAMES = ("total", "available", "locked", *_PENDING)


@st.composite
def bitso_answers(draw: st.DrawFn) -> Answer:
    """A documented success answer (lower-case currencies, every amount; the pending ones
    maybe left out), or one with a bad amount."""
    entries: list[dict[str, Any]] = []
    rows = []
    for currency in draw(asset_codes(lower=True)):
        entry: dict[str, Any] = {"currency": currency}
        values: dict[str, Decimal | None] = {}
        for name in _AMOUNT_NAMES:
            if name in _PENDING and draw(st.booleans()):
                values[name] = None  # absent: Bitso always sends them today, but may not
                continue
            entry[name], values[name] = draw(amounts)
        note = draw(st.none() | notes)
        if note is not None:
            entry["name"] = note
        entries.append(entry)
        rows.append(
            Balance(
                ACCOUNT,
                "bitso",
                "bitso",
                currency.upper(),
                currency,
                total=values["total"],
                available=values["available"],
                locked=values["locked"],
                pending_deposit=values["pending_deposit"],
                pending_withdrawal=values["pending_withdrawal"],
                extras={} if note is None else {"name": note},
            )
        )
    fields = [(e["currency"].upper(), e, f) for e in entries for f in e if f in _AMOUNT_NAMES]
    spoiled = maybe_spoiled(draw, fields)
    return {"success": True, "payload": {"balances": entries}}, spoiled or rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.builds(lambda v: {"success": True, "payload": v}, json_values)))
def test_parse_balances_gives_rows_or_bad_response_for_any_json(body: Any) -> None:
    try:
        rows = parse_balances(body, "acct")
    except BadResponse as exc:
        assert exc.source == "bitso"
        return
    for row in rows:
        assert row.asset == row.raw_asset.upper() and row.venue == "bitso"
        for name in METRICS:
            value = row.metric(name)
            assert value is None or (
                isinstance(value, Decimal) and value.is_finite() and value >= 0
            )
        assert row.total is not None and row.available is not None and row.locked is not None
        assert all(isinstance(v, str) for v in row.extras.values())


@settings(max_examples=200, deadline=None)
@given(bitso_answers())
def test_well_formed_answers_parse_into_their_rows(answer: Answer) -> None:
    check_answer(parse_balances, "bitso", answer)


# --- secrets ------------------------------------------------------------------------------


async def test_credentials_never_appear_in_errors(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # A server that echoes credentials back in its error bodies must not get them quoted.
    echo = {"success": False, "error": {"code": "0201", "message": f"bad {KEY} / {SECRET}"}}
    faults = [
        Fault(FaultKind.THROTTLE),
        Fault(FaultKind.AUTH),
        Fault(FaultKind.HTML),
        Fault(FaultKind.RESET),
        Fault(FaultKind.MALFORMED_JSON),
        Fault(FaultKind.WRONG_TYPES),
        raw_body(echo, 401),
        raw_body(echo, 200),
        raw_body(f"{KEY} {SECRET}", 500),
    ]
    sim = await start_sim(sim_account(faults=faults))
    errors: list[SourceError] = []
    for _ in faults:
        with pytest.raises(SourceError) as caught:
            await adapter(sim, http).fetch()
        errors.append(caught.value)
    for key, secret in ((KEY, "wrong-secret"), ("wrong-key", SECRET)):
        with pytest.raises(AuthError) as caught:
            await adapter(sim, http, key=key, secret=secret).fetch()
        errors.append(caught.value)
    for error in errors:
        chain: list[BaseException] = [error]
        while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(cause)
        text = " ".join(f"{e} {e!r} {e.args!r} {vars(e)!r}" for e in chain)
        for credential in (KEY, SECRET, "wrong-secret", "wrong-key"):
            assert credential not in text, error
