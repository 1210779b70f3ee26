"""The terminal tables: cells from an exchange cannot drive the terminal or break a row."""

from __future__ import annotations

from decimal import Decimal

from balwatch.errors import BadResponse
from balwatch.model import Balance
from balwatch.poll import PollResult
from balwatch.table import balances_table, failures_table


def test_control_characters_in_cells_are_escaped() -> None:
    row = Balance("acct", "coinapi", "BIN\x1b[2JANCE", "BTC\x07", "btc", total=Decimal(1))
    failed = BadResponse("coinapi", "HTTP 400:\n\x1b]0;owned\x07")
    results = [
        PollResult("acct", "coinapi", [row], None, 0.1),
        PollResult("other", "coinapi", None, failed, 0.1),
    ]
    table = balances_table(results) + "\n" + failures_table(results)
    assert "\x1b" not in table and "\x07" not in table
    assert "BIN\\x1b[2JANCE" in table and "BTC\\x07" in table
    assert "HTTP 400:\\n\\x1b]0;owned\\x07" in table
    assert len(table.splitlines()) == 4  # two headers, two rows: no cell broke its line
