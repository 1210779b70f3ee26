"""Prices: the book and its stamp, the live ccxt ticker sources against the simulator, the
config's checks, and the daemon valuing Bitso rows in USD."""

from __future__ import annotations

import asyncio
import json
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from balwatch.config import load_config
from balwatch.config.model import PricesConfig
from balwatch.errors import ConfigError
from balwatch.model import Balance
from balwatch.poll import PollResult, priced
from balwatch.prices.book import PriceBook, stamp
from balwatch.prices.feeds import PriceFeeds
from balwatch.simulator.state import SimAccount
from tests.conftest import StartSim
from tests.test_cli import run_cli
from tests.test_daemon import AlertLog, bitso, running, write_config


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def prices(**doc: Any) -> PricesConfig:
    return PricesConfig.model_validate(doc)


def row(asset: str, rate_usd: str | None = None, account: str = "acct") -> Balance:
    return Balance(
        account=account,
        exchange="bitso",
        venue="bitso",
        asset=asset,
        raw_asset=asset.lower(),
        total=Decimal("10"),
        rate_usd=None if rate_usd is None else Decimal(rate_usd),
    )


def test_static_prices_stamp_rows_and_a_sources_own_rate_wins() -> None:
    book = PriceBook(prices(static={"USDT": 1, "MXN": "0.055"}))
    rows = stamp([row("USDT"), row("MXN"), row("BTC"), row("USDT", "1.0001")], book.usd_prices())
    assert [r.rate_usd for r in rows] == [Decimal(1), Decimal("0.055"), None, Decimal("1.0001")]
    assert stamp([row("USD")], book.usd_prices())[0].rate_usd == Decimal(1)


def test_pairs_price_either_side_fewest_conversions_first() -> None:
    book = PriceBook(
        prices(
            static={"USDT": 1},
            sources=[
                {"type": "ccxt", "id": "bitso", "pairs": ["BTC/MXN", "USDT/MXN"]},
                {"type": "ccxt", "id": "binance", "pairs": ["BTC/USDT"]},
            ],
        )
    )
    book.record(0, {("BTC", "MXN"): Decimal("1100000"), ("USDT", "MXN"): Decimal("20")})
    book.record(1, {("BTC", "USDT"): Decimal("60000.5")})
    found = book.usd_prices()
    assert found["MXN"] == Decimal("0.05")  # 1 USDT / 20 MXN
    # BTC/USDT is one conversion from USD, BTC/MXN two: the direct one wins though listed later.
    assert found["BTC"] == Decimal("60000.5")


def test_a_quote_older_than_max_age_is_no_price() -> None:
    clock = Clock()
    book = PriceBook(
        prices(
            static={"USDT": 1},
            max_age="5m",
            sources=[{"type": "ccxt", "id": "bitso", "pairs": ["USDT/MXN"], "interval": "1m"}],
        ),
        clock=clock,
    )
    book.record(0, {("USDT", "MXN"): Decimal("18")})
    clock.now += 300
    assert "MXN" in book.usd_prices()
    clock.now += 1
    assert "MXN" not in book.usd_prices()
    assert stamp([row("MXN")], book.usd_prices())[0].rate_usd is None  # usd() is no data
    assert book.usd_prices()["USDT"] == Decimal(1)  # a static price never ages


def test_rows_that_carry_a_rate_price_the_asset_elsewhere() -> None:
    clock = Clock()
    book = PriceBook(prices(sources=[{"type": "rows"}], max_age="1m"), clock=clock)
    coinapi = PollResult("ems", "coinapi", [row("BTC", "61250.10", "ems")], None, 0.1)
    bitso_poll = PollResult("hot", "bitso", [row("BTC", account="hot")], None, 0.1)
    assert priced(coinapi, book).rows == coinapi.rows
    (btc,) = priced(bitso_poll, book).rows or []
    assert btc.rate_usd == Decimal("61250.10")
    clock.now += 61
    (btc,) = priced(bitso_poll, book).rows or []
    assert btc.rate_usd is None


