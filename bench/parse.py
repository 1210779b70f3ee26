"""Parse + normalize throughput for a 200-asset balance response of each source.

Prints responses/s and rows/s for balwatch's four parsers (JSON text -> Balance rows, the text
decoded as every answer is: :func:`balwatch.adapters.http.decode_json`), and,
on the same Bitso payload in the same run, ccxt's Bitso balance parser as the baseline.
Target (issue 2): balwatch's Bitso parser at least 5x ccxt's throughput. For scale, the run
also measures a floor on the same payload: ``json.loads`` and one ``Decimal()`` per amount,
with no checks and no rows, the least any parser that hands out Decimals must spend.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/parse.py [--assets 200]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from balwatch.adapters import bitso, coinapi, coinw, kunacore
from balwatch.adapters.http import decode_json


def amount(rng: random.Random) -> str:
    return f"{rng.randint(0, 10**9)}.{rng.randint(0, 10**8):08d}"


def payloads(n: int, seed: int = 7) -> dict[str, str]:
    rng = random.Random(seed)
    assets = [f"A{i:03d}" for i in range(n)]
    bitso_body = {
        "success": True,
        "payload": {
            "balances": [
                {
                    "currency": a.lower(),
                    "total": amount(rng),
                    "locked": amount(rng),
                    "available": amount(rng),
                    "pending_deposit": amount(rng),
                    "pending_withdrawal": amount(rng),
                }
                for a in assets
            ]
        },
    }
    # CoinAPI sends JSON numbers: write the amount text unquoted.
    coinapi_rows = ",".join(
        f'{{"asset_id_exchange": "{a.lower()}", "asset_id_coinapi": "{a}",'
        f' "balance": {amount(rng)}, "available": {amount(rng)}, "locked": {amount(rng)},'
        f' "last_updated_by": "EXCHANGE", "rate_usd": {amount(rng)}, "traded": false}}'
        for a in assets
    )
    kuna_body = {
        "data": [
            {
                "asset": a,
                "balance": amount(rng),
                "holdBalance": amount(rng),
                "lockBalance": amount(rng),
                "referralBalance": amount(rng),
                "depositAddress": {"TRC20": {"address": "T" + "x" * 33, "memo": None}},
            }
            for a in assets
        ]
    }
    coinw_body = {
        "code": "200",
        "data": {a: {"onOrders": amount(rng), "available": amount(rng)} for a in assets},
        "msg": "SUCCESS",
        "success": True,
        "failed": False,
    }
    return {
        "bitso": json.dumps(bitso_body),
        "coinapi": f'[{{"exchange_id": "BINANCESPOT", "data": [{coinapi_rows}]}}]',
        "kunacore": json.dumps(kuna_body),
        "coinw": json.dumps(coinw_body),
    }


def decimals_only(text: str) -> list[Decimal]:
    """What any parser handing out Decimals must spend at least: decode, one Decimal() each."""
    return [
        Decimal(value)
        for entry in json.loads(text)["payload"]["balances"]
        for key, value in entry.items()
        if key != "currency"
    ]


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn``, best of three timed runs."""
    fn()  # warm up
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            fn()
            calls += 1
        best = max(best, calls / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()

    texts = payloads(args.assets)
    parsers = {
        "bitso": bitso.parse_balances,
        "coinapi": coinapi.parse_balances,
        "kunacore": kunacore.parse_balances,
        "coinw": coinw.parse_balances,
    }
    print(f"parse + normalize, {args.assets} assets per response (JSON text -> rows)")
    figures: dict[str, float] = {}
    for name, parse in parsers.items():
        text = texts[name]

        def run(text: str = text, parse: Callable[[Any, str], Any] = parse) -> Any:
            return parse(decode_json(text), "bench")

        assert len(run()) == args.assets
        figures[name] = rate(run, args.seconds)
        print(
            f"  balwatch {name:9s} {figures[name]:9.0f} responses/s"
            f"  {figures[name] * args.assets:11.0f} rows/s"
        )

    try:
        import ccxt  # type: ignore[import-untyped]
    except ImportError:
        print("  ccxt not installed: pip install -e '.[bench]' for the baseline")
        return
    exchange = ccxt.bitso()
    text = texts["bitso"]
    baseline = rate(lambda: exchange.parse_balance(json.loads(text)), args.seconds)
    ratio = figures["bitso"] / baseline
    print(
        f"  ccxt     bitso     {baseline:9.0f} responses/s  {baseline * args.assets:11.0f} rows/s"
    )
    floor = rate(lambda: decimals_only(text), args.seconds)
    print(
        f"  floor    bitso     {floor:9.0f} responses/s  (json.loads and one Decimal() per amount,"
        f" no checks, no rows: {floor / baseline:.1f}x ccxt)"
    )
    verdict = "meets" if ratio >= 5 else "MISSES"
    print(f"bitso: balwatch / ccxt = {ratio:.1f}x ({verdict} the 5x target)")


if __name__ == "__main__":
    main()
