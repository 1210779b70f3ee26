"""``balwatch run`` SIGKILLed with a group message sent but not acknowledged: the next run
sends that same group message exactly once more (not merged with what came after it), and
nothing of it again after that.

Real processes (tests/commands.py), the Bitso simulator, real SQLite, and a Slack that
answers as Slack does (tests/chatservices.py). Nothing sleeps: each step waits for what it
expects with a timeout.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from balwatch.simulator.state import SimAccount
from tests.chatservices import ChatService
from tests.commands import balwatch_run
from tests.conftest import StartSim
from tests.webhooks import Reply

ASSETS = [f"T{n:02d}" for n in range(50)]
ENV = {"BW_BITSO_KEY": "crash-bitso-key", "BW_BITSO_SECRET": "crash-bitso-secret-0042"}
RULES = """\
rules:
  - name: low-available
    when: available < 5000
    clear: available >= 6000
    for: 0s
    severity: critical
    summary: "{account} {asset}: only {available} available"
"""


def config(tmp_path: Path, sim_url: str, slack_url: str) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    path = tmp_path / "balwatch.yaml"
    path.write_text(
        f"""\
state_dir: {tmp_path / "state"}
instance: crash-test
rules: [rules.yaml]
log: {{format: json, level: info}}
defaults: {{poll_interval: 300ms, timeout: 2s}}
accounts:
  - name: bitso-storm
    exchange: bitso
    base_url: {sim_url}
    credentials: {{api_key: "${{BW_BITSO_KEY}}", api_secret: "${{BW_BITSO_SECRET}}"}}
sinks:
  - name: ops-slack
    type: webhook
    format: slack
    url: {slack_url}
    group_wait: 1s
    group_interval: 1s
"""
    )
    return path


def listed(body: bytes) -> list[str]:
    """The assets a Slack message lists."""
    doc = json.loads(body)
    text = "\n".join(a["text"] for a in doc["attachments"])
    return re.findall(r"^🔴 bitso-storm (T\d\d): ", text, re.MULTILINE)


async def test_sigkill_mid_group_sends_that_group_exactly_once_more(
    tmp_path: Path, start_sim: StartSim
) -> None:
    account = SimAccount(
        "bitso-storm",
        "bitso",
        api_key=ENV["BW_BITSO_KEY"],
        api_secret=ENV["BW_BITSO_SECRET"],
        balances={"bitso": {asset: {"available": "100"} for asset in ASSETS}},
    )
    sim = await start_sim(account)
    async with ChatService("slack") as slack:
        slack.script([Reply(hang=True)])  # the message arrives; its answer never does
        path = config(tmp_path, sim.url, slack.url)
        async with balwatch_run(path, ENV) as first:
            [cut] = await slack.wait_for(1, timeout=30)
            # One more of the group, committed after that message went out.
            account.balances["bitso"]["T50"] = {"available": "100"}
            await first.wait_output('"asset": "T50"')
            first.proc.kill()  # SIGKILL: no drain, no acknowledgement written
            await first.wait()

        async with balwatch_run(path, ENV) as second:
            again, late = await slack.wait_accepted(2, timeout=30)
            # One alert resolves: it goes in the group's next message, alone, which shows
            # that nothing of the first message was left to send again.
            account.balances["bitso"]["T07"]["available"] = "7000"
            *_, resolved = await slack.wait_accepted(3, timeout=30)
            second.signal(signal.SIGTERM)
            assert await second.wait() == 0

    # The same message, whole, and no more than it: T50 came after it and goes on its own.
    assert cut.request.body == slack.arrivals[1].request.body
    assert listed(cut.request.body) == ASSETS
    assert json.loads(cut.request.body)["text"] == "🔴 FIRING 50: low-available"
    fields = {f["title"]: f["value"] for f in late["attachments"][0]["fields"]}
    assert (late["text"], fields["Asset"]) == ("🔴 FIRING critical: low-available", "T50")
    assert resolved["text"] == "✅ RESOLVED critical: low-available"  # one alert: its card
    fields = {f["title"]: f["value"] for f in resolved["attachments"][0]["fields"]}
    assert (fields["Account"], fields["Asset"]) == ("bitso-storm", "T07")
    assert len(slack.arrivals) == 4
    assert again == json.loads(cut.request.body)
