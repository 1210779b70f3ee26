"""On call, end to end: silences, inhibition and dead letters with a running daemon.

The real daemon and its SQLite state, a real simulator, real webhook receivers and a real
Mosquitto; silences and dead letters changed by ``balwatch`` in a child process beside it,
as a person on call would. Waits are on requests, messages and committed alerts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from balwatch.silence import new_silence
from balwatch.state.sqlite import SqliteStateStore
from tests.brokers import Mosquitto, free_port, subscribe
from tests.commands import run_cli
from tests.conftest import StartSim
from tests.daemons import AlertLog, running
from tests.test_daemon import bitso, bitso_account, set_fields, write_config
from tests.waiting import within
from tests.webhooks import Recorded, Reply, WebhookReceiver

LOW = """\
rules:
  - name: low-available
    select: {assets: [USDT]}
    when: available < 5000
    for: 0s
"""


def docs(requests: list[Recorded]) -> list[dict[str, Any]]:
    return [r.json() for r in requests]


def seen(requests: list[Recorded]) -> list[tuple[str, str]]:
    return [(d["account"], d["event"]) for d in docs(requests)]


async def made_state(state_dir: Path) -> None:
    """What a first run of the daemon leaves: the CLI writes only where a daemon looks."""
    async with SqliteStateStore(state_dir):
        pass


def config(tmp_path: Path, sim_url: str, sinks: str, rules: str = LOW, **more: str) -> Path:
    (tmp_path / "rules.yaml").write_text(rules)
    accounts = "".join(bitso(name, sim_url, key=f"k-{name}") for name in ("a", "b"))
    path = write_config(
        tmp_path / "balwatch.yaml", state_dir=tmp_path / "state", rules=tmp_path / "rules.yaml",
        accounts=accounts, sinks=sinks,
    )  # fmt: skip
    with path.open("a") as file:
        for key, value in more.items():
            file.write(f"{key}: {value}\n")
    return path


def hook_sink(hook: WebhookReceiver) -> str:
    return f"  - {{name: hook, type: webhook, url: '{hook.url}'}}\n"


def two_accounts(**usdt: str) -> tuple[Any, Any]:
    return bitso_account("a", key="k-a", **usdt), bitso_account("b", key="k-b", **usdt)


async def test_a_silence_added_from_the_cli_stops_the_next_notification_within_a_second(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(*two_accounts(available="3000"))
    rules = LOW + "    repeat: 1s\n"
    async with WebhookReceiver() as hook:
        path = config(tmp_path, sim.url, hook_sink(hook), rules)
        alerts = AlertLog()
        async with running(path, alerts) as daemon:
            await alerts.event("low-available", "a", "repeat")
            code, out, err = await run_cli(
                "silence", "add", "-c", str(path), "--match", "account=a", "--for", "1h",
                "--comment", "Bitso maintenance", "--author", "ana",
            )  # fmt: skip
            added = time.monotonic()
            assert code == 0, err
            assert out.startswith("silence ") and "account=a" in out
            # b keeps repeating: wait until two of its repeats came after the second.
            while not [r for r in hook.requests if r.json()["account"] == "b" and r.at > added + 2]:
                await hook.wait_for(len(hook.requests) + 1)
            late = [
                r.at - added for r in hook.requests if r.json()["account"] == "a" and r.at > added
            ]
            assert all(after < 1.0 for after in late), late
            # Still evaluated and listed, silenced: the repeats were committed, sent nowhere.
            assert [a for a in alerts.alerts if a.account == "a" and a.event == "repeat"]
            [listed] = [s for s in daemon.alerts() if s["account"] == "a"]
            assert listed["silenced_by"] == [out.split()[1]]


async def test_an_alert_still_firing_when_its_silence_ends_is_notified_then_and_resolves(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """The silence was added while no daemon ran: the daemon honours it from its start."""
    sim = await start_sim(*two_accounts(available="3000"))
    async with WebhookReceiver() as hook:
        path = config(tmp_path, sim.url, hook_sink(hook))
        await made_state(tmp_path / "state")
        code, _out, err = await run_cli(
            "silence", "add", "-c", str(path), "--match", "account=a", "--for", "3s",
            "--comment", "short one",
        )  # fmt: skip
        assert code == 0, err
        ends = time.time() + 3
        alerts = AlertLog()
        async with running(path, alerts):
            await alerts.event("low-available", "a", "firing")
            [first] = await hook.wait_for(1)
            assert seen([first]) == [("b", "firing")]
            [_, late] = await hook.wait_for(2)
            assert seen([late]) == [("a", "firing")]
            assert time.time() >= ends - 0.01
            set_fields(sim.state, "a", "USDT", available="9000")
            set_fields(sim.state, "b", "USDT", available="9000")
            every = await hook.wait_for(4)
    assert sorted(seen(every)) == [
        ("a", "firing"), ("a", "resolved"), ("b", "firing"), ("b", "resolved")
    ]  # fmt: skip


async def test_silenced_firings_never_reach_mqtt_and_resolves_clear_what_did(
    tmp_path: Path, start_sim: StartSim
) -> None:
    """a is silenced from the start: nothing of it is published, its resolve neither. b
    fired before its silence began: its resolve still clears the retained active/ topic."""
    sim = await start_sim(*two_accounts(available="3000"))
    async with Mosquitto() as broker, subscribe(broker.port, ["balwatch/#"]) as mqtt:
        sink = f"  - {{name: mqtt, type: mqtt, url: 'mqtt://127.0.0.1:{broker.port}'}}\n"
        path = config(tmp_path, sim.url, sink)
        await made_state(tmp_path / "state")
        code, _, err = await run_cli(
            "silence", "add", "-c", str(path), "--match", "account=a", "--for", "1h",
            "--comment", "a is being moved",
        )  # fmt: skip
        assert code == 0, err
        alerts = AlertLog()
        async with running(path, alerts) as daemon:
            await alerts.event("low-available", "a", "firing")
            await alerts.event("low-available", "b", "firing")
            await daemon.add_silence(
                new_silence(["account=b"], starts_at=time.time(), ends_at=time.time() + 60,
                            author="ana", comment="b too", now=time.time())
            )  # fmt: skip
            mark = len(alerts.alerts)
            set_fields(sim.state, "a", "USDT", available="9000")
            set_fields(sim.state, "b", "USDT", available="9000")
            await alerts.event("low-available", "a", "resolved", after=mark)
            await alerts.event("low-available", "b", "resolved", after=mark)
        published = await mqtt.drain()
        async with subscribe(broker.port, ["balwatch/active/#"]) as late:
            retained = await late.drain()
    topics = [m.topic.value for m in published if "/a/" in m.topic.value]
    assert topics == [], topics
    events = [
        (m.topic.value.split("/")[1], json.loads(m.payload)["event"] if m.payload else "cleared")
        for m in published
        if "/b/" in m.topic.value and isinstance(m.payload, bytes)
    ]
    assert ("alerts", "resolved") in events and ("active", "cleared") in events, events
    assert retained == []


INHIBIT_RULES = """\
rules:
  - name: low-mxn
    select: {assets: [MXN]}
    when: available < 50000
    for: 0s
  - name: low-usdt
    select: {assets: [USDT]}
    when: available < 5000
    for: 0s
