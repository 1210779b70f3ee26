"""``/metrics`` of a live daemon, scraped over HTTP: the balance gauges through polls, a
failure and reloads, and every series the Grafana dashboard in ``docs/grafana/`` queries.

A real :class:`~balwatch.daemon.Daemon` against the simulator, with its HTTP server on a
loopback port and a webhook receiver as its sink; waits are on the daemon's alerts and the
simulator's requests, never on the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from balwatch.simulator.scenario import load_scenario
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.brokers import free_port
from tests.daemons import AlertLog, CountingState, running
from tests.webhooks import WebhookReceiver

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "docs" / "grafana" / "balwatch.json"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def series(text: str) -> Series:
    """Every sample of an exposition, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Series, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def balances(samples: Series) -> set[tuple[str, str, str, str]]:
    """(account, venue, asset, metric) of every ``balwatch_balance`` series."""
    found = set()
    for (name, labels), _ in samples.items():
        if name == "balwatch_balance":
            got = dict(labels)
            found.add((got["account"], got["venue"], got["asset"], got["metric"]))
    return found


async def scrape(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.text()


# --- balance gauges --------------------------------------------------------------------


def treasury() -> SimAccount:
    return SimAccount(
        "treasury",
        "bitso",
        api_key="k-bitso",
        api_secret="s-bitso",
        balances={
            "bitso": {
                "USDT": {"total": "10000.5", "available": "9000.25", "locked": "1000.25"},
                "MXN": {"total": "90000", "available": "90000", "locked": "0"},
            }
        },
    )


def ems() -> SimAccount:
    btc = {"total": "3.5", "available": "3.1", "locked": "0.4", "rate_usd": "61250.10"}
    return SimAccount("ems", "coinapi", api_key="k-coinapi", balances={"BINANCESPOT": {"BTC": btc}})


def balance_config(
    path: Path, sim_url: str, port: int, *, with_ems: bool = True, balances: bool | None = None
) -> Path:
    lines = [
        f"state_dir: {path.parent / 'state'}",
        f"rules: ['{path.parent / 'rules.yaml'}']",
        f"http: {{listen: '127.0.0.1:{port}'}}",
        "log: {format: json, level: warning}",
        "defaults: {poll_interval: 300ms, timeout: 2s}",
        "accounts:",
        f"  - {{name: treasury, exchange: bitso, base_url: '{sim_url}', "
        "credentials: {api_key: k-bitso, api_secret: s-bitso}}",
    ]
    if with_ems:
        lines.append(
            f"  - {{name: ems, exchange: coinapi, base_url: '{sim_url}', "
            "credentials: {api_key: k-coinapi}}"
        )
    if balances is not None:
        lines.append(f"metrics: {{balances: {str(balances).lower()}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_balance_gauges_follow_polls_a_failure_and_reloads(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = CountingState([treasury(), ems()])
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    port = free_port()
    async with Simulator(state) as sim:
        config = balance_config(tmp_path / "balwatch.yaml", sim.url, port)

        async def polled(account: str, requests: int) -> Series:
            """Scraped once the simulator got ``requests`` more requests of ``account``: the
            daemon asks again only after it handled the last answer, so every answer but the
            newest one has reached the metrics by then."""
            await state.requests(account, state.accounts[account].requests + requests)
            return series(await scrape(http, port))

        async with running(config, AlertLog()) as daemon:
            got = await polled("treasury", 1)
            bitso = {"account": "treasury", "exchange": "bitso", "venue": "bitso"}
            assert value(got, "balwatch_balance", **bitso, asset="USDT", metric="total") == 10000.5
            assert value(got, "balwatch_balance", **bitso, asset="USDT", metric="locked") == 1000.25
            # Bitso reports no price and no pending_* in the simulator: no series, not zeros.
            assert ("treasury", "bitso", "USDT", "rate_usd") not in balances(got)
            usd_accounts = {dict(labels)["account"] for name, labels in got if "_usd" in name}
            assert usd_accounts == {"ems"}
            btc = {"account": "ems", "exchange": "coinapi", "venue": "BINANCESPOT", "asset": "BTC"}
            assert value(got, "balwatch_balance", **btc, metric="rate_usd") == 61250.10
            usd = value(got, "balwatch_balance_usd", **btc, metric="total")
            assert usd == float(Decimal("3.5") * Decimal("61250.10"))
            assert value(got, "balwatch_balance_usd", **btc, metric="rate_usd") is None

            # A failing source: the last good values stay, and the poll's age shows it.
            state.accounts["ems"].faults.append(Fault(FaultKind.STATUS, times=None, status=503))
            got = await polled("ems", 1)  # every good answer before the fault was handled
            last_good = value(got, "balwatch_last_successful_poll_timestamp_seconds", account="ems")
            assert last_good is not None
            got = await polled("ems", 1)  # and a failed one now
            fails = value(
                got,
                "balwatch_poll_errors_total",
                account="ems",
                exchange="coinapi",
                kind="unavailable",
            )
            assert fails is not None and fails >= 1
            assert value(got, "balwatch_balance", **btc, metric="total") == 3.5
            assert value(got, "balwatch_balance_usd", **btc, metric="total") == usd
            assert (
                value(got, "balwatch_last_successful_poll_timestamp_seconds", account="ems")
                == last_good
            )
            state.accounts["ems"].faults.clear()

            # A row gone from the answer loses its series; the others keep theirs.
            del state.accounts["treasury"].balances["bitso"]["MXN"]
            got = await polled("treasury", 2)  # one answer without MXN handled
            assert {row[2] for row in balances(got) if row[0] == "treasury"} == {"USDT"}

            # A reload that removes an account removes its series.
            balance_config(config, sim.url, port, with_ems=False)
            assert await daemon.reload() is True
            got = series(await scrape(http, port))
            assert {row[0] for row in balances(got)} == {"treasury"}
            assert not [name for name, _ in got if name == "balwatch_balance_usd"]

            # The switch: a reload turns the gauges off and on again.
            balance_config(config, sim.url, port, with_ems=False, balances=False)
            assert await daemon.reload() is True
            text = await scrape(http, port)
            assert "balwatch_balance" not in text
            assert "balwatch_polls_total" in text
            balance_config(config, sim.url, port, with_ems=False, balances=True)
            assert await daemon.reload() is True
            got = series(await scrape(http, port))
            assert ("treasury", "bitso", "USDT", "available") in balances(got)


async def test_balance_gauges_can_be_off_from_the_start(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = CountingState([treasury()])
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    port = free_port()
    async with Simulator(state) as sim:
        config = balance_config(
            tmp_path / "balwatch.yaml", sim.url, port, with_ems=False, balances=False
        )
        async with running(config, AlertLog()):
            await state.requests("treasury", state.accounts["treasury"].requests + 2)
            text = await scrape(http, port)
    assert "balwatch_balance" not in text
    assert 'balwatch_polls_total{account="treasury",exchange="bitso"}' in text


# --- the Grafana dashboard -------------------------------------------------------------


def panels(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for node in nodes:
        yield node
        yield from panels(node.get("panels", []))


# Grafana's own variables stand where PromQL wants a duration: any duration parses the same.
_RANGE_VARIABLE = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__\w+)\}")
# `label_values(<series selector>, <label>)`: Grafana's variable query, not PromQL itself.
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, by parsing it (not by pattern)."""
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            found.update([node.name] if node.name else names)

    promql_parser.walk(promql_parser.parse(_RANGE_VARIABLE.sub("5m", expr)), visit)
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in panels(doc["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text)
            assert match, f"variable {variable['name']}: not label_values(...): {text}"
            queries.append((f"variable {variable['name']}", match["selector"]))
    return queries


def test_the_metric_name_parser_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, exchange) (rate(a_bucket{exchange=~"$x"}'
        "[$__rate_interval]))) / on (account) group_left b + time() - c offset 5m "
        'or {__name__="d", job="sum"} or vector(0) > bool count_over_time(e[$__range])'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d", "e"}


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["schemaVersion"] >= 36 and doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(doc["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc["panels"]):
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        if panel["type"] != "row":
            # Every query goes to the Prometheus the user picks, none to a fixed one.
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


# low-usdt fires at the first poll, so alert and delivery counters get series. tick-probe can
# only fire from a tick (at a poll, age is 0), in the tick that also takes the outbox's counts
# before anything else runs: once it fired, those series exist too.
DASHBOARD_RULES = """\
rules:
  - name: low-usdt
    select: {assets: [USDT]}
    when: available < 1000000
    for: 0s
  - name: tick-probe
    when: age > 500ms
    for: 0s
"""


async def test_every_metric_the_dashboard_queries_is_in_a_live_daemons_metrics(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    queries = dashboard_queries()
    wanted = {name: where for where, expr in queries for name in metric_names(expr)}
    assert len(wanted) >= 14, wanted  # the parse found the dashboard's series

    scenario = Path(str(resources.files("balwatch.demo").joinpath("scenario.yaml")))
    demo_config = resources.files("balwatch.demo").joinpath("balwatch.yaml").read_text()
    state = CountingState([account.build() for account in load_scenario(scenario).accounts])
    (tmp_path / "rules.yaml").write_text(DASHBOARD_RULES)
    port = free_port()
    async with Simulator(state) as sim, WebhookReceiver() as hook:
        config = tmp_path / "balwatch.yaml"
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\n"
            f"rules: ['{tmp_path / 'rules.yaml'}']\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\n"
            "log: {format: json, level: warning}\n"
            "defaults: {poll_interval: 3s, timeout: 2s}\n"
            f"sinks:\n  - {{name: ops-hook, type: webhook, url: '{hook.url}'}}\n" + demo_config
        )
        alerts = AlertLog()
        async with running(config, alerts, environ={"SIM_URL": sim.url}):
            await alerts.event("low-usdt", "bitso-treasury", "firing")
            await hook.wait_for(1, timeout=20)  # a delivery went out
            await alerts.event("tick-probe", "bitso-treasury", "firing")
            samples = series(await scrape(http, port))

    present = {name for name, _ in samples}
    missing = {name: where for name, where in wanted.items() if name not in present}
    assert not missing, f"queried by the dashboard, absent from /metrics: {missing}"
