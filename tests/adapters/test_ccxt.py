"""The ccxt source against the simulator: ccxt's own ``bitso`` and ``binance`` code, pointed
at the fake servers with ``base_url``, over loopback."""

from __future__ import annotations

import json
import logging
from collections import deque
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from balwatch.adapters.ccxtsource import (
    CcxtAdapter,
    exchange_problem,
    parse_balance,
    rebase_urls,
)
from balwatch.errors import AuthError, BadResponse, ErrorKind, RateLimited, SourceUnavailable
from balwatch.poll import PollResult, poll_account
from balwatch.rules.engine import Engine
from balwatch.rules.load import load_rules
from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.conftest import StartSim, account_spec

KEY = "ccxt-binance-key-0001"
SECRET = "ccxt-binance-secret-0001"
# More digits than a float holds: any trip through float would change them.
LONG = "12345678901234.123456789012345678"


def binance_account(
    balances: dict[str, dict[str, str]] | None = None, *, key: str = KEY, name: str = "bn"
) -> SimAccount:
    return SimAccount(
        name=name,
        exchange="binance",
        api_key=key,
        api_secret=f"{SECRET}-{key}",
        balances={"binance": balances if balances is not None else {"BTC": {"available": "1"}}},
    )


def binance(
    sim: Simulator,
    http: aiohttp.ClientSession,
    *,
    key: str = KEY,
    secret: str | None = None,
    timeout: float = 5.0,
    **options: Any,
) -> CcxtAdapter:
    credentials = {"api_key": key, "api_secret": secret or f"{SECRET}-{key}"}
    spec = account_spec(
        "ccxt",
        sim.url,
        credentials,
        name="binance-spot",
        timeout=timeout,
        options={"id": "binance", **options},
    )
    return CcxtAdapter(spec, http)


async def test_bitso_through_ccxt_gives_exact_rows(start_sim: StartSim, http: Any) -> None:
    sim = await start_sim(
        SimAccount(
            name="bitso-main",
            exchange="bitso",
            api_key="bitso-key-0001",
            api_secret="bitso-secret-0001",
            balances={"bitso": {"BTC": {"available": LONG, "locked": "0.5"}, "MXN": {}}},
        )
    )
    spec = account_spec(
        "ccxt",
        sim.url,
        {"api_key": "bitso-key-0001", "api_secret": "bitso-secret-0001"},
        name="bitso-via-ccxt",
        options={"id": "bitso"},
    )
    result = await poll_account(CcxtAdapter(spec, http))
    assert result.error is None
    rows = {row.asset: row for row in result.rows or []}
    btc = rows["BTC"]
    assert (btc.exchange, btc.venue, btc.account) == ("ccxt", "bitso", "bitso-via-ccxt")
    assert btc.available == Decimal(LONG)
    assert btc.locked == Decimal("0.5")
    assert btc.total == Decimal("12345678901234.623456789012345678")  # the fake's exact sum
    # ccxt has no column for the rest: null, never 0.
    assert btc.pending_deposit is None and btc.rate_usd is None
    assert rows["MXN"].total == Decimal(0)


async def test_binance_rows_are_the_wire_text(start_sim: StartSim, http: Any) -> None:
    sim = await start_sim(
        binance_account({"BTC": {"available": LONG, "locked": "0.00000001"}, "USDT": {}})
    )
    result = await poll_account(binance(sim, http))
    rows = {row.asset: row for row in result.rows or []}
    assert rows["BTC"].available == Decimal(LONG)
    assert rows["BTC"].locked == Decimal("0.00000001")
    assert rows["BTC"].total == Decimal("12345678901234.123456799012345678")  # ccxt's exact sum
    assert rows["USDT"].total == Decimal(0)
    assert all(row.venue == "binance" for row in rows.values())


async def test_json_numbers_are_read_from_their_text(start_sim: StartSim, http: Any) -> None:
    """An exchange that sends amounts as JSON numbers: ccxt gets their text, never a float."""
    body = (
        '{"accountType": "SPOT", "balances": [{"asset": "ETH", '
        '"free": 0.10000000000000000001, "locked": 12345678901234567.5}]}'
    )
    account = binance_account()
    account.faults.append(Fault(FaultKind.RAW, status=200, body=body))
    sim = await start_sim(account)
    result = await poll_account(binance(sim, http))
    (eth,) = result.rows or []
    assert eth.available == Decimal("0.10000000000000000001")
    assert eth.locked == Decimal("12345678901234567.5")


