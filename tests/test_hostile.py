"""What a hostile or broken exchange can do, tried on a real server on loopback.

An exchange (or a proxy before it) echoes the request in every encoding; streams a body
without end; sends asset codes that are terminal control sequences; names a key twice in
an object. None of it may leak a secret, take the memory, drive the terminal or be taken
as a balance.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from balwatch.errors import ErrorKind, SourceError
from balwatch.poll import make_adapter, poll_account
from tests.commands import run_cli
from tests.conftest import account_spec
from tests.hostile import ECHOES, HUGE_BYTES, TOKEN, HostileExchange, visible

# Credentials made of what each encoding changes: non-ASCII, quotes, backslashes, + / = % &,
# spaces. Those sent in a header stay ASCII, as headers must.
COINAPI_KEY: Final = 'ca"key\\+/=%&-0001'
BITSO_KEY: Final = 'bk"key\\+/=%&-0002'
BITSO_SECRET: Final = 'bs\u00e4cret "x" \\ +/=%& 0003'
KUNA_KEY: Final = 'kk"key\\+/=%&-0004'
KUNA_MERCHANT: Final = 'm1d"\\+/=%&-0005'
KUNA_LOGIN: Final = 'ops+\u00e4@ex\u00e4mple.com "q" \\'
KUNA_PASSWORD: Final = 'p\u00e4ssw\u00f6rd "x" \\ +/=%& 0006'
COINW_KEY: Final = 'cw k"ey\\+/=%&\u00e4 0007'
COINW_SECRET: Final = 'cws\u00e4cret "x" \\ +/=%& 0008'

KUNA_JWT: Final = {"merchant_id": KUNA_MERCHANT, "login": KUNA_LOGIN, "password": KUNA_PASSWORD}
CREDENTIALS: Final = {
    "coinapi": {"api_key": COINAPI_KEY},
    "bitso": {"api_key": BITSO_KEY, "api_secret": BITSO_SECRET},
    "kunacore": {"api_key": KUNA_KEY},
    "coinw": {"api_key": COINW_KEY, "api_secret": COINW_SECRET},
}
# (exchange, credentials, the one echoed): every credential field of every source, and what
# a request carries besides (Kuna's login token, CoinW's signature).
ECHOED_FIELDS: Final = [
    ("coinapi", CREDENTIALS["coinapi"], "api_key"),
    ("bitso", CREDENTIALS["bitso"], "api_key"),
    ("bitso", CREDENTIALS["bitso"], "api_secret"),
    ("kunacore", CREDENTIALS["kunacore"], "api_key"),
    ("kunacore", KUNA_JWT, "merchant_id"),
    ("kunacore", KUNA_JWT, "login"),
    ("kunacore", KUNA_JWT, "password"),
    ("kunacore", KUNA_JWT, "token"),
    ("coinw", CREDENTIALS["coinw"], "api_key"),
    ("coinw", CREDENTIALS["coinw"], "api_secret"),
    ("coinw", CREDENTIALS["coinw"], "sign"),
]
# Never on the wire (they only sign), so the exchange quotes what it knows of them.
KNOWN: Final = {"bitso": {"api_secret": BITSO_SECRET}, "coinw": {"api_secret": COINW_SECRET}}
SECRETS: Final = (
    COINAPI_KEY,
    BITSO_KEY,
    BITSO_SECRET,
    KUNA_KEY,
    KUNA_MERCHANT,
    KUNA_LOGIN,
    KUNA_PASSWORD,
    COINW_KEY,
    COINW_SECRET,
    TOKEN,
)
ENV: Final = {f"HOSTILE_{i}": value for i, value in enumerate(SECRETS)}
VARIABLE: Final = {value: f"${{HOSTILE_{i}}}" for i, value in enumerate(SECRETS)}


def write_echo_config(path: Path, url: str) -> list[str]:
    """One account per (source, echoed credential, echo form); their names."""
    names, lines = [], ["rules: []", "accounts:"]
    for exchange, credentials, field in ECHOED_FIELDS:
        for form in ECHOES:
            name = f"{exchange}-{field}-{form}"
            names.append(name)
            given = ", ".join(f'{k}: "{VARIABLE[v]}"' for k, v in credentials.items())
            lines += [
                f"  - name: {name}",
                f"    exchange: {exchange}",
                f"    base_url: {url}/echo/{exchange}/{field}/{form}",
                f"    credentials: {{{given}}}",
            ]
    path.write_text("\n".join(lines) + "\n")
    return names


def assert_nothing_visible(text: str, echoed: set[str]) -> None:
    for secret in {*SECRETS, *echoed}:
        assert visible(text, secret) == [], secret


async def test_echoed_credentials_in_any_encoding_never_reach_the_output_or_the_log(
    tmp_path: Path,
) -> None:
    """Every credential of every source, echoed plain, JSON-escaped, URL-encoded or inside
    base64 at each offset: the tables, the JSON, and each ``poll_failed`` line show ***."""
    async with HostileExchange(KNOWN) as exchange:
        config = tmp_path / "balwatch.yaml"
        names = write_echo_config(config, exchange.url)
        runs = {
            "table": await run_cli("balances", "-c", str(config), env=ENV),
            "json": await run_cli("balances", "-c", str(config), "--json", env=ENV),
            "eval": await run_cli("eval", "-c", str(config), env=ENV),
        }
    echoed = set(exchange.echoed.values())
    assert {TOKEN, KUNA_PASSWORD, COINW_KEY} <= echoed  # the server did see and echo them
    for run, (code, out, err) in runs.items():
        assert code == 3, (run, err[-2000:])
        assert_nothing_visible(out + err, echoed)
        logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        failed = {e["account"]: e["error"] for e in logged if e["event"] == "poll_failed"}
        assert sorted(failed) == sorted(names), run
        assert all("***" in error for error in failed.values()), run
        if run == "json":
            shown = {e["account"]: e["message"] for e in json.loads(out)["errors"]}
        else:
            table = out.split("failed polls:")[1].splitlines()[2:]
            shown = {row.split()[0]: row for row in table}
        assert sorted(shown) == sorted(names), run
        assert all("***" in message for message in shown.values()), run


@pytest.mark.parametrize("declared", ["declared", "streamed"])
@pytest.mark.parametrize("exchange", sorted(CREDENTIALS))
async def test_a_body_over_the_size_cap_fails_the_poll_fast_and_unread(
    http: aiohttp.ClientSession, exchange: str, declared: str
) -> None:
    """128 MiB offered, with or without a Content-Length: the poll reads at most the cap
    (1 MiB here) and fails as bad_response; the server is cut off long before the end."""
    cap = 1024 * 1024
    async with HostileExchange() as server:
        url = f"{server.url}/huge/{declared}"
        spec = account_spec(exchange, url, CREDENTIALS[exchange], max_response_size=cap)
        tracemalloc.start()
        try:
            result = await poll_account(make_adapter(exchange, spec, http))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await asyncio.wait_for(server.stream_ended.wait(), 30)
    error = result.error
    assert error is not None and error.kind is ErrorKind.BAD_RESPONSE
    assert "larger than max_response_size 1MiB" in error.message
    # What the kernel's socket buffers took before the client hung up, no more.
    assert server.sent < HUGE_BYTES // 4
    assert peak < 8 * cap


async def test_the_quote_of_a_capped_body_splits_no_character_and_no_secret(
    http: aiohttp.ClientSession,
) -> None:
    """The cap cuts the body at a byte count: through a UTF-8 character, or through an
    echoed key. Neither a replacement character nor a piece of the key is shown."""
    cap = 1024
    async with HostileExchange() as server:
        server.answers["multibyte"] = (400, " " * (cap - 1) + "\u00e4" * 50)
        server.answers["key"] = (400, " " * (cap - 10) + COINAPI_KEY + " and more" * 20)
        errors: dict[str, SourceError | None] = {}
        for name, credentials in (("multibyte", {}), ("key", {"api_key": COINAPI_KEY})):
            url = f"{server.url}/raw/{name}"
            spec = account_spec("coinapi", url, credentials, max_response_size=cap)
            errors[name] = (await poll_account(make_adapter("coinapi", spec, http))).error
    for error in errors.values():
        assert error is not None and error.kind is ErrorKind.BAD_RESPONSE
        assert "max_response_size 1KiB" in error.message
    assert "\ufffd" not in str(errors["multibyte"])
    assert visible(str(errors["key"]), COINAPI_KEY) == []


# Each source's answer with a code that is a terminal control sequence, and the field named.
CONTROL_CODES: Final = {
    "coinapi": (
        [
            {
                "exchange_id": "BINANCE",
                "data": [{"asset_id_coinapi": "\x1b[31mBTC\x07", "balance": 1}],
            }
        ],
        "asset_id_coinapi",
    ),
    "bitso": (
        {
            "success": True,
            "payload": {
                "balances": [
                    {"currency": "btc\x1b[2J", "total": "1", "available": "1", "locked": "0"}
                ]
            },
        },
        "currency",
    ),
    "kunacore": ({"data": [{"asset": "USDT\x1b]0;pwned\x07", "balance": "1"}]}, "asset"),
    "coinw": ({"code": "200", "data": {"\x1b[5mBTC": {"available": "1", "onOrders": "0"}}}, "data"),
}


@pytest.mark.parametrize("exchange", sorted(CONTROL_CODES))
async def test_an_asset_code_with_control_characters_is_a_bad_response(
    http: aiohttp.ClientSession, exchange: str
) -> None:
    answer, field = CONTROL_CODES[exchange]
    async with HostileExchange() as server:
        server.answers[exchange] = (200, json.dumps(answer))
        spec = account_spec(exchange, f"{server.url}/raw/{exchange}", CREDENTIALS[exchange])
        result = await poll_account(make_adapter(exchange, spec, http))
    error = result.error
    assert error is not None and error.kind is ErrorKind.BAD_RESPONSE
    assert error.source == exchange and f"field {field}" in error.message
    assert "\x1b" not in str(error) and "\\x1b" in str(error)


async def test_control_characters_from_an_exchange_never_reach_the_terminal(
    tmp_path: Path,
) -> None:
    async with HostileExchange() as server:
        lines = ["rules: []", "log: {format: console}", "accounts:"]
        for exchange, (answer, _) in CONTROL_CODES.items():
            server.answers[exchange] = (200, json.dumps(answer))
            # A venue code is shown in the table too.
            given = ", ".join(f'{k}: "{VARIABLE[v]}"' for k, v in CREDENTIALS[exchange].items())
            lines += [
                f"  - name: {exchange}",
                f"    exchange: {exchange}",
                f"    base_url: {server.url}/raw/{exchange}",
                f"    credentials: {{{given}}}",
            ]
        server.answers["venue"] = (400, "\x1b]0;owned\x07 \x1b[2J")
        lines += [
            "  - name: venue",
            "    exchange: coinapi",
            f"    base_url: {server.url}/raw/venue",
        ]
        config = tmp_path / "balwatch.yaml"
        config.write_text("\n".join(lines) + "\n")
        code, out, err = await run_cli("balances", "-c", str(config), env=ENV)
    assert code == 3
    for exchange in (*CONTROL_CODES, "venue"):
        assert exchange in out.split("failed polls:")[1]
    for text in (out, err):
        assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b" in out and "\\x1b" in err  # shown, escaped, not dropped


# (exchange, answer text, the key named twice): at the top, in a row, in an object no row
# reads, and once written with an escape that a text search would miss.
DUPLICATED_KEYS: Final = [
    (
        "coinw",
        '{"code": "200", "data": {"BTC": {"available": "1", "onOrders": "0"},'
        ' "BTC": {"available": "9", "onOrders": "0"}}}',
        "BTC",
    ),
    (
        "coinw",
        '{"code": "200", "data": {"BTC": {"available": "1", "onOrders": "0"},'
        ' "\\u0042TC": {"available": "9", "onOrders": "0"}}}',
        "BTC",
    ),
    (
        "bitso",
        '{"success": true, "payload": {"balances": [{"currency": "btc", "total": "1",'
        ' "available": "1", "locked": "0", "total": "9"}]}}',
        "total",
    ),
    ("kunacore", '{"data": [], "data": [{"asset": "USDT", "balance": "1"}]}', "data"),
    (
        "kunacore",
        '{"data": [{"asset": "USDT", "balance": "1", "depositAddress":'
        ' {"TRC20": {"address": "T1"}, "TRC20": {"address": "T2"}}}]}',
        "TRC20",
    ),
    (
        "coinapi",
        '[{"exchange_id": "BINANCE", "data": [], "exchange_id": "KRAKEN"}]',
        "exchange_id",
    ),
]


@pytest.mark.parametrize(("exchange", "answer", "key"), DUPLICATED_KEYS)
async def test_a_key_named_twice_in_an_object_is_a_bad_response_naming_it(
    http: aiohttp.ClientSession, exchange: str, answer: str, key: str
) -> None:
    async with HostileExchange() as server:
        server.answers["dup"] = (200, answer)
        spec = account_spec(exchange, f"{server.url}/raw/dup", CREDENTIALS[exchange])
        result = await poll_account(make_adapter(exchange, spec, http))
    error = result.error
    assert result.rows is None and error is not None
    assert error.kind is ErrorKind.BAD_RESPONSE and error.source == exchange
    assert f"key {key!r} appears twice" in error.message
