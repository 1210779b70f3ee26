"""ccxt accounts in the config: what ``check`` accepts, and each mistake at FILE:LINE:COL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from balwatch.adapters.ccxtsource import CcxtOptions
from balwatch.config import load_config
from balwatch.errors import ConfigError, Problem

WriteFile = Callable[..., Path]

GOOD = """\
accounts:
  - name: binance-spot
    exchange: ccxt
    options: {id: binance, balance_params: {omitZeroBalances: true}}
    credentials: {api_key: k-123456, api_secret: s-123456}
"""


def problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return caught.value.problems


def test_a_ccxt_account_loads_with_its_own_urls(write: WriteFile) -> None:
    config = load_config(write(GOOD), {})
    (account,) = config.accounts
    assert isinstance(account.options, CcxtOptions)
    assert account.options.id == "binance"
    assert account.options.balance_params == {"omitZeroBalances": True}
    spec = config.account_spec(account)
    assert spec.base_url == ""  # ccxt's own URLs
    assert "s-123456" not in repr(config)


CASES = {
    "unknown id, closest named": (
        GOOD.replace("id: binance", "id: binanse"),
        4,
        19,
        "ccxt has no exchange 'binanse'; did you mean binance",
    ),
    "missing required credential": (
        GOOD.replace(", api_secret: s-123456", ""),
        5,
        18,
        "ccxt's binance needs credentials api_secret; missing here",
    ),
    "a password the exchange requires": (
        GOOD.replace("id: binance", "id: okx"),
        5,
        18,
        "ccxt's okx needs credentials password; missing here",
    ),
    "unknown credential key": (
        GOOD.replace("api_secret: s-123456", "secret: s-123456"),
        5,
        46,
        "unknown credential 'secret' for ccxt; expected: api_key, api_secret, password, uid",
    ),
    "credentials balwatch does not take": (
        GOOD.replace("id: binance", "id: hyperliquid").replace(
            "{api_key: k-123456, api_secret: s-123456}", "{}"
        ),
        4,
        19,
        "ccxt's hyperliquid needs privateKey, walletAddress, which balwatch does not take",
    ),
    "no id": (GOOD.replace("id: binance, ", ""), 4, 14, "missing required key 'id' in options"),
    "unknown option": (
        GOOD.replace("id: binance", "id: binance, markets: true"),
        4,
        28,
        "unknown key 'markets' in options for ccxt",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_mistakes_are_reported_where_they_are(write: WriteFile, case: str) -> None:
    text, line, column, message = CASES[case]
    path = write(text)
    found = problems(path)
    assert len(found) == 1, found
    problem = found[0]
    assert (problem.file, problem.line, problem.column) == (str(path), line, column), problem
    assert problem.message.startswith(message), problem.message


def test_without_the_extra_check_says_how_to_install_it(
    write: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ccxt", None)  # what an install without the extra has
    monkeypatch.setitem(sys.modules, "ccxt.async_support", None)
    path = write(GOOD)
    [problem] = problems(path)
    assert (problem.line, problem.column) == (4, 19)
    assert "pip install 'balwatch[ccxt]'" in problem.message


def test_ccxt_is_not_imported_without_a_ccxt_account(tmp_path: Path) -> None:
    """The daemon's memory does not grow for users without a ccxt account: nothing of ccxt is
    imported by loading such a config and building its adapters."""
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            rules: []
            accounts:
              - {name: b, exchange: bitso, credentials: {api_key: k, api_secret: s}}
            """
        )
    )
    script = textwrap.dedent(
        f"""\
        import sys
        import aiohttp
        from balwatch.daemon import Daemon
        from balwatch.loading import load_all
        from balwatch.poll import make_adapter
        loaded = load_all({str(config)!r})
        for account in loaded.config.accounts:
            make_adapter(account.exchange, loaded.config.account_spec(account), None)
        print(sorted(name for name in sys.modules if name.split(".")[0] == "ccxt"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
