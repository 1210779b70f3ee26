"""balwatch send-test delivers a test alert through the named sink and says how it went."""

from __future__ import annotations

from pathlib import Path

from tests.commands import run_cli
from tests.webhooks import Reply, WebhookReceiver


async def send_test(config: Path, sink: str) -> tuple[int, str, str]:
    return await run_cli("send-test", "-c", str(config), "--sink", sink, "--timeout", "10")


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "balwatch.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "accounts: []\n"
        f"sinks:\n  - {{name: hook, type: webhook, url: '{url}/hooks/secret-token-123'}}\n"
    )
    return path


async def test_delivered_test_alert_reaches_the_receiver(tmp_path: Path) -> None:
    async with WebhookReceiver() as receiver:
        code, out, err = await send_test(config(tmp_path, receiver.url), "hook")
        requests = list(receiver.requests)
    assert code == 0, err
    assert "hook: delivered test alert" in out
    assert requests and requests[0].json()["event"] == "firing"
    assert "secret-token-123" not in out + err


async def test_refused_test_alert_is_reported_with_exit_4(tmp_path: Path) -> None:
    async with WebhookReceiver(default=Reply(403)) as receiver:
        code, out, err = await send_test(config(tmp_path, receiver.url), "hook")
    assert code == 4
    assert "hook: NOT delivered" in err and "403" in err
    assert "secret-token-123" not in out + err


async def test_unknown_sink_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await send_test(config(tmp_path, "http://127.0.0.1:9"), "nope")
    assert code == 1 and "nope" in err