def test_a_reload_keeps_the_quotes_of_unchanged_sources() -> None:
    source = {"type": "ccxt", "id": "bitso", "pairs": ["USDT/MXN"]}
    book = PriceBook(prices(static={"USDT": 1}, sources=[source]))
    book.record(0, {("USDT", "MXN"): Decimal("20")})
    book.configure(prices(static={"USDT": 1, "EUR": "1.08"}, sources=[source]))
    assert book.usd_prices()["MXN"] == Decimal("0.05")
    book.configure(prices(static={"USDT": 1}, sources=[{**source, "pairs": ["USDT/MXN"] * 2}]))
    assert "MXN" not in book.usd_prices()


async def test_live_sources_read_the_simulators_tickers(start_sim: StartSim, http: Any) -> None:
    sim = await start_sim(
        tickers={
            "binance": {"BTC/USDT": "61240.123456789012345", "ETH/USDT": "3012.4"},
            "bitso": {"USDT/MXN": "20"},
        }
    )
    book = PriceBook(
        prices(
            static={"USDT": 1},
            sources=[
                {"type": "ccxt", "id": "binance", "pairs": ["BTC/USDT"], "base_url": sim.url},
                {"type": "ccxt", "id": "bitso", "pairs": ["USDT/MXN"], "base_url": sim.url},
            ],
        )
    )
    await PriceFeeds(book, http, default_timeout=5).refresh()
    found = book.usd_prices()
    assert found["BTC"] == Decimal("61240.123456789012345")  # every digit: never a float
    assert found["MXN"] == Decimal("0.05")


async def test_a_failed_price_fetch_raises_nothing_and_leaves_no_price(
    start_sim: StartSim, http: Any
) -> None:
    sim = await start_sim(tickers={"bitso": {"BTC/MXN": "1100000"}})
    book = PriceBook(
        prices(
            static={"USDT": 1},
            sources=[
                # Bitso lists no USDT/MXN book: its ticker answers 0301, an error.
                {"type": "ccxt", "id": "bitso", "pairs": ["USDT/MXN"], "base_url": sim.url},
                {
                    "type": "ccxt",
                    "id": "binance",
                    "pairs": ["BTC/USDT"],
                    "base_url": "http://127.0.0.1:9",
                },
            ],
        )
    )
    await PriceFeeds(book, http, default_timeout=2).refresh()
    assert book.usd_prices() == {"USD": Decimal(1), "USDT": Decimal(1)}


