"""The HTTP endpoints, served on loopback and read with a real client."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from balwatch.alert import fingerprint
from balwatch.errors import AuthError
from balwatch.httpapi import HttpServer
from balwatch.latest import LatestBalances
from balwatch.metrics import Metrics
from balwatch.model import Balance
from balwatch.poll import PollResult
from balwatch.rules.engine import Engine
from balwatch.rules.expr import parse_expression
from balwatch.rules.rule import Rule

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
FAKE_KEY = "sk_live_FAKE0123456789abcdef"
LOW = Rule(name="low", when=parse_expression("available < 5"), severity="critical")
SLOW = Rule(name="slow", when=parse_expression("available < 50"), for_=60)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Status:
    """The daemon's side, as small as the endpoints need."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.reasons = ["first poll round not done", "sinks not connected"]
        self.engine = Engine([LOW, SLOW], clock=self.clock)
        self.latest = LatestBalances(clock=self.clock)
        self.metrics = Metrics("1.2.3", clock=self.clock)

    def poll(self, result: PollResult) -> None:
        self.latest.update(result)
        self.metrics.record_poll(result)
        if result.rows is not None:
            self.engine.observe(result.account, result.exchange, result.rows)

    def ready(self) -> tuple[bool, list[str]]:
        return not self.reasons, list(self.reasons)

    def alerts(self) -> list[dict[str, object]]:
        return [s.to_json() for s in [*self.engine.firing(), *self.engine.pending()]]

    def alert(self, fingerprint: str) -> dict[str, object] | None:
        found = self.engine.find(fingerprint)
        return None if found is None else found.to_json()

    def balances(self) -> dict[str, object]:
        return self.latest.document()


def good(available: str, account: str = "treasury") -> PollResult:
    row = Balance(account, "bitso", "bitso", "USDT", "usdt", available=Decimal(available))
    return PollResult(account, "bitso", [row], None, 0.1)


def auth_failure(account: str = "treasury") -> PollResult:
    error = AuthError("bitso", f"key {FAKE_KEY} rejected")
    return PollResult(account, "bitso", None, error, 0.1)


@pytest.fixture
def status() -> Status:
    return Status()


@pytest.fixture
async def base(status: Status) -> AsyncIterator[str]:
    async with HttpServer("127.0.0.1", 0, status, status.metrics.registry) as server:
        yield f"http://127.0.0.1:{server.port}"


async def get_json(http: aiohttp.ClientSession, url: str, expect: int = 200) -> object:
    async with http.get(url) as resp:
        assert resp.status == expect
        assert resp.content_type == "application/json"
        return await resp.json()


async def test_healthz(http: aiohttp.ClientSession, base: str) -> None:
    async with http.get(f"{base}/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_readyz_flips_with_the_daemon(
    http: aiohttp.ClientSession, base: str, status: Status
) -> None:
    assert await get_json(http, f"{base}/readyz", 503) == {
        "ready": False,
        "reasons": ["first poll round not done", "sinks not connected"],
    }
    status.reasons.clear()
    assert await get_json(http, f"{base}/readyz") == {"ready": True, "reasons": []}


async def test_metrics_exposition(http: aiohttp.ClientSession, base: str, status: Status) -> None:
    status.poll(good("10"))
    status.poll(auth_failure())
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    assert 'balwatch_polls_total{account="treasury",exchange="bitso"} 2.0' in text
    assert 'balwatch_poll_errors_total{account="treasury",exchange="bitso",kind="auth"} 1.0' in text
    assert 'balwatch_poll_duration_seconds_count{exchange="bitso"} 2.0' in text
    assert 'balwatch_build_info{version="1.2.3"} 1.0' in text


async def test_api_alerts_lists_firing_and_pending_states(
    http: aiohttp.ClientSession, base: str, status: Status
) -> None:
    assert await get_json(http, f"{base}/api/alerts") == []
    status.poll(good("1.50"))
    docs = await get_json(http, f"{base}/api/alerts")
    assert isinstance(docs, list)
    assert [(d["rule"], d["phase"]) for d in docs] == [("low", "firing"), ("slow", "pending")]
    low = docs[0]
    assert low["severity"] == "critical"
    assert (low["account"], low["venue"], low["asset"]) == ("treasury", "bitso", "USDT")
    assert low["values"] == {"available": "1.50"}
    assert low["since"] == T0


