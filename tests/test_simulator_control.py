"""The simulator's scenario file and control API script balances, faults and delays."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import aiohttp
import pytest

from balwatch.errors import BadResponse, ConfigError
from balwatch.poll import make_adapter
from balwatch.simulator.scenario import load_scenario
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.conftest import StartSim, account_spec


def test_scenario_keeps_amounts_exact_and_faults_queued(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        """
accounts:
  - name: b1
    exchange: bitso
    api_key: k
    api_secret: s
    balances: {USDT: {available: 0.1000000000000000055511, locked: 7}}
    faults: [{kind: status, status: 503, times: 2}, {kind: timeout}]
    delay: 0.25
  - name: c1
    exchange: coinapi
    venues: {KRAKEN: {ETH: {total: "1.5"}}}
rate_limits: {bitso: [10, 1]}
"""
    )
    state = load_scenario(path).build()
    b1 = state.accounts["b1"]
    assert b1.balances == {
        "bitso": {"USDT": {"available": "0.1000000000000000055511", "locked": "7"}}
    }
    assert [(f.kind, f.times, f.status) for f in b1.faults] == [
        (FaultKind.STATUS, 2, 503),
        (FaultKind.TIMEOUT, 1, 500),
    ]
    assert b1.delay == 0.25
    assert state.accounts["c1"].balances == {"KRAKEN": {"ETH": {"total": "1.5"}}}
    assert state.rate_limits == {"bitso": (10, 1.0)}


def test_faults_are_consumed_in_order() -> None:
    account = SimAccount(name="a", exchange="bitso")
    account.faults.extend([Fault(FaultKind.STATUS, times=2), Fault(FaultKind.HTML, times=None)])
    kinds = [account.take_fault() for _ in range(4)]
    assert [k.kind if k else None for k in kinds] == [
        FaultKind.STATUS,
        FaultKind.STATUS,
        FaultKind.HTML,
        FaultKind.HTML,
    ]


def test_max_requests_in_sliding_window() -> None:
    account = SimAccount(name="a", exchange="coinw")
    account.request_times = [0.0, 0.5, 1.0, 1.9, 2.0, 2.1, 5.0]
    # 0.5 .. 2.1 spans less than 2 s and holds 5; 0.0 and 2.0 are a full window apart.
    assert account.max_requests_in(2.0) == 5
    assert account.max_requests_in(0.05) == 1


async def test_control_api_sets_balances_faults_and_delay(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(SimAccount(name="b1", exchange="bitso", api_key="k", api_secret="s"))
    base = f"{sim.url}/_sim/accounts/b1"

    async with http.put(
        f"{base}/balances", json={"balances": {"USDT": {"available": "5", "locked": "1"}}}
    ) as resp:
        assert resp.status == 200
    async with http.patch(
        f"{base}/balances", json={"balances": {"MXN": {"available": "10"}, "USDT": None}}
    ) as resp:
        assert (await resp.json())["balances"] == {"bitso": {"MXN": {"available": "10"}}}
    async with http.post(f"{base}/faults", json={"kind": "throttle", "times": 3}) as resp:
        assert (await resp.json())["faults"][0]["kind"] == "throttle"
    async with http.put(f"{base}/delay", json={"seconds": 0.5}) as resp:
        assert (await resp.json())["delay"] == 0.5
    async with http.delete(f"{base}/faults") as resp:
        assert (await resp.json())["faults"] == []

    account = sim.state.accounts["b1"]
    assert account.balances == {"bitso": {"MXN": {"available": "10"}}}
    assert account.delay == 0.5


async def test_control_api_rejects_unknown_account_and_bad_bodies(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(SimAccount(name="b1", exchange="bitso", api_key="k", api_secret="s"))
    async with http.post(f"{sim.url}/_sim/accounts/nope/faults", json={"kind": "html"}) as resp:
        assert resp.status == 404
    async with http.post(
        f"{sim.url}/_sim/accounts/b1/faults", json={"kind": "no-such-fault"}
    ) as resp:
        assert resp.status == 400
    async with http.put(f"{sim.url}/_sim/accounts/b1/delay", json={"seconds": -1}) as resp:
        assert resp.status == 400


async def test_control_api_expires_tokens_and_counts_requests(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(SimAccount(name="k1", exchange="kunacore", api_key="kk"))
    sim.state.tokens["t"] = "k1"
    sim.state.record(sim.state.accounts["k1"])
    async with http.post(f"{sim.url}/_sim/expire-tokens") as resp:
        assert resp.status == 200
    assert sim.state.tokens == {}
    async with http.get(f"{sim.url}/_sim/requests") as resp:
        assert await resp.json() == {"k1": 1}


async def test_control_api_keeps_every_digit_and_refuses_values_that_would_break_serving(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(SimAccount(name="b1", exchange="bitso", api_key="k", api_secret="s"))
    base = f"{sim.url}/_sim/accounts/b1"
    exact = '{"balances": {"ETH": {"available": 1234567890.123456789012345678}}}'
    async with http.put(f"{base}/balances", data=exact) as resp:
        assert resp.status == 200
    assert sim.state.accounts["b1"].balances == {
        "bitso": {"ETH": {"available": "1234567890.123456789012345678"}}
    }
    for path, body in (
        ("delay", {"seconds": "inf"}),  # would hang every later request
        ("faults", {"kind": "status", "status": 9999}),
        ("faults", {"kind": "throttle", "retry_after": "1\r\nX-Injected: 1"}),
    ):
        method = http.put if path == "delay" else http.post
        async with method(f"{base}/{path}", json=body) as resp:
            assert resp.status == 400, (path, body)


def test_scenario_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "accounts:\n"
        "  - name: x\n"
        "    exchange: bitso\n"
        "    bogus: 1\n"
        "  - name: y\n"
        "    exchange: bitso\n"
        "    balances: {BTC: {total: .inf}}\n"  # served as written: a bad amount on purpose
        "    delay: soon\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert [(p.line, p.column, p.message.split(";")[0]) for p in caught.value.problems] == [
        (4, 5, "unknown key 'bogus' in accounts.0 'x'"),
        (8, 12, "expected a number, got 'soon'"),
    ]
    path.write_text("accounts: [{name: y, exchange: bitso, balances: {BTC: {total: .inf}}}]\n")
    [account] = load_scenario(path).build().accounts.values()
    assert account.balances == {"bitso": {"BTC": {"total": ".inf"}}}


@pytest.mark.parametrize("exchange", ["bitso", "coinw", "kunacore", "coinapi"])
async def test_wrong_types_on_an_account_without_assets_is_still_a_bad_answer(
    start_sim: StartSim, http: aiohttp.ClientSession, exchange: str
) -> None:
    """Else the fault sends a valid empty answer and a test of it passes vacuously."""
    secret = None if exchange in ("kunacore", "coinapi") else "s"
    sim = await start_sim(
        SimAccount(
            name="empty",
            exchange=exchange,
            api_key="k",
            api_secret=secret,
            faults=deque([Fault(FaultKind.WRONG_TYPES)]),
        )
    )
    credentials = {"api_key": "k"} if secret is None else {"api_key": "k", "api_secret": "s"}
    spec = account_spec(exchange, sim.url, credentials, name="empty")
    with pytest.raises(BadResponse):
        await make_adapter(exchange, spec, http).fetch()


async def test_tickers_from_a_scenario_and_the_control_api_reach_the_wire(
    tmp_path: Path, start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("tickers: {binance: {BTC/USDT: 61240.123456789012345678}}\n")
    assert load_scenario(path).build().tickers == {
        "binance": {"BTC/USDT": "61240.123456789012345678"}
    }
    sim = await start_sim(tickers={"binance": {"BTC/USDT": "60000"}})
    put = await http.put(f"{sim.url}/_sim/tickers/bitso", json={"USDT/MXN": "18.5"})
    assert put.status == 200
    patch = await http.patch(
        f"{sim.url}/_sim/tickers/binance", data='{"ETH/USDT": 3012.400000000000000001}'
    )
    assert patch.status == 200
    assert (await patch.json())["binance"] == {
        "BTC/USDT": "60000",
        "ETH/USDT": "3012.400000000000000001",
    }
    bad = await http.put(f"{sim.url}/_sim/tickers/bitso", json={"USDTMXN": "1"})
    assert bad.status == 400
    async with http.get(f"{sim.url}/api/v3/ticker/price?symbol=ETHUSDT") as resp:
        assert await resp.text() == '{"symbol": "ETHUSDT", "price": "3012.400000000000000001"}'
    async with http.get(f"{sim.url}/api/v3/ticker/?book=usdt_mxn") as resp:
        assert (await resp.json())["payload"]["last"] == "18.5"
    async with http.get(f"{sim.url}/api/v3/ticker/price?symbol=XRPUSDT") as resp:
        assert resp.status == 400 and (await resp.json())["code"] == -1121
