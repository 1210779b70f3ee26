"""The simulator answers the wire as the providers document it, spelled out here.

Paths, headers and signatures below are literal text from each provider's documentation
(the signatures are the documented check vectors), never the adapters' constants: the
adapter tests run the adapters against this simulator, so these tests pin both ends of that
conversation to the documents.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from balwatch.simulator.state import SimAccount
from tests.conftest import StartSim

BITSO_VECTOR = "e5ac2ac6d5121a5c61c98ff6f3235f522bba87fad50411845f995a2d90832693"
COINW_VECTOR = "F7926BA6EC02413B9990D3EF7FADB3B6"


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def bitso() -> SimAccount:
    return SimAccount(
        name="b",
        exchange="bitso",
        api_key="K",
        api_secret="BITSO_SECRET",
        balances={"bitso": {"BTC": {"available": "1.5"}}},
    )


async def test_bitso_accepts_the_documented_check_vector(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(bitso())
    url = sim.url + "/api/v3/balance/"
    status, body = await answer(
        http, "GET", url, headers={"Authorization": f"Bitso K:1700000000000:{BITSO_VECTOR}"}
    )
    assert status == 200, body
    assert body["payload"]["balances"][0]["currency"] == "btc"


async def test_bitso_refuses_a_signature_off_by_one_digit(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(bitso())
    url = sim.url + "/api/v3/balance/"
    wrong = BITSO_VECTOR[:-1] + "4"
    status, body = await answer(
        http, "GET", url, headers={"Authorization": f"Bitso K:1700000000000:{wrong}"}
    )
    assert (status, body["error"]["code"]) == (401, "0215")


async def test_coinw_accepts_the_documented_check_vector(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    account = SimAccount(
        name="w",
        exchange="coinw",
        api_key="my-api-key",
        api_secret="my-secret-key",
        balances={"coinw": {"BTC": {"available": "0.0012"}}},
    )
    sim = await start_sim(account)
    params = {"command": "returnCompleteBalances", "api_key": "my-api-key"}
    url = sim.url + "/api/v1/private"
    status, body = await answer(http, "POST", url, params={**params, "sign": COINW_VECTOR})
    assert (status, body["code"]) == (200, "200")
    assert body["data"]["BTC"]["available"] == "0.0012"
    status, body = await answer(http, "POST", url, params={**params, "sign": COINW_VECTOR[1:]})
    assert (status, body["code"]) == (200, "10006")


async def test_kunacore_takes_the_documented_api_key_header(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    account = SimAccount(
        name="k", exchange="kunacore", api_key="kk", balances={"kunacore": {"USDT": {}}}
    )
    sim = await start_sim(account)
    url = sim.url + "/v2/balance"
    status, body = await answer(http, "POST", url, headers={"api-key": "kk"}, json={})
    assert status == 200, body
    assert body["data"][0]["asset"] == "USDT"
    status, _ = await answer(http, "POST", url, headers={"x-api-key": "kk"}, json={})
    assert status == 401


async def test_kunacore_login_issues_the_documented_bearer_token(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    account = SimAccount(
        name="k",
        exchange="kunacore",
        merchant_id="m-1",
        login="ops",
        password="pw-123",
        balances={"kunacore": {"USDT": {}}},
    )
    sim = await start_sim(account)
    status, body = await answer(
        http,
        "POST",
        sim.url + "/v2/auth/login",
        headers={"merchant_id": "m-1"},
        json={"login": "ops", "password": "pw-123"},
    )
    assert status == 200, body
    token = body["data"]["accessToken"]
    status, body = await answer(
        http, "POST", sim.url + "/v2/balance", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body


async def test_coinapi_takes_the_documented_key_header(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    account = SimAccount(
        name="c",
        exchange="coinapi",
        api_key="ck",
        balances={"KRAKEN": {"BTC": {"total": "0.00134444", "available": "0.001"}}},
    )
    sim = await start_sim(account)
    url = sim.url + "/v1/balances"
    status, body = await answer(http, "GET", url, headers={"X-CoinAPI-Key": "ck"})
    assert status == 200, body
    row = body[0]["data"][0]
    assert (body[0]["exchange_id"], row["asset_id_coinapi"]) == ("KRAKEN", "BTC")
    assert set(row) >= {"balance", "available", "locked", "rate_usd", "last_updated_by"}
    status, _ = await answer(http, "GET", url, headers={"X-Api-Key": "ck"})
    assert status == 401