async def test_api_alert_answers_for_one_fingerprint_while_it_is_active(
    http: aiohttp.ClientSession, base: str, status: Status
) -> None:
    low = fingerprint("low", "treasury", "bitso", "USDT")
    slow = fingerprint("slow", "treasury", "bitso", "USDT")
    gone = await get_json(http, f"{base}/api/alerts/{low}", expect=404)
    assert gone == {"error": "no pending or firing alert has this fingerprint", "fingerprint": low}
    status.poll(good("1.50"))
    firing = await get_json(http, f"{base}/api/alerts/{low}")
    listed = await get_json(http, f"{base}/api/alerts")
    assert isinstance(listed, list) and firing == listed[0]
    assert isinstance(firing, dict) and (firing["phase"], firing["summary"]) == (
        "firing",
        "low treasury bitso/USDT: available=1.50",
    )
    pending = await get_json(http, f"{base}/api/alerts/{slow}")
    assert isinstance(pending, dict) and pending["phase"] == "pending"
    status.poll(good("9000"))
    await get_json(http, f"{base}/api/alerts/{low}", expect=404)
    await get_json(http, f"{base}/api/alerts/not-a-fingerprint", expect=404)


async def test_api_balances_keeps_the_last_good_rows_beside_a_failure(
    http: aiohttp.ClientSession, base: str, status: Status
) -> None:
    assert await get_json(http, f"{base}/api/balances") == {"accounts": []}
    status.poll(good("10.50"))
    status.clock.t += 30
    status.poll(auth_failure())
    status.poll(auth_failure("new"))  # never polled well: no rows yet

    doc = await get_json(http, f"{base}/api/balances")
    assert isinstance(doc, dict)
    new, treasury = doc["accounts"]
    assert new == {
        "account": "new",
        "exchange": "bitso",
        "last_poll": {"ok": False, "at": "2027-01-15T08:00:30Z", "error": "auth"},
        "rows_at": None,
        "rows": [],
    }
    assert treasury["last_poll"] == {"ok": False, "at": "2027-01-15T08:00:30Z", "error": "auth"}
    assert treasury["rows_at"] == "2027-01-15T08:00:00Z"
    [row] = treasury["rows"]
    assert (row["asset"], row["available"], row["total"]) == ("USDT", "10.50", None)

    status.poll(good("11"))
    doc = await get_json(http, f"{base}/api/balances")
    assert isinstance(doc, dict)
    treasury = doc["accounts"][1]
    assert treasury["last_poll"] == {"ok": True, "at": "2027-01-15T08:00:30Z", "error": None}
    assert treasury["rows"][0]["available"] == "11"


async def test_error_messages_are_served_nowhere(
    http: aiohttp.ClientSession, base: str, status: Status
) -> None:
    status.poll(good("1"))
    status.poll(auth_failure())
    for path in ("/healthz", "/readyz", "/metrics", "/api/alerts", "/api/balances"):
        async with http.get(f"{base}{path}") as resp:
            body = await resp.text()
        assert FAKE_KEY not in body, path
        assert "rejected" not in body, path
    doc = await get_json(http, f"{base}/api/balances")
    assert json.dumps(doc).count('"error": "auth"') == 1


async def test_port_zero_binds_a_free_port_released_on_exit(
    http: aiohttp.ClientSession, status: Status
) -> None:
    server = HttpServer("127.0.0.1", 0, status, status.metrics.registry)
    with pytest.raises(RuntimeError):
        _ = server.port
    async with server:
        port = server.port
        assert port != 0
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_taken_port_is_an_error(status: Status) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HttpServer("127.0.0.1", taken.getsockname()[1], status, status.metrics.registry)
        with pytest.raises(OSError):
            await server.__aenter__()
