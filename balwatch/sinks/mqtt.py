"""MQTT sink: alert events, retained active alerts and a retained status on one connection.

Topics, under the configured prefix (``-`` for a segment an alert does not have: venue and
asset of an account-scope alert):

- ``alerts/<rule>/<account>/<venue>/<asset>``: every notification, not retained;
- ``active/<rule>/<account>/<venue>/<asset>``: the firing alert, retained; an empty retained
  payload on resolve clears it, so a bot that connects late sees exactly what fires now
  (with ``send_resolved: false`` the resolve still clears it, only the event is left out).
  No expiry unless the sink sets ``active_expiry`` (MQTT 5);
- ``status``: retained ``online`` after every (re)connect, ``offline`` as the will and on
  a clean stop (a will is only sent on an unclean disconnect). A replica (``instance``
  given: several daemons on one PostgreSQL database) has ``status/<instance>`` instead, so
  one replica's ``offline`` never hides that the others are online.

The venue segment is layout version 2 (:data:`TOPIC_LAYOUT`); version 1 had none, so one
account holding an asset on two venues shared an ``active/`` topic. Outbox documents with
the :data:`RETAINED_ONLY` key are not notifications but upkeep of retained topics across
such a change (see :mod:`balwatch.topiclayout`): they publish on ``active/`` only.

An alert of a group (a rule with ``group_by``) fills the segments its group has and puts
``-`` in the others (``alerts/usdt-floor/-/-/USDT`` for ``group_by: [asset]``). A group
keyed by more than the segments (an exchange, a label) adds one level after them,
``key=value`` pairs sorted and joined by ``,`` (``.../-/-/-/desk=treasury,exchange=bitso``),
so two groups never share a retained ``active/`` topic.

One background task owns the connection and reconnects with backoff; :meth:`send` never
connects, it publishes on the live connection or fails at once as retryable, so an outage
costs the outbox a retry instead of a hung delivery slot. Many sends may be in flight on
the one connection: each publish resolves its own future when the broker acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import re
import secrets
import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from balwatch.config.model import MqttSinkConfig, redact_url
from balwatch.sink import AlertDoc, DeliveryError, Sink
from balwatch.sinks.formats import encode_alert

log = structlog.get_logger(__name__)

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
# The segment of a topic for what an alert does not have (venue and asset at account scope,
# what a group is not keyed by).
NO_SEGMENT: Final = "-"
# The alert keys that are topic segments after the rule, in order.
SEGMENTS: Final = ("account", "venue", "asset")
TOPIC_LAYOUT: Final = 2
# Key of an upkeep document, and its two kinds: retain the alert beside the key on its
# active/ topic (no event), or clear the alert's active/ topic of layout version 1.
RETAINED_ONLY: Final = "mqtt_retained_only"
SET_ACTIVE: Final = "set_active"
CLEAR_V1_ACTIVE: Final = "clear_v1_active"
# '/', '+' and '#' are topic syntax; control characters and lone surrogates are not
# valid (or not visible) in a topic name.
# Noncharacters (U+FDD0-FDEF and the last two code points of every plane): MQTT lets a
# broker treat them as a malformed packet, and Mosquitto drops the connection.
_NONCHARACTERS: Final = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane + 0xFFFE)}{chr(plane + 0xFFFF)}" for plane in range(0, 0x110000, 0x10000)
)
_UNSAFE: Final = re.compile(f"[/+#\x00-\x1f\x7f-\x9f\ud800-\udfff{_NONCHARACTERS}]")
# The MQTT limit on a topic name, in UTF-8 bytes.
_MAX_TOPIC_BYTES: Final = 65535
# v5 negative acknowledgements that a retry cannot fix: not authorized, topic name
# invalid, packet too large, payload format invalid. Others (quota, server busy) can pass.
_PERMANENT_REASONS: Final = frozenset({0x87, 0x90, 0x95, 0x99})
# Unacknowledged publishes on the wire (paho queues the rest): enough that throughput is
# not bound by round trips; not more, as paho scans the in-flight set on every ack. A v5
# broker announces its limit (Receive Maximum), which wins. A v3.1.1 broker cannot, and
# Mosquitto silently drops QoS 2 publishes beyond its default of 20: so 20 for v3.1.1.
_MAX_INFLIGHT_V5: Final = 100
_MAX_INFLIGHT_V311: Final = 20
# paho's lookup tables for PUBLISH properties, and from them the User Property identifier
# and its value type (a UTF-8 string pair).
_PAHO: Final = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_TABLES: Final[dict[str, Any]] = {
    name: vars(_PAHO)[name] for name in ("types", "names", "properties")
}
_USER_PROPERTY: Final[int] = _PAHO.names["User Property"]
_STRING_PAIR: Final[int] = _PAHO.types.index("UTF-8 String Pair")


def topic_segment(value: object) -> str:
    """One topic level from a rule, account or asset name: never splits or wildcards."""
    return _UNSAFE.sub("_", "" if value is None else str(value)) or "_"


def topic_tail(alert: AlertDoc) -> str:
    """``<rule>/<account>/<venue>/<asset>`` of an alert, ``-`` for what it does not have;
    a group's keys beyond those as one more level (module docstring)."""
    parts = [
        NO_SEGMENT if value is None else topic_segment(value)
        for value in (alert.get(key) for key in ("rule", *SEGMENTS))
    ]
    group = alert.get("group")
    if isinstance(group, Mapping):
        extra = sorted((str(k), v) for k, v in group.items() if k not in SEGMENTS)
        if extra:
            pairs = (f"{k}={NO_SEGMENT if v is None else v}" for k, v in extra)
            parts.append(topic_segment(",".join(pairs)))
    return "/".join(parts)