# (fault, expected kind, retry_after the error carries)
FAULTS = [
    pytest.param(Fault(FaultKind.AUTH), AuthError, None, id="auth-2015"),
    pytest.param(Fault(FaultKind.THROTTLE), RateLimited, 60.0, id="throttle-429"),
    pytest.param(
        Fault(FaultKind.STATUS, status=418, retry_after="120"), RateLimited, 120.0, id="banned-418"
    ),
    pytest.param(Fault(FaultKind.STATUS, status=503), SourceUnavailable, None, id="503"),
    pytest.param(Fault(FaultKind.HTML), SourceUnavailable, None, id="html-502"),
    pytest.param(Fault(FaultKind.RESET), SourceUnavailable, None, id="reset"),
    pytest.param(Fault(FaultKind.TIMEOUT), SourceUnavailable, None, id="timeout"),
    pytest.param(Fault(FaultKind.MALFORMED_JSON), BadResponse, None, id="malformed-json"),
    pytest.param(Fault(FaultKind.TRUNCATED), BadResponse, None, id="truncated"),
    pytest.param(Fault(FaultKind.WRONG_TYPES), BadResponse, None, id="wrong-types"),
    pytest.param(
        Fault(FaultKind.RAW, status=200, body='{"balances": [{"asset": "BTC", "free": "-1"}]}'),
        BadResponse,
        None,
        id="negative",
    ),
    pytest.param(
        Fault(FaultKind.RAW, status=200, body='{"balances": [{"asset": "BTC", "free": NaN}]}'),
        BadResponse,
        None,
        id="nan",
    ),
    pytest.param(
        Fault(FaultKind.RAW, status=200, body="", content_type="text/plain"),
        BadResponse,
        None,
        id="empty-body",
    ),
]

RULES = """
rules:
  - name: any-balance
    when: available >= 0
    severity: critical
"""


@pytest.mark.parametrize(("fault", "kind", "retry_after"), FAULTS)
async def test_a_bad_answer_is_a_typed_error_and_no_balance_alert(
    fault: Fault,
    kind: type[Exception],
    retry_after: float | None,
    start_sim: StartSim,
    http: Any,
    tmp_path: Any,
) -> None:
    account = binance_account()
    account.faults = deque([fault])
    sim = await start_sim(account)
    result = await poll_account(binance(sim, http, timeout=0.5))
    assert isinstance(result.error, kind), result.error
    assert result.rows is None
    if retry_after is not None:
        assert isinstance(result.error, RateLimited)
        assert result.error.retry_after == pytest.approx(retry_after, abs=1)
    # The engine sees a failed poll: a rule true for every row never fires on it.
    (tmp_path / "r.yaml").write_text(RULES)
    engine = Engine(load_rules(["*.yaml"], tmp_path), clock=lambda: 1000.0)
    assert engine.poll_failed(result.account, result.exchange) == []
    assert engine.observe("other", "ccxt", _one_row()) != []  # the rule does fire on a row


def _one_row() -> list[Any]:
    spec = {"balance": {"BTC": "1"}, "free": {"BTC": "1"}, "used": {}, "total": {"BTC": "1"}}
    return parse_balance({**spec, "info": {}}, "other", "binance", "ccxt:binance")


@pytest.mark.parametrize(
    ("adapter_kwargs", "kind"),
    [
        pytest.param({"secret": "not-the-secret"}, ErrorKind.AUTH, id="bad-signature-1022"),
        pytest.param({"key": "unknown-key-0001"}, ErrorKind.AUTH, id="unknown-key-2015"),
        # ccxt signs with its clock minus timeDifference: 100 s behind the server's.
        pytest.param(
            {"ccxt_options": {"timeDifference": 100_000}}, ErrorKind.UNAVAILABLE, id="clock-1021"
        ),
    ],
)
async def test_binance_checks_the_request_like_binance(
    adapter_kwargs: dict[str, Any], kind: ErrorKind, start_sim: StartSim, http: Any
) -> None:
    sim = await start_sim(binance_account())
    result = await poll_account(binance(sim, http, **adapter_kwargs))
    assert result.error is not None and result.error.kind is kind, result.error


async def test_a_retry_after_holds_every_account_on_the_key(start_sim: StartSim, http: Any) -> None:
    account = binance_account()
    account.faults.append(Fault(FaultKind.THROTTLE, retry_after="30"))
    sim = await start_sim(account)
    first = await poll_account(binance(sim, http))
    assert isinstance(first.error, RateLimited) and first.error.retry_after == 30.0
    asked = account.requests
    # Another account on the same key does not ask before the 30 s are up.
    second = await poll_account(binance(sim, http))
    assert isinstance(second.error, RateLimited)
    assert second.error.retry_after is not None and 25 < second.error.retry_after <= 30
    assert account.requests == asked