CONFIG_ERRORS = {
    "negative static price": ("static: {MXN: -0.055}", 2, 17, "a price cannot be negative"),
    "non-numeric static price": ("static: {MXN: cheap}", 2, 17, "expected a price as a plain"),
    "zero static price": ("static: {MXN: 0}", 2, 17, "a price must be above zero"),
    "lower-case asset": ("static: {mxn: 1}", 2, 12, "expected an asset code in capitals"),
    "unknown source type": ("sources: [{type: coingecko}]", 2, 20, "expected price source type"),
    "unknown ccxt id": (
        "sources: [{type: ccxt, id: bitzo, pairs: [BTC/MXN]}]",
        2,
        30,
        "ccxt has no exchange 'bitzo'; did you mean bitso",
    ),
    "a pair nothing prices": (
        "sources: [{type: ccxt, id: bitso, pairs: [BTC/MXN]}]",
        2,
        45,
        "neither BTC nor MXN has a price",
    ),
    "an interval longer than max_age": (
        "max_age: 1m\n  sources: [{type: ccxt, id: bitso, pairs: [USD/MXN], interval: 5m}]",
        3,
        65,
        "interval 5m is longer than max_age 1m",
    ),
    "a bad interval": (
        "sources: [{type: ccxt, id: bitso, pairs: [USD/MXN], interval: soon}]",
        2,
        65,
        "expected a duration",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_price_mistakes_are_reported_where_they_are(tmp_path: Path, case: str) -> None:
    text, line, column, message = CONFIG_ERRORS[case]
    path = tmp_path / "balwatch.yaml"
    path.write_text(f"prices:\n  {text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (line, column), problem
    assert problem.message.startswith(message), problem.message


def test_a_yaml_float_price_keeps_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "balwatch.yaml"
    path.write_text("prices: {static: {MXN: 0.05500000000000000000001, BTC: 60000}}\n")
    config = load_config(path, {})
    assert config.prices is not None
    assert config.prices.static == {
        "MXN": Decimal("0.05500000000000000000001"),
        "BTC": Decimal(60000),
    }


USD_RULE = """\
rules:
  - name: low-usd-value
    select: {assets: [MXN, BTC]}
    when: usd(available) < 10000
"""


async def test_a_usd_rule_fires_on_a_bitso_row_and_a_stale_price_is_no_data(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """Bitso reports no rate: MXN is priced through a ccxt ticker (USDT/MXN on the Bitso
    simulator), the USD rule fires on it, and /api/balances shows the rate. When the price
    source fails past max_age, the row's rate_usd is null: polls go on, nothing new fires."""
    sim = await start_sim(
        SimAccount(
            "treasury",
            "bitso",
            api_key="k-bitso",
            api_secret="s-bitso",
            balances={"bitso": {"MXN": {"available": "150000"}, "BTC": {"available": "0.001"}}},
        ),
        tickers={"bitso": {"USDT/MXN": "20"}},
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(USD_RULE)
    config = write_config(
        tmp_path / "balwatch.yaml", state_dir=tmp_path / "state", rules=rules,
        accounts=bitso("treasury", sim.url),
    )  # fmt: skip
    config.write_text(
        config.read_text()
        + textwrap.dedent(
            f"""\
            prices:
              max_age: 2s
              static: {{USDT: 1}}
              sources:
                - {{type: ccxt, id: bitso, pairs: [USDT/MXN], interval: 200ms,
                   base_url: "{sim.url}"}}
            """
        )
    )
    alerts = AlertLog()
    async with running(config, alerts) as daemon:
        fired = await alerts.event("low-usd-value", "treasury", "firing", asset="MXN")
        assert fired.values["usd(available)"] == Decimal("7500.00")  # 150000 MXN / 20
        rows = _rows(daemon.balances())
        assert rows["MXN"]["rate_usd"] == "0.05" and rows["BTC"]["rate_usd"] is None
        polled = sim.state.accounts["treasury"].requests
        sim.state.tickers["bitso"] = {}  # the price source now fails (unknown book)
        while _rows(daemon.balances())["MXN"]["rate_usd"] is not None:
            await sim_requests(sim, polled)
            polled = sim.state.accounts["treasury"].requests
        assert all(a.asset != "BTC" for a in alerts.alerts)  # never priced: never fired
        assert not any(a.event == "resolved" for a in alerts.alerts)  # no data: no resolve
        assert daemon.balances()["accounts"][0]["last_poll"]["ok"] is True  # type: ignore[index]


def _rows(document: dict[str, object]) -> dict[str, dict[str, Any]]:
    (account,) = document["accounts"]  # type: ignore[misc]
    return {r["asset"]: r for r in account["rows"]}


async def sim_requests(sim: Any, seen: int, timeout: float = 10.0) -> None:
    """Wait until the simulated account has had a request more than ``seen`` (a new poll)."""
    async with asyncio.timeout(timeout):
        while sim.state.accounts["treasury"].requests <= seen:
            await asyncio.sleep(0.05)


async def test_balances_json_and_eval_show_rate_usd_for_every_priced_row(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(
        SimAccount(
            "treasury",
            "bitso",
            api_key="k-bitso",
            api_secret="s-bitso",
            balances={"bitso": {"MXN": {"available": "1"}, "USDT": {}, "TRX": {}}},
        ),
        tickers={"bitso": {"USDT/MXN": "20"}},
    )
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            rules: []
            accounts:
              - {{name: treasury, exchange: bitso, base_url: "{sim.url}",
                 credentials: {{api_key: k-bitso, api_secret: s-bitso}}}}
            prices:
              static: {{USDT: 1}}
              sources: [{{type: ccxt, id: bitso, pairs: [USDT/MXN], base_url: "{sim.url}"}}]
            """
        )
    )
    code, out, err = await run_cli("balances", "-c", str(config), "--json")
    assert code == 0, err
    rates = {r["asset"]: r["rate_usd"] for r in json.loads(out)["balances"]}
    assert rates == {"MXN": "0.05", "USDT": "1", "TRX": None}
    code, out, err = await run_cli("eval", "-c", str(config))
    assert code == 0, err
    assert out.rstrip().endswith("rate_usd: MXN 0.05, USDT 1")
