"""``balwatch run`` keeps credentials out of its log from the first line it writes.

Each adapter masks its own account's credentials in what it quotes, so the log's own
redactor is what stands between a log line and a credential the adapter does not hold: here
a CoinAPI gateway shared by two accounts answers one of them with an error quoting the
other's key. The redactor must know every secret of the config before the first poll.
"""

from __future__ import annotations

import json
import signal
from collections import deque
from pathlib import Path

from balwatch.simulator.state import Fault, FaultKind, SimAccount
from tests.commands import balwatch_run
from tests.conftest import StartSim

FAILING_KEY = "gw-key-failing-5d1e"
OTHER_KEY = "gw-key-other-a93c"


def gateway_accounts(echo: str) -> list[SimAccount]:
    failing = SimAccount(
        name="ems-failing",
        exchange="coinapi",
        api_key=FAILING_KEY,
        balances={"KRAKEN": {"BTC": {"total": "1"}}},
        faults=deque([Fault(FaultKind.RAW, times=None, status=502, body=echo)]),
    )
    other = SimAccount(
        name="ems-other",
        exchange="coinapi",
        api_key=OTHER_KEY,
        balances={"KRAKEN": {"ETH": {"total": "2"}}},
    )
    return [failing, other]


async def test_a_credential_echoed_by_a_source_is_masked_from_the_first_poll(
    tmp_path: Path, start_sim: StartSim
) -> None:
    echo = json.dumps(
        {"message": f"upstream rejected X-CoinAPI-Key {FAILING_KEY}; last good key {OTHER_KEY}"}
    )
    sim = await start_sim(*gateway_accounts(echo))
    config = tmp_path / "balwatch.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "log: {format: json, level: info}\n"
        "accounts:\n"
        f"  - {{name: ems-failing, exchange: coinapi, base_url: '{sim.url}',"
        " credentials: {api_key: '${FAILING_KEY}'}}\n"
        f"  - {{name: ems-other, exchange: coinapi, base_url: '{sim.url}',"
        " credentials: {api_key: '${OTHER_KEY}'}}\n"
    )
    env = {"FAILING_KEY": FAILING_KEY, "OTHER_KEY": OTHER_KEY}
    async with balwatch_run(config, env) as daemon:
        # The failed poll's line quotes the gateway's answer: the text around the keys shows.
        await daemon.wait_output("upstream rejected X-CoinAPI-Key")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0, daemon.output[-3000:]
    failed = [
        entry
        for entry in map(json.loads, daemon.output.splitlines())
        if entry.get("event") == "poll_failed" and entry.get("account") == "ems-failing"
    ]
    assert failed and "last good key" in failed[0]["error"], daemon.output[-3000:]
    for key in (FAILING_KEY, OTHER_KEY):
        assert key not in daemon.output, f"{key} appears in balwatch run's log"
