"""The simulator's control API (``/_sim/...``): script balances and faults over HTTP.

| method and path | body | effect |
|---|---|---|
| GET /_sim/accounts | | every account: name, exchange, request count |
| GET /_sim/accounts/{name} | | one account: balances, queued faults, delay, requests |
| PUT /_sim/accounts/{name}/balances | {"venue"?, "balances": {ASSET: {field: amount}}} | replace |
| PATCH /_sim/accounts/{name}/balances | same; an asset set to null is removed | merge |
| POST /_sim/accounts/{name}/faults | {"kind", "times"?, "status"?, "body"?, ...} | queue a fault |
| DELETE /_sim/accounts/{name}/faults | | clear faults |
| PUT /_sim/accounts/{name}/delay | {"seconds": 1.5} | answer slowly |
| POST /_sim/expire-tokens | | every Kuna Core token becomes invalid |
| GET /_sim/requests | | {name: request count} |
| GET /_sim/tickers | | {exchange: {"BASE/QUOTE": price}} |
| PUT /_sim/tickers/{exchange} | {"BASE/QUOTE": price, ...} | replace that exchange's prices |
| PATCH /_sim/tickers/{exchange} | same; a pair set to null is removed | merge |
"""

from __future__ import annotations

import json
from dataclasses import asdict
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from balwatch.simulator.scenario import FaultSpec, Pair, to_fields
from balwatch.simulator.state import SimAccount, SimState

M = TypeVar("M", bound=BaseModel)


class BalancesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    venue: str | None = None
    balances: dict[str, dict[str, Any] | None]


class TickersBody(RootModel[dict[Pair, Decimal | int | str | None]]):
    """Prices by pair; numbers keep every digit (parsed as Decimal), null removes a pair."""


class DelayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, allow_inf_nan=False)


def set_balances(account: SimAccount, body: BalancesBody, *, replace: bool) -> None:
    venue = body.venue or account.exchange
    current = {} if replace else account.balances.get(venue, {})
    for asset, fields in body.balances.items():
        if fields is None:
            current.pop(asset, None)
        else:
            current[asset] = to_fields(fields)
    account.balances[venue] = current


def describe(account: SimAccount) -> dict[str, Any]:
    return {
        "name": account.name,
        "exchange": account.exchange,
        "balances": account.balances,
        "faults": [{**asdict(f), "kind": str(f.kind)} for f in account.faults],
        "delay": account.delay,
        "requests": account.requests,
    }


def routes(state: SimState) -> list[web.RouteDef]:
    def account_of(request: web.Request) -> SimAccount:
        name = request.match_info["name"]
        account = state.accounts.get(name)
        if account is None:
            raise web.HTTPNotFound(text=f"no simulated account {name!r}")
        return account

    async def parse(request: web.Request, model: type[M]) -> M:
        try:
            # JSON numbers as Decimal: an amount keeps every digit, never rounds via float.
            return model.model_validate(json.loads(await request.read(), parse_float=Decimal))
        except ValueError as exc:  # bad JSON, or a ValidationError
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def list_accounts(request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": a.name, "exchange": a.exchange, "requests": a.requests}
                for a in state.accounts.values()
            ]
        )

    async def get_account(request: web.Request) -> web.Response:
        return web.json_response(describe(account_of(request)))

    async def put_balances(request: web.Request) -> web.Response:
        account = account_of(request)
        set_balances(account, await parse(request, BalancesBody), replace=True)
        return web.json_response(describe(account))

    async def patch_balances(request: web.Request) -> web.Response:
        account = account_of(request)
        set_balances(account, await parse(request, BalancesBody), replace=False)
        return web.json_response(describe(account))

    async def add_fault(request: web.Request) -> web.Response:
        account = account_of(request)
        account.faults.append((await parse(request, FaultSpec)).build())
        return web.json_response(describe(account))

    async def clear_faults(request: web.Request) -> web.Response:
        account = account_of(request)
        account.faults.clear()
        return web.json_response(describe(account))

    async def set_delay(request: web.Request) -> web.Response:
        account = account_of(request)
        account.delay = (await parse(request, DelayBody)).seconds
        return web.json_response(describe(account))

    async def expire_tokens(request: web.Request) -> web.Response:
        state.expire_tokens()
        return web.json_response({"expired": True})

    async def get_tickers(request: web.Request) -> web.Response:
        return web.json_response(state.tickers)

    async def set_tickers(request: web.Request) -> web.Response:
        exchange = request.match_info["exchange"]
        prices = (await parse(request, TickersBody)).root
        current = {} if request.method == "PUT" else state.tickers.get(exchange, {})
        for pair, price in prices.items():
            if price is None:
                current.pop(pair, None)
            else:
                current[pair] = str(price)
        state.tickers[exchange] = current
        return web.json_response(state.tickers)

    async def request_counts(request: web.Request) -> web.Response:
        return web.json_response({a.name: a.requests for a in state.accounts.values()})

    return [
        web.get("/_sim/accounts", list_accounts),
        web.get("/_sim/accounts/{name}", get_account),
        web.put("/_sim/accounts/{name}/balances", put_balances),
        web.patch("/_sim/accounts/{name}/balances", patch_balances),
        web.post("/_sim/accounts/{name}/faults", add_fault),
        web.delete("/_sim/accounts/{name}/faults", clear_faults),
        web.put("/_sim/accounts/{name}/delay", set_delay),
        web.post("/_sim/expire-tokens", expire_tokens),
        web.get("/_sim/requests", request_counts),
        web.get("/_sim/tickers", get_tickers),
        web.put("/_sim/tickers/{exchange}", set_tickers),
        web.patch("/_sim/tickers/{exchange}", set_tickers),
    ]
