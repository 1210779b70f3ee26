"""The batch path for plain amounts gives each source's rows exactly as the checked path does.

Every parser reads a whole answer's amounts in one check when they are all plain decimal
text (``money.plain_amounts``) and falls back to reading them one by one otherwise. Both
must give the same rows, with each amount under its own metric.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balwatch.adapters import bitso, coinw, kunacore
from balwatch.model import Balance

amounts = st.one_of(
    st.decimals(min_value=0, max_value=10**12, places=8).map(lambda d: format(d, "f")),
    st.integers(min_value=0, max_value=10**20).map(str),
)
codes = st.lists(st.sampled_from(["btc", "eth", "usdt", "mxn", "sol", "trx"]), unique=True)


def bitso_body(assets: list[str], draw: Callable[[], str]) -> dict[str, Any]:
    fields = ("total", "locked", "available", "pending_deposit", "pending_withdrawal")
    rows = [{"currency": a, **{name: draw() for name in fields}} for a in assets]
    return {"success": True, "payload": {"balances": rows}}


def kunacore_body(assets: list[str], draw: Callable[[], str]) -> dict[str, Any]:
    fields = ("balance", "holdBalance", "lockBalance", "referralBalance")
    return {"data": [{"asset": a.upper(), **{name: draw() for name in fields}} for a in assets]}


def coinw_body(assets: list[str], draw: Callable[[], str]) -> dict[str, Any]:
    data = {a.upper(): {"available": draw(), "onOrders": draw()} for a in assets}
    return {"code": "200", "data": data, "msg": "SUCCESS"}


SOURCES = [(bitso, bitso_body), (kunacore, kunacore_body), (coinw, coinw_body)]


def parse_both(module: ModuleType, body: dict[str, Any]) -> tuple[list[Balance], list[Balance]]:
    """The rows through the batch path (checked that it was taken) and with it turned off."""
    batch = module.plain_amounts
    declined: list[bool] = []

    def spy(*args: Any) -> Any:
        result = batch(*args)
        declined.append(result is None)
        return result

    try:
        module.plain_amounts = spy
        fast = module.parse_balances(body, "acct")
        module.plain_amounts = lambda *args: None
        checked = module.parse_balances(body, "acct")
    finally:
        module.plain_amounts = batch
    assert declined == [False]
    return fast, checked


@pytest.mark.parametrize(("module", "build"), SOURCES, ids=["bitso", "kunacore", "coinw"])
@given(data=st.data(), assets=codes)
@settings(max_examples=100, deadline=None)
def test_batch_and_checked_paths_give_the_same_rows(
    module: ModuleType, build: Callable[..., dict[str, Any]], data: st.DataObject, assets: list[str]
) -> None:
    fast, checked = parse_both(module, build(assets, lambda: data.draw(amounts)))
    assert fast == checked
    assert [str(v) for row in fast for v in row] == [str(v) for row in checked for v in row]


def test_each_amount_lands_under_its_own_metric() -> None:
    """Distinct values per field, so a batch unpacked in the wrong order cannot pass."""
    values = iter(str(n) for n in range(1, 100))
    (b,) = bitso.parse_balances(bitso_body(["btc"], lambda: next(values)), "a")
    assert (b.total, b.locked, b.available, b.pending_deposit, b.pending_withdrawal) == tuple(
        Decimal(n) for n in range(1, 6)
    )
    (k,) = kunacore.parse_balances(kunacore_body(["usdt"], lambda: next(values)), "a")
    assert (k.available, k.hold, k.aml_locked, k.referral, k.total) == (
        Decimal(6),
        Decimal(7),
        Decimal(8),
        Decimal(9),
        Decimal(21),
    )
    (c,) = coinw.parse_balances(coinw_body(["eth"], lambda: next(values)), "a")
    assert (c.available, c.locked, c.total) == (Decimal(10), Decimal(11), Decimal(21))