"""
INHIBIT = "[{source: ['rule=low-mxn'], target: ['rule=low-usdt'], equal: [account]}]"


async def test_inhibition_mutes_the_target_and_notifies_it_when_the_source_ends(
    tmp_path: Path, start_sim: StartSim
) -> None:
    treasury = bitso_account("a", key="k-a", available="3000")
    treasury.balances["bitso"]["MXN"].update(available="100")
    sim = await start_sim(treasury, bitso_account("b", key="k-b"))
    async with WebhookReceiver() as hook:
        path = config(tmp_path, sim.url, hook_sink(hook), INHIBIT_RULES, inhibit=INHIBIT)
        alerts = AlertLog()
        async with running(path, alerts) as daemon:
            await alerts.event("low-usdt", "a", "firing")
            await alerts.event("low-mxn", "a", "firing")
            [first] = docs(await hook.wait_for(1))
            assert first["rule"] == "low-mxn"
            [usdt] = [s for s in daemon.alerts() if s["rule"] == "low-usdt"]
            assert usdt["inhibited_by"] == [first["fingerprint"]]
            set_fields(sim.state, "a", "MXN", available="90000")
            got = docs(await hook.wait_for(3))
            assert [(d["rule"], d["event"]) for d in got[1:]] in (
                [("low-mxn", "resolved"), ("low-usdt", "firing")],
                [("low-usdt", "firing"), ("low-mxn", "resolved")],
            )
            set_fields(sim.state, "a", "USDT", available="9000")
            [*_, last] = docs(await hook.wait_for(4))
            assert (last["rule"], last["event"]) == ("low-usdt", "resolved")


async def test_a_restart_keeps_silences_and_who_got_each_firing(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(*two_accounts(available="3000"))
    async with WebhookReceiver() as hook:
        path = config(tmp_path, sim.url, hook_sink(hook))
        await made_state(tmp_path / "state")
        code, out, err = await run_cli(
            "silence", "add", "-c", str(path), "--match", "account=a", "--for", "1h",
            "--comment", "until we say",
        )  # fmt: skip
        assert code == 0, err
        silence_id = out.split()[1]
        first = AlertLog()
        async with running(path, first):
            await first.event("low-available", "a", "firing")
            await hook.wait_for(1)
        assert seen(hook.requests) == [("b", "firing")]
        second = AlertLog()
        async with running(path, second) as daemon:
            # Nothing fires again, and a is still silenced.
            assert [s["silenced_by"] for s in daemon.alerts() if s["account"] == "a"] == [
                [silence_id]
            ]
            code, out, err = await run_cli("silence", "expire", "-c", str(path), silence_id)
            assert code == 0 and f"silence {silence_id} ended" in out, err
            [_, late] = await hook.wait_for(2)  # a is owed its firing: sent once, now
            assert seen([late]) == [("a", "firing")]
            set_fields(sim.state, "a", "USDT", available="9000")
            set_fields(sim.state, "b", "USDT", available="9000")
            await hook.wait_for(4)
        code, out, _ = await run_cli("silence", "list", "-c", str(path), "--all", "--json")
        [listed] = json.loads(out)
    assert sorted(seen(hook.requests)) == [
        ("a", "firing"), ("a", "resolved"), ("b", "firing"), ("b", "resolved")
    ]  # fmt: skip
    assert (listed["id"], listed["state"], listed["author"]) == (
        silence_id,
        "expired",
        listed["author"],
    )


async def test_a_dead_letter_is_listed_with_the_receivers_error_and_retried_after_a_fix(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(
        bitso_account("a", key="k-a", available="3000"), bitso_account("b", key="k-b")
    )
    gone = Reply(404, body=b"no such hook")
    async with WebhookReceiver(gone) as hook:
        path = config(tmp_path, sim.url, hook_sink(hook).replace("/hook", "/hook-token-s3cr3t"))
        alerts = AlertLog()
        async with running(path, alerts) as daemon:
            [refused] = await hook.wait_for(1)
            await within(daemon.outbox.wait_settled(), "the refused alert to be dead-lettered")
            code, out, err = await run_cli("outbox", "list", "-c", str(path), "--dead", "--json")
            assert code == 0, err
            [dead] = json.loads(out)
            assert (dead["sink"], dead["status"], dead["alert"]["id"]) == (
                "hook", "dead", refused.json()["id"]
            )  # fmt: skip
            assert "404" in dead["error"] and "s3cr3t" not in out
            # The receiver is fixed (it answers 200 from now on): send it again.
            code, out, err = await run_cli("outbox", "retry", "-c", str(path), "--all")
            assert code == 0 and out.startswith("1 dead letters pending again"), err
            [_, again] = await hook.wait_for(2)
            assert again.json()["id"] == refused.json()["id"]
            code, out, _ = await run_cli("outbox", "list", "-c", str(path))
            assert out.strip() == "the outbox is empty"


async def test_silences_and_dead_letters_over_the_api_behind_its_token(
    tmp_path: Path, start_sim: StartSim
) -> None:
    sim = await start_sim(*two_accounts(available="3000"))
    port = free_port()
    async with WebhookReceiver() as hook:
        path = config(
            tmp_path, sim.url, hook_sink(hook),
            http=f"{{listen: '127.0.0.1:{port}', token: t0ken}}",
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}/api"
        auth = {"Authorization": "Bearer t0ken"}
        alerts = AlertLog()
        async with running(path, alerts), aiohttp.ClientSession() as http:
            body = {"matchers": ["account=a"], "for": "1h", "author": "ana", "comment": "moving"}
            async with http.post(f"{base}/silences", json=body) as answer:
                assert answer.status == 401
            for bad, says in (
                ({**body, "matchers": ["account=~("]}, "invalid regular expression"),
                ({**body, "for": "2 hours"}, "expected a duration"),
                ({k: v for k, v in body.items() if k != "author"}, '"author"'),
                ({**body, "starts_at": "2026-01-01T00:00:00"}, "with a zone"),
                ({**body, "colour": "red"}, "unknown key 'colour'"),
            ):
                async with http.post(f"{base}/silences", json=bad, headers=auth) as answer:
                    assert answer.status == 400, bad
                    assert says in (await answer.json())["error"]
            async with http.get(f"{base}/silences", headers=auth) as answer:
                assert await answer.json() == []  # nothing half-written
            async with http.post(f"{base}/silences", json=body, headers=auth) as answer:
                assert answer.status == 201
                made = await answer.json()
            assert (made["author"], made["state"], made["matchers"]) == (
                "ana",
                "active",
                ["account=a"],
            )
            await alerts.event("low-available", "a", "firing")
            async with http.get(f"{base}/alerts", headers=auth) as answer:
                listed = {s["account"]: s["silenced_by"] for s in await answer.json()}
            assert listed == {"a": [made["id"]], "b": []}
            async with http.delete(f"{base}/silences/{made['id']}", headers=auth) as answer:
                assert (await answer.json())["state"] == "expired"
            async with http.delete(f"{base}/silences/nope", headers=auth) as answer:
                assert answer.status == 404
            async with http.get(f"{base}/outbox?dead=true", headers=auth) as answer:
                assert await answer.json() == []
            async with http.post(f"{base}/outbox/retry", json={"ids": "x"}, headers=auth) as answer:
                assert answer.status == 400
            async with http.post(
                f"{base}/outbox/retry", json={"all": True}, headers=auth
            ) as answer:
                assert await answer.json() == {"retried": [], "stale": [], "unknown": []}
            async with http.delete(f"{base}/outbox/7", headers=auth) as answer:
                assert answer.status == 404
            await hook.wait_for(2)  # a, owed its firing since the silence ended


async def test_bad_input_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "balwatch.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    await made_state(tmp_path / "state")
    for args, says in (
        (("--match", "account=~(", "--for", "1h"), "invalid regular expression"),
        (("--match", "account=a", "--for", "2 weeks"), "--for: expected a duration"),
        (("--match", "account=~.*", "--for", "1h"), "would mute every alert"),
        (("--match", "account=a", "--until", "noon"), "--until: expected an ISO-8601 time"),
    ):
        code, out, err = await run_cli("silence", "add", "-c", str(path), *args, "--comment", "c")
        assert (code, out) == (2, ""), (args, err)
        assert err.count("\n") == 1 and says in err, err
    code, _, err = await run_cli("silence", "expire", "-c", str(path), "nope")
    assert code == 2 and "no silence 'nope'" in err
    code, out, _ = await run_cli("silence", "list", "-c", str(path), "--all")
    assert (code, out.strip()) == (0, "no silences")


async def test_the_cli_refuses_a_state_dir_no_daemon_used(tmp_path: Path) -> None:
    """Under systemd state_dir defaults to $STATE_DIRECTORY: run without it, the CLI would
    silence a database the daemon never reads."""
    path = tmp_path / "balwatch.yaml"
    path.write_text("accounts: []\ncredentials_only_the_service_has: ${cred:x}\n")
    code, _, err = await run_cli(
        "silence", "list", "-c", str(path), env={"STATE_DIRECTORY": str(tmp_path / "nowhere")}
    )
    assert code == 1 and "no state database here" in err, err
