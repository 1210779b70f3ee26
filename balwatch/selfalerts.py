"""Alerts about balwatch itself: a rejected reload, a source refusing our credentials.

They travel the same path as rule alerts (outbox, routing, sinks), so the people who
watch balances also learn when balwatch cannot watch them. As for rule alerts, the resolve
carries the summary the alert fired with. Their text can quote a problem or an error;
configured secrets in it are masked before the alert exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from balwatch import redact
from balwatch.alert import Alert, Severity, fingerprint, new_id
from balwatch.rules.engine import AlertState

SELF = "balwatch"


class SelfAlerts:
    """Fires once per (rule, account) while a problem lasts; resolves when it ends.

    What is firing is saved with the alerts (:meth:`firing`) and read back at start
    (:meth:`restore`), so a restart neither fires one again nor forgets to resolve it.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._firing: dict[tuple[str, str], Alert] = {}

    def firing(self) -> list[Alert]:
        """The self-alerts firing now: what the state database keeps."""
        return list(self._firing.values())

    def states(self) -> list[AlertState]:
        """The self-alerts firing now, in the form the HTTP API lists rule alerts in."""
        return [
            AlertState(
                fingerprint=alert.fingerprint,
                rule=alert.rule,
                when=alert.expression,
                clear=None,
                severity=alert.severity,
                account=alert.account,
                exchange=alert.exchange,
                venue=alert.venue,
                asset=alert.asset,
                phase="firing",
                since=alert.started_at.timestamp(),
                last_notified=alert.observed_at.timestamp(),
                values=dict(alert.values),
                labels=dict(alert.labels),
                notify=alert.notify,
                summary=alert.summary,
                description=alert.description,
            )
            for alert in self._firing.values()
        ]

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Take back what a previous run left firing."""
        self._firing = {(a.rule, a.account or ""): a for a in alerts}

    def accounts(self, rule: str) -> list[str]:
        """The accounts ``rule`` is firing for."""
        return [account for name, account in self._firing if name == rule]

    def fire(
        self, rule: str, account: str, exchange: str, summary: str, severity: Severity
    ) -> list[Alert]:
        if (rule, account) in self._firing:
            return []
        now = datetime.fromtimestamp(self._clock(), UTC)
        alert = Alert(
            fingerprint=fingerprint(rule, account, None, None),
            event="firing",
            rule=rule,
            severity=severity,
            account=account,
            exchange=exchange,
            venue=None,
            asset=None,
            summary=redact.installed().text(summary),
            description="",
            labels={"source": SELF},
            expression="",
            values={},
            started_at=now,
            observed_at=now,
        )
        self._firing[(rule, account)] = alert
        return [alert]

    def resolve(self, rule: str, account: str) -> list[Alert]:
        firing = self._firing.pop((rule, account), None)
        if firing is None:
            return []
        now = datetime.fromtimestamp(self._clock(), UTC)
        return [
            dataclasses.replace(
                firing,
                id=new_id(),
                event="resolved",
                observed_at=now,
                resolved_at=now,
            )
        ]
