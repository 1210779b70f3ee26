"""Alert JSON: the exact documented document, and the round trip for the outbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from balwatch.alert import (
    JSON_KEYS,
    JSON_SCHEMA,
    Alert,
    fingerprint,
    group_fingerprint,
    iso_z,
    placed,
)
from tests.alertschema import schema_errors

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def design_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "id": "0f8e2c",
        "fingerprint": fingerprint("low-available", "bitso-treasury", "bitso", "USDT"),
        "event": "firing",
        "rule": "low-available",
        "severity": "critical",
        "account": "bitso-treasury",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "summary": "bitso-treasury USDT: only 4210.55 available",
        "description": "Hot wallet running low",
        "labels": {"team": "treasury"},
        "expression": "available < 5000",
        "values": {"available": Decimal("4210.55")},
        "started_at": T0,
        "observed_at": T0 + timedelta(minutes=2),
        "notify": ("ops-mqtt",),
    }
    fields.update(changes)
    return Alert(**fields)


def test_json_is_exactly_the_design_document() -> None:
    alert = design_alert()
    assert alert.to_json() == {
        "version": 1,
        "id": "0f8e2c",
        "fingerprint": alert.fingerprint,
        "status": "firing",
        "event": "firing",
        "rule": "low-available",
        "severity": "critical",
        "account": "bitso-treasury",
        "exchange": "bitso",
        "venue": "bitso",
        "asset": "USDT",
        "summary": "bitso-treasury USDT: only 4210.55 available",
        "description": "Hot wallet running low",
        "labels": {"team": "treasury"},
        "expression": "available < 5000",
        "values": {"available": "4210.55"},
        "started_at": "2026-11-25T10:00:00Z",
        "resolved_at": None,
        "observed_at": "2026-11-25T10:02:00Z",
        "instance": "",
        "url": None,
        "group": None,
    }
    assert list(alert.to_json()) == list(JSON_KEYS)  # same key order as the design
    json.dumps(alert.to_json())  # serializable as is


def test_resolved_and_account_scope() -> None:
    end = T0 + timedelta(minutes=9)
    alert = design_alert(
        event="resolved",
        venue=None,
        asset=None,
        fingerprint=fingerprint("stale", "a", None, None),
        resolved_at=end,
        values={"age": Decimal("1E+1")},
    )
    doc = alert.to_json()
    assert (doc["status"], doc["event"]) == ("resolved", "resolved")
    assert doc["venue"] is None and doc["asset"] is None
    assert doc["resolved_at"] == "2026-11-25T10:09:00Z"
    assert doc["values"] == {"age": "10"}  # decimal strings, never exponent notation


def test_repeat_is_still_firing() -> None:
    assert design_alert(event="repeat").to_json()["status"] == "firing"


def test_round_trip() -> None:
    alert = design_alert(observed_at=T0 + timedelta(seconds=1.25))
    doc = json.loads(json.dumps(alert.to_json()))
    assert Alert.from_json(doc, notify=("ops-mqtt",)) == alert
    resolved = design_alert(event="resolved", resolved_at=T0 + timedelta(hours=1), asset=None)
    assert Alert.from_json(resolved.to_json(), notify=("ops-mqtt",)) == resolved
    assert Alert.from_json(alert.to_json()).notify is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"status": "resolved"}, "does not fit"),
        ({"event": "pending"}, "event"),
        ({"severity": "fatal"}, "severity"),
        ({"rule": 3}, "rule must be a string"),
        ({"labels": {"a": 1}}, "labels must map"),
        ({"values": {"total": "lots"}}, "not a decimal"),
        ({"values": {"total": "NaN"}}, "not finite"),
        ({"started_at": "2026-11-25T10:00:00"}, "ending in Z"),
        ({"started_at": "yesterdayZ"}, "not an ISO-8601"),
        ({"resolved_at": "2026-11-25T10:00:00Z"}, "resolved_at"),
    ],
)
def test_from_json_rejects_bad_documents(change: dict[str, object], message: str) -> None:
    doc = design_alert().to_json() | change
    with pytest.raises(ValueError, match=message):
        Alert.from_json(doc)


def test_from_json_names_missing_keys() -> None:
    doc = design_alert().to_json()
    del doc["expression"], doc["values"]
    with pytest.raises(ValueError, match="lacks expression, values"):
        Alert.from_json(doc)


def test_ids_are_fresh_per_notification() -> None:
    alert = design_alert()
    fields = {k: getattr(alert, k) for k in alert.__dataclass_fields__ if k != "id"}
    first, second = Alert(**fields), Alert(**fields)
    assert first.id != second.id
    assert len(first.id) == 32 and int(first.id, 16) >= 0


def test_fingerprint_is_stable_and_unambiguous() -> None:
    # Pinned: a change would orphan persisted states and retained MQTT topics.
    assert fingerprint("low-available", "bitso-treasury", "bitso", "USDT") == "72dd85cabc4564d0"
    assert fingerprint("a", "b", None, None) != fingerprint("a", "b", "", "")
    assert fingerprint("a-b", "c", "v", "x") != fingerprint("a", "b-c", "v", "x")
    assert fingerprint("a", "b", "v", "x") != fingerprint("a", "b", "x", "v")


def test_times_must_be_aware_and_render_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        design_alert(started_at=datetime(2026, 1, 1))
    plus2 = timezone(timedelta(hours=2))
    assert iso_z(datetime(2026, 1, 1, 12, 0, tzinfo=plus2)) == "2026-01-01T10:00:00Z"
    assert iso_z(datetime(2026, 1, 1, 12, 0, 0, 500, tzinfo=UTC)) == "2026-01-01T12:00:00.000500Z"


def test_resolved_at_only_for_resolved() -> None:
    with pytest.raises(ValueError, match="resolved_at"):
        design_alert(event="resolved")
    with pytest.raises(ValueError, match="resolved_at"):
        design_alert(resolved_at=T0)
    with pytest.raises(ValueError, match="event"):
        design_alert(event="pending")


def test_placed_names_the_installation_and_links_back() -> None:
    alert = placed(design_alert(), "treasury-prod", "https://balwatch.example/ops")
    doc = alert.to_json()
    assert doc["instance"] == "treasury-prod"
    assert doc["url"] == f"https://balwatch.example/ops/api/alerts/{alert.fingerprint}"
    assert placed(alert, "other", None).to_json()["url"] is None
    assert Alert.from_json(doc, notify=("ops-mqtt",)) == alert


def test_documents_written_before_instance_and_url_still_load() -> None:
    """Outbox rows and saved self-alerts of an older balwatch lack the two keys."""
    doc = design_alert().to_json()
    del doc["instance"], doc["url"]
    old = Alert.from_json(doc)
    assert (old.instance, old.url) == ("", None)


def test_the_schema_lists_every_key_and_accepts_what_balwatch_sends() -> None:
    assert list(JSON_SCHEMA["properties"]) == list(JSON_KEYS) == JSON_SCHEMA["required"]  # type: ignore[index]
    firing = placed(design_alert(), "treasury-prod", "https://balwatch.example")
    resolved = placed(
        design_alert(event="resolved", resolved_at=T0 + timedelta(hours=1), venue=None, asset=None),
        "treasury-prod",
        None,
    )
    for alert in (firing, resolved, placed(design_alert(event="repeat"), "h", None)):
        assert schema_errors(json.loads(json.dumps(alert.to_json()))) == []


def group_alert(**changes: Any) -> Alert:
    """A portfolio rule's alert: ``group_by: [asset]``, no account or exchange."""
    fields: dict[str, Any] = {
        "fingerprint": group_fingerprint("usdt-floor", {"asset": "USDT"}),
        "rule": "usdt-floor",
        "account": None,
        "exchange": None,
        "venue": None,
        "group": {"asset": "USDT"},
        "values": {"sum(available)": Decimal(40000), "USDT@bitso-hot": Decimal(30000)},
    }
    return design_alert(**{**fields, **changes})