def v1_topic_tail(alert: AlertDoc) -> str:
    """``<rule>/<account>/<asset>``: where layout version 1 put the alert."""
    asset = alert.get("asset")
    return "/".join(
        topic_segment(part)
        for part in (
            alert.get("rule"),
            alert.get("account"),
            NO_SEGMENT if asset is None else asset,
        )
    )


class _PackedProperties(Properties):
    """PUBLISH properties with their wire bytes made up front.

    paho packs properties anew for every publish and builds each instance with its own copy
    of its lookup tables (6 KB); in Python that costs as much as the rest of the publish.
    These share one copy of the tables, which paho only reads, and :func:`_v5_properties`
    makes the bytes from a per-rule cached part. Never changed once made.
    """

    def __init__(self, packed: bytes, **values: Any) -> None:
        # Past paho's __setattr__, which validates each name against its tables, slowly.
        self.__dict__.update(_TABLES, packetType=PacketTypes.PUBLISH, **values)
        self.__dict__["_packed"] = packed

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


@functools.lru_cache(maxsize=1024)
def _rule_properties(rule: str, severity: str, expiry: int | None) -> tuple[Properties, bytes]:
    """The properties every alert of a rule shares, and their packed bytes without the
    length prefix. Keyed by rule, not fingerprint, so the cache stays small."""
    shared = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    shared.PayloadFormatIndicator = 1  # UTF-8
    shared.ContentType = "application/json"
    shared.UserProperty = [("rule", rule), ("severity", severity)]
    if expiry is not None:
        shared.MessageExpiryInterval = expiry
    framed: bytes = shared.pack()  # type: ignore[no-untyped-call]
    _, prefix = VariableByteIntegers.decode(framed)  # type: ignore[no-untyped-call]
    return shared, framed[prefix:]


def _v5_properties(rule: str, severity: str, fingerprint: str, expiry: int | None) -> Properties:
    """PUBLISH properties: payload format, content type, expiry, and the user properties
    rule, severity and fingerprint. paho packs User Property last (its identifier is the
    highest a PUBLISH carries), so the fingerprint pair goes at the end of the rule's bytes.
    """
    shared, body = _rule_properties(rule, severity, expiry)
    pair = ("fingerprint", fingerprint)
    body += _PAHO.writeProperty(_USER_PROPERTY, _STRING_PAIR, pair)  # type: ignore[no-untyped-call]
    packed: bytes = VariableByteIntegers.encode(len(body)) + body  # type: ignore[no-untyped-call]
    values = {name: value for name, value in vars(shared).items() if name[0].isupper()}
    values["UserProperty"] = [*values["UserProperty"], pair]
    return _PackedProperties(packed, **values)


class _Connection(aiomqtt.Client):
    """aiomqtt's client, with publishes that report how the broker answered.

    aiomqtt's own ``publish`` treats any PUBACK as success and, when the connection
    drops, waits out its timeout. Here each publish gets a future that resolves to None
    when acknowledged, or to a :class:`DeliveryError` on a v5 negative acknowledgement
    or a lost connection.
    """

    def __init__(self, sink: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._acks: dict[int, asyncio.Future[DeliveryError | None]] = {}

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> asyncio.Future[DeliveryError | None]:
        """Hand one message to paho; the future resolves once the broker acknowledged it
        (QoS 1 and 2) or it was written to the socket (QoS 0)."""
        future: asyncio.Future[DeliveryError | None] = asyncio.get_running_loop().create_future()
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            message = f"mqtt sink {self._sink}: publish refused: {paho.error_string(info.rc)}"
            future.set_result(DeliveryError(message, retryable=True))
        elif info.is_published():
            future.set_result(None)
        else:
            self._acks[info.mid] = future
        return future

    def pending(self) -> list[asyncio.Future[DeliveryError | None]]:
        return list(self._acks.values())

    def fail_pending(self, reason: str) -> None:
        """Resolve every unacknowledged publish as failed: its ack can no longer come."""
        acks, self._acks = self._acks, {}
        for future in acks.values():
            if not future.done():
                message = f"mqtt sink {self._sink}: {reason} before acknowledgement"
                future.set_result(DeliveryError(message, retryable=True))

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        # paho ignores the broker's Receive Maximum, and exceeding it is a protocol error
        # (strict brokers disconnect). paho's setter refuses once connected, but nothing is
        # in flight before CONNACK, so lowering the limit here is safe.
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_maximum, int) and receive_maximum < client.max_inflight_messages:
            client._max_inflight_messages = receive_maximum
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        super()._on_publish(client, userdata, mid, reason_code, properties)
        future = self._acks.pop(mid, None)
        if future is None or future.done():
            return
        if reason_code.is_failure:
            message = f"mqtt sink {self._sink}: broker refused the publish: {reason_code}"
            retryable = reason_code.value not in _PERMANENT_REASONS
            future.set_result(DeliveryError(message, retryable=retryable))
        else:
            future.set_result(None)