async def test_the_weight_limit_throttles_then_bans(start_sim: StartSim, http: Any) -> None:
    """Binance's escalation, as ccxt meets it: 429 with a Retry-After, then 418 for an IP
    that asks again; both rate_limited, each with the wait the server gave."""
    one, other = (
        binance_account(key="key-one-0001", name="one"),
        binance_account(key="key-two-0002", name="two"),
    )
    sim = await start_sim(one, other, rate_limits={"binance": (40, 60.0)})  # two account calls
    adapter = binance(sim, http, key="key-one-0001")
    assert (await poll_account(adapter)).ok
    assert (await poll_account(adapter)).ok
    throttled = await poll_account(adapter)
    assert isinstance(throttled.error, RateLimited) and throttled.error.retry_after
    assert "429" in throttled.error.message
    # Key one now waits; an account on key two, same IP, asks anyway and gets the IP banned.
    banned = await poll_account(binance(sim, http, key="key-two-0002"))
    assert isinstance(banned.error, RateLimited)
    assert "418" in banned.error.message and banned.error.retry_after == 120.0


async def test_secrets_never_reach_the_error(start_sim: StartSim, http: Any) -> None:
    """A server echoing the key and secret, and a timeout whose message would hold the signed
    URL: the error text has neither."""
    secret = f"{SECRET}-{KEY}"
    echo = json.dumps({"code": -1000, "msg": f"bad key {KEY} secret {secret}"})
    account = binance_account()
    account.faults.extend([Fault(FaultKind.RAW, status=400, body=echo), Fault(FaultKind.TIMEOUT)])
    sim = await start_sim(account)
    adapter = binance(sim, http, timeout=0.5)
    echoed = await poll_account(adapter)
    timed_out = await poll_account(adapter)
    for result in (echoed, timed_out):
        text = str(result.error)
        assert KEY not in text and secret not in text
        assert "signature" not in text and sim.url not in text
    assert "***" in str(echoed.error)
    assert timed_out.error is not None and timed_out.error.kind is ErrorKind.UNAVAILABLE


async def test_ccxt_logs_nothing_even_at_debug(
    start_sim: StartSim, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ccxt logs each request's headers (the API key) at debug level; not through balwatch,
    whatever the host's logging set-up."""
    sim = await start_sim(binance_account())
    ccxt_logger = logging.getLogger("ccxt.base.exchange")
    was_disabled, ccxt_logger.disabled = ccxt_logger.disabled, False
    with caplog.at_level(logging.DEBUG):
        result: PollResult = await poll_account(binance(sim, http))
    ccxt_logger.disabled = was_disabled
    assert result.ok
    assert KEY not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("ccxt")]


def test_base_url_replaces_scheme_host_and_port_and_keeps_paths() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "nested": {"rest": "https://{hostname}/api/v5", "list": ["https://a.example:8443/x"]},
        "relative": "/not/a/url",
    }
    assert rebase_urls(urls, "http://127.0.0.1:9000") == {
        "public": "http://127.0.0.1:9000/api/v3",
        "nested": {"rest": "http://127.0.0.1:9000/api/v5", "list": ["http://127.0.0.1:9000/x"]},
        "relative": "/not/a/url",
    }
    assert rebase_urls("https://api.binance.com/api/v3", "https://proxy.example/binance/") == (
        "https://proxy.example/binance/api/v3"
    )


@pytest.mark.parametrize(
    ("balance", "field"),
    [
        pytest.param({"info": "<html>", "free": {"BTC": "1"}}, None, id="not-json"),
        pytest.param({"info": {}, "free": {"BTC": 1.5}}, "free", id="float"),
        pytest.param({"info": {}, "total": {"BTC": "1e999"}}, "total", id="out-of-range"),
        pytest.param(
            {"info": {}, "free": {"BTC": None}, "used": {"BTC": None}}, "total", id="none"
        ),
        pytest.param({"info": {}, "free": {"btc": "1", "BTC": "2"}}, "currency", id="twice"),
        pytest.param({"info": {}, "free": ["BTC"]}, "free", id="not-a-map"),
    ],
)
def test_parse_balance_refuses_what_is_not_a_balance(
    balance: dict[str, Any], field: str | None
) -> None:
    with pytest.raises(BadResponse) as raised:
        parse_balance(balance, "acct", "binance", "ccxt:binance")
    assert raised.value.field == field


def test_exchange_problem_names_the_closest_ids_and_a_missing_capability() -> None:
    message = exchange_problem("binanse", ("fetchBalance",))
    assert message is not None and "binance" in message
    assert exchange_problem("binance", ("fetchBalance",)) is None
    assert exchange_problem("binance", ("fetchNothingAtAll",)) == (
        "ccxt's binance has no fetchNothingAtAll"
    )
