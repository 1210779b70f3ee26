"""A portfolio rule in the running daemon: its alert through a real Mosquitto and a chat
webhook, and a failed poll in the group that neither fires nor resolves it. The alert keeps
the contract of every alert: the published schema, ``instance`` and ``url``, the HTTP API
listing and finding it, the resolve carrying the text it fired with.

The real simulator, broker, webhook receiver and :class:`Daemon` with its SQLite state;
waits are on alerts the daemon hands out, MQTT messages, webhook requests and simulator
requests, never on the clock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from balwatch.simulator.server import Simulator
from balwatch.simulator.state import Fault, FaultKind
from tests.alertschema import schema_errors
from tests.brokers import Mosquitto, free_port, subscribe
from tests.daemons import AlertLog, CountingState, running
from tests.test_daemon import (
    bitso,
    bitso_account,
    coinw,
    coinw_account,
    set_fields,
    write_config,
)
from tests.webhooks import WebhookReceiver

FLOOR_RULES = """\
rules:
  - name: treasury-floor
    select: {assets: [USDT]}
    group_by: [asset]
    when: sum(available) < 15000
    severity: critical
    summary: "{asset} across the wallets: {values}"
"""
ACTIVE = "balwatch/active/treasury-floor/-/-/USDT"


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_a_group_alert_reaches_mqtt_and_chat_and_a_failed_poll_does_not_resolve_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    state = CountingState([bitso_account(available="10000"), coinw_account()])
    sim = Simulator(state)
    await sim.start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(FLOOR_RULES)
    try:
        async with Mosquitto() as broker, WebhookReceiver() as chat:
            config = write_config(
                tmp_path / "balwatch.yaml",
                state_dir=tmp_path / "state",
                rules=rules,
                accounts=bitso("treasury", sim.url) + coinw("spot", sim.url),
                sinks=(
                    f"  - {{name: mqtt, type: mqtt, url: '{broker.url}'}}\n"
                    f"  - {{name: chat, type: webhook, format: slack, url: '{chat.url}',\n"
                    "      group_wait: 0s, group_interval: 1s}\n"
                ),
            )
            api = f"http://127.0.0.1:{free_port()}"
            with config.open("a") as more:
                more.write(
                    f"instance: groups-test\nexternal_url: {api}\n"
                    f"http: {{listen: '{api.removeprefix('http://')}'}}\n"
                )
            log = AlertLog()
            topics = ["balwatch/alerts/#", "balwatch/active/#"]
            async with subscribe(broker.port, topics) as sub, running(config, log) as daemon:
                assert log.alerts == []  # 10000 + 10000 USDT
                set_fields(state, "spot", "USDT", available="3000")
                fired = await log.wait_for(lambda a: a.rule == "treasury-floor")
                assert (fired.event, fired.group, fired.account) == (
                    "firing",
                    {"asset": "USDT"},
                    None,
                )

                received = {m.topic.value: m for m in [await sub.get() for _ in range(2)]}
                assert set(received) == {ACTIVE, ACTIVE.replace("/active/", "/alerts/")}
                for message in received.values():
                    assert isinstance(message.payload, bytes)
                    sent = json.loads(message.payload)
                    assert schema_errors(sent) == [], sent
                    # placed by the publisher, as every alert is
                    assert (sent["instance"], sent["url"]) == (
                        "groups-test",
                        f"{api}/api/alerts/{fired.fingerprint}",
                    )
                # the HTTP API lists it and answers at its url
                status, listed = await get(http, f"{api}/api/alerts")
                assert status == 200
                assert [(a["rule"], a["group"]) for a in listed] == [
                    ("treasury-floor", {"asset": "USDT"})
                ]
                status, found = await get(http, f"{api}/api/alerts/{fired.fingerprint}")
                assert (status, found["phase"], found["group"]) == (
                    200,
                    "firing",
                    {"asset": "USDT"},
                )
                async with subscribe(broker.port, ["balwatch/active/#"]) as late:
                    [retained] = await late.drain()
                assert retained.topic.value == ACTIVE
                assert isinstance(retained.payload, bytes)
                doc = json.loads(retained.payload)
                assert (doc["group"], doc["account"], doc["exchange"], doc["asset"]) == (
                    {"asset": "USDT"},
                    None,
                    None,
                    "USDT",
                )
                assert doc["values"] == {
                    "sum(available)": "13000",
                    "USDT@treasury": "10000",
                    "USDT@spot": "3000",
                }

                [message] = await chat.wait_for(1)  # a group of one reads as the alert
                body = message.json()
                assert body["text"] == "🔴 FIRING critical: treasury-floor"
                [attachment] = body["attachments"]
                assert attachment["text"] == "USDT across the wallets: sum(available)=13000"
                facts = {f["title"]: f["value"] for f in attachment["fields"]}
                assert facts.items() >= {
                    ("Group", "asset=USDT"), ("USDT@treasury", "10000"), ("USDT@spot", "3000")
                }  # fmt: skip

                # spot cannot be read now; treasury is topped up. The sum is not known, so
                # the alert must not resolve until spot answers again.
                state.accounts["spot"].faults.append(
                    Fault(FaultKind.STATUS, times=None, status=503)
                )
                failed_from = state.accounts["spot"].requests + 1
                set_fields(state, "treasury", "USDT", available="50000")
                await state.requests("spot", failed_from)
                # Several ticks' worth of treasury polls: a resolve would have gone out.
                await state.requests("treasury", state.accounts["treasury"].requests + 6)
                view = next(v for v in daemon.engine.groups.views(time.time()))
                assert (view.result, view.reason) == (None, "spot: last poll failed")
                assert view.values == {"sum(available)": 53000}
                cleared_at = time.time()
                state.accounts["spot"].faults.clear()

                done = await log.wait_for(lambda a: a.event == "resolved")
                assert done.observed_at.timestamp() >= cleared_at, "resolved on a failed poll"
                assert done.fingerprint == fired.fingerprint
                await chat.wait_for(2)
                cleared = [await sub.get() for _ in range(2)]
                assert [(m.topic.value, m.payload) for m in cleared][1] == (ACTIVE, b"")
                assert isinstance(cleared[0].payload, bytes)
                resolved = json.loads(cleared[0].payload)
                assert schema_errors(resolved) == [], resolved
                # what people saw when it fired; the values are those of the resolve
                assert resolved["summary"] == "USDT across the wallets: sum(available)=13000"
                assert resolved["values"]["sum(available)"] == "53000"
                status, gone = await get(http, resolved["url"])
                assert (status, gone["fingerprint"]) == (404, fired.fingerprint)
                async with subscribe(broker.port, ["balwatch/active/#"]) as late:
                    assert await late.drain() == []  # nothing left showing as firing
    finally:
        await sim.stop()