class MqttSink(Sink):
    """Publishes alerts to one broker; see the module docstring for the topic layout.

    ``connect_wait`` bounds how long a send right after :meth:`start` waits for the first
    connection attempt; once that attempt is over, sends never wait for a connection.
    ``active_expiry`` is the v5 message expiry of retained ``active/`` alerts, so a
    retained alert left behind by a daemon that is gone for good does not stay forever;
    each repeat notification renews it.
    """

    def __init__(
        self,
        config: MqttSinkConfig,
        *,
        connect_wait: float = 5.0,
        connect_timeout: float = 10.0,
        ack_timeout: float = 10.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        instance: str | None = None,
    ) -> None:
        self.name = config.name
        self._config = config
        self._connect_wait = connect_wait
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._reconnect = (reconnect_min, reconnect_max)
        expiry = config.active_expiry
        self._active_expiry = None if expiry is None else math.ceil(expiry)
        self._v5 = config.protocol == "5"
        self._status_topic = f"{config.topic_prefix}/status"
        if instance is not None:
            self._status_topic += f"/{topic_segment(instance)}"
        # One id per sink instance: a reconnect takes over a half-open old session.
        self._client_id = f"balwatch-{secrets.token_hex(6)}"
        self._tls: ssl.SSLContext | None = None
        self._connection: _Connection | None = None
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        if self._task is not None:
            return
        self._tls = self._tls_context()
        self._closing = False
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"mqtt-sink-{self.name}")

    async def close(self) -> None:
        """Wait for unacknowledged publishes, publish ``offline``, disconnect cleanly."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        connection = self._connection
        if connection is not None:
            pending = connection.pending()
            if pending:
                await asyncio.wait(pending, timeout=self._ack_timeout)
            offline = connection.publish_nowait(
                self._status_topic, OFFLINE, qos=self._config.qos, retain=True
            )
            await asyncio.wait([offline], timeout=self._ack_timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def send(self, alert: AlertDoc) -> None:
        messages = self._messages(alert)
        connection = await self._live_connection()
        acks = [
            connection.publish_nowait(
                topic, payload, qos=self._config.qos, retain=retain, properties=properties
            )
            for topic, payload, retain, properties in messages
        ]
        try:
            async with asyncio.timeout(self._ack_timeout):
                for ack in acks:
                    error = await ack
                    if error is not None:
                        raise error
        except TimeoutError:
            raise DeliveryError(
                f"mqtt sink {self.name}: no acknowledgement within {self._ack_timeout:g}s",
                retryable=True,
            ) from None

    # --- messages -------------------------------------------------------------------

    def topics(self, alert: AlertDoc) -> tuple[str, str]:
        """The ``alerts/`` and ``active/`` topics of one alert."""
        tail = topic_tail(alert)
        prefix = self._config.topic_prefix
        return f"{prefix}/alerts/{tail}", f"{prefix}/active/{tail}"

    def _messages(self, alert: AlertDoc) -> list[tuple[str, bytes, bool, Properties | None]]:
        """(topic, payload, retain, v5 properties) in publish order: event, then state."""
        upkeep = alert.get(RETAINED_ONLY)
        if upkeep is not None:
            return self._upkeep(upkeep, alert)
        payload = self._payload(alert)
        events, active = self.topics(alert)
        self._checked(active)  # alerts/ is shorter
        if alert.get("status") == "resolved":
            clear = (active, b"", True, None)
            if not self._config.send_resolved:
                return [clear]
            return [(events, payload, False, self._properties(alert)), clear]
        return [
            (events, payload, False, self._properties(alert)),
            (active, payload, True, self._properties(alert, expiry=self._active_expiry)),
        ]

    def _upkeep(
        self, kind: object, alert: AlertDoc
    ) -> list[tuple[str, bytes, bool, Properties | None]]:
        """The one retained publish of an upkeep document; nothing goes to ``alerts/``."""
        if kind == CLEAR_V1_ACTIVE:
            topic = f"{self._config.topic_prefix}/active/{v1_topic_tail(alert)}"
            return [(self._checked(topic), b"", True, None)]
        if kind == SET_ACTIVE:
            doc = {key: value for key, value in alert.items() if key != RETAINED_ONLY}
            active = self._checked(self.topics(doc)[1])
            properties = self._properties(doc, expiry=self._active_expiry)
            return [(active, self._payload(doc), True, properties)]
        raise DeliveryError(f"mqtt sink {self.name}: unknown upkeep {kind!r}", retryable=False)

    def _payload(self, alert: AlertDoc) -> bytes:
        try:
            return encode_alert(alert)
        except (TypeError, ValueError) as exc:
            raise DeliveryError(
                f"mqtt sink {self.name}: alert is not JSON data: {type(exc).__name__}",
                retryable=False,
            ) from None

    def _checked(self, topic: str) -> str:
        """``topic``, unless it is longer than MQTT allows: a dead letter then."""
        if len(topic.encode()) > _MAX_TOPIC_BYTES:
            raise DeliveryError(
                f"mqtt sink {self.name}: topic longer than MQTT allows ({len(topic)} chars)",
                retryable=False,
            )
        return topic

    def _properties(self, alert: AlertDoc, *, expiry: int | None = None) -> Properties | None:
        if not self._v5:
            return None
        return _v5_properties(
            str(alert.get("rule") or ""),
            str(alert.get("severity") or ""),
            str(alert.get("fingerprint") or ""),
            expiry,
        )

    # --- connection -----------------------------------------------------------------

    def connected(self) -> bool:
        return self._connection is not None

    async def _live_connection(self) -> _Connection:
        if self._task is None or self._closing:
            raise DeliveryError(f"mqtt sink {self.name}: not running", retryable=True)
        if self._connection is None and not self._first_attempt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_attempt.wait(), self._connect_wait)
        connection = self._connection
        if connection is None:
            raise DeliveryError(f"mqtt sink {self.name}: broker not connected", retryable=True)
        return connection

    def _tls_context(self) -> ssl.SSLContext | None:
        """Verifying TLS for mqtts:// (system CAs unless ``ca_file``), with a client cert."""
        if urlsplit(self._config.url.reveal()).scheme != "mqtts":
            return None
        ca_file = self._config.ca_file
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if self._config.client_cert is not None:
            context.load_cert_chain(self._config.client_cert, self._config.client_key)
        return context

    def _new_connection(self) -> _Connection:
        url = urlsplit(self._config.url.reveal())
        assert url.hostname is not None, "validated by the config model"
        protocol = aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311
        return _Connection(
            self.name,
            url.hostname,
            url.port or (8883 if self._tls else 1883),
            username=unquote(url.username) if url.username is not None else None,
            password=unquote(url.password) if url.password is not None else None,
            identifier=self._client_id,
            protocol=protocol,
            will=aiomqtt.Will(self._status_topic, OFFLINE, qos=self._config.qos, retain=True),
            keepalive=max(1, math.ceil(self._config.keepalive)),
            timeout=self._connect_timeout,
            max_inflight_messages=_MAX_INFLIGHT_V5 if self._v5 else _MAX_INFLIGHT_V311,
            tls_context=self._tls,
        )

    async def _run(self) -> None:
        """Connect, announce ``online``, hold the connection until it drops; repeat."""
        broker = redact_url(self._config.url)
        delay, failures = self._reconnect[0], 0
        while True:
            connection = self._new_connection()
            try:
                async with connection:
                    await self._announce(connection)
                    self._connection = connection
                    self._first_attempt.set()
                    log.info("mqtt_connected", sink=self.name, broker=broker)
                    delay, failures = self._reconnect[0], 0
                    # Yields nothing (no subscriptions); raises MqttError when disconnected.
                    async for _ in connection.messages:
                        pass
            except aiomqtt.MqttError as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "mqtt_disconnected", sink=self.name, broker=broker, error=str(exc)
                )
            except Exception:
                failures += 1
                log.exception("mqtt_connection_failed", sink=self.name, broker=broker)
            finally:
                self._connection = None
                connection.fail_pending("connection lost")
            self._first_attempt.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect[1])

    async def _announce(self, connection: _Connection) -> None:
        """Retained ``online`` before any alert: it replaces the will after a crash."""
        ack = connection.publish_nowait(
            self._status_topic, ONLINE, qos=self._config.qos, retain=True
        )
        try:
            error = await asyncio.wait_for(ack, self._ack_timeout)
        except TimeoutError:
            raise aiomqtt.MqttError("status not acknowledged") from None
        if error is not None:
            raise aiomqtt.MqttError(str(error))