def test_a_groups_alert_has_its_group_and_nulls_for_what_it_lacks() -> None:
    doc = placed(group_alert(), "treasury-prod", None).to_json()
    assert (doc["group"], doc["account"], doc["exchange"], doc["venue"], doc["asset"]) == (
        {"asset": "USDT"},
        None,
        None,
        None,
        "USDT",
    )
    assert list(doc) == list(JSON_KEYS)
    assert Alert.from_json(json.loads(json.dumps(doc)), notify=("ops-mqtt",)).group == {
        "asset": "USDT"
    }
    resolved = group_alert(event="resolved", resolved_at=T0 + timedelta(hours=1))
    for alert in (group_alert(), resolved, group_alert(group={})):
        assert schema_errors(placed(alert, "h", "https://b.example").to_json()) == []
    # only a group's alert may lack an account or an exchange
    with pytest.raises(ValueError, match="only the alert of a group"):
        design_alert(account=None)
    row = placed(design_alert(), "h", None).to_json()
    for key in ("account", "exchange"):
        assert any(e.startswith(key) for e in schema_errors({**row, key: None})), key
    with pytest.raises(ValueError, match="only the alert of a group"):
        Alert.from_json({**row, "exchange": None})


def test_documents_written_before_group_still_load_as_row_alerts() -> None:
    doc = design_alert().to_json()
    del doc["group"]
    assert Alert.from_json(doc).group is None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"status": "resolved"}, "status"),
        ({"resolved_at": "2026-11-25T10:00:00Z"}, "resolved_at"),
        ({"values": {"total": 4210.55}}, "values/total"),
        ({"values": {"total": "1E+3"}}, "values/total"),
        ({"started_at": "2026-11-25 10:00:00"}, "started_at"),
        ({"fingerprint": "low-available"}, "fingerprint"),
        ({"instance": ""}, "instance"),
        ({"severity": "fatal"}, "severity"),
        ({"mqtt_retained_only": "set_active"}, "mqtt_retained_only"),
        ({"group": ["asset", "USDT"]}, "group"),
        ({"group": {"asset": 1}}, "group"),
    ],
)
def test_the_schema_refuses_what_balwatch_never_sends(
    change: dict[str, object], where: str
) -> None:
    doc = placed(design_alert(), "treasury-prod", None).to_json() | change
    errors = schema_errors(doc)
    assert any(error.startswith(where) for error in errors), errors
