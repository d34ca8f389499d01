"""The MQTT adapter: the only module that sees paho objects.

MQTT 5 with a persistent session (clean_start=False and a session expiry), a shared
subscription so several workers split the load, manual acknowledgement so a message is
acknowledged only after its rows are committed, and Receive Maximum so the broker never has
more unacknowledged messages in flight to us than we are willing to hold in memory.

Mosquitto keeps handing a shared subscription's share to a member whose session persists, even
while that member is gone, and drops the queue when the session expires. So each worker leaves a
will (MQTT 5, sent `will_delay_s` after it vanishes, not at all if it comes back in time). Every
peer hears it and takes the session over with the same client id in `adopting` mode; the broker
lets one session have one connection, so the last to connect keeps it and the others stop. The
adopter unsubscribes at once, so new messages go to the live workers, stores and acknowledges
what was queued, then ends the session (expiry 0). If the owner returns meanwhile, it takes its
session back and the broker redelivers what the adopter had not acknowledged (stored once, by
the readings' key).

A broker that shuts down sends every will at once, whatever its delay: after a broker restart
each worker hears that all the others are gone. So a worker announces itself on every
connection (`announce_topic`), and peers wait a grace period after a will before adopting,
forgetting it if the worker announced itself meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from urbanpulse.broker import BrokerAddress
from urbanpulse.contract.model import InboundMessage

log = logging.getLogger(__name__)

# CONNACK reason codes after which retrying cannot help (MQTT 5 §3.2.2.2).
FATAL_CONNACK = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8C: "bad authentication method",
}
KEEPALIVE_S = 30
# Mosquitto's count of the messages it holds (queued for sessions, in flight, retained),
# published every `sys_interval` (10 s by default): the backlog while ingest cannot keep up
BROKER_STATS = "$SYS/broker/store/messages/count"
# connection generations are unique in the process: an adopter that takes the same session
# again must not accept acknowledgements meant for its previous connection (packet ids repeat)
_GENERATIONS = itertools.count(1)


class MqttSource:
    """Delivers InboundMessage objects to `sink` from the paho network thread."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str,
        topic_filter: str,
        sink: Callable[[InboundMessage], None],
        session_expiry_s: int,
        receive_maximum: int,
        will_topic: str | None = None,
        will_delay_s: int = 10,
        control_filter: str | None = None,
        on_control: Callable[[str, str], None] | None = None,
        announce_topic: str | None = None,
        on_broker_stat: Callable[[str, str], None] | None = None,
        adopting: bool = False,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.topic_filter = topic_filter
        self.control_filter = control_filter
        # control topics are <prefix><kind>/<client id>, the filter <prefix>+/+
        self._control_prefix = control_filter.split("+", 1)[0] if control_filter else None
        self._on_control = on_control
        self._announce_topic = announce_topic
        self._on_broker_stat = on_broker_stat
        self.adopting = adopting
        self.unsubscribed = threading.Event()
        self.taken_over = False
        self.received = 0
        self.acked = 0
        self.last_message_at = 0.0
        self._unsubscribed_at = 0.0
        self._sink = sink
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self.generation = 0  # bumped on every successful connect
        self.connected = threading.Event()
        self.fatal: str | None = None
        self._lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(ca_certs=broker.ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        if will_topic:
            will = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will.WillDelayInterval = will_delay_s
            will.MessageExpiryInterval = 60  # a stale notice must not start an adoption later
            client.will_set(will_topic, client_id, qos=1, properties=will)
        self._client = client

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self, *, will: bool = False) -> None:
        """Disconnect cleanly; the broker keeps the session and unacked messages. `will`: also
        have the broker send our will (after its delay), so that if we do not come back a peer
        drains what the session still holds."""
        if will:
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            self._client.disconnect()
        self._client.loop_stop()

    def drained(self, quiet_s: float) -> bool:
        """Adopting: unsubscribed, nothing new for `quiet_s`, everything received acknowledged."""
        return (
            self.unsubscribed.is_set()
            and time.monotonic() - max(self.last_message_at, self._unsubscribed_at) >= quiet_s
            and self.acked >= self.received
        )

    def end_session(self) -> None:
        """Adopting, once drained: end the session for good, so its share goes to the others."""
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()

    # -- acknowledgement ------------------------------------------------------------------------
    def ack(self, msg: InboundMessage) -> bool:
        """Acknowledge a committed message; False if it came over an earlier connection.

        After a reconnect the broker redelivers what we had not acknowledged, with packet ids
        that may be reused; acking an old id could acknowledge a message we have not stored.
        """
        if msg.qos == 0:
            return True
        with self._lock:
            if msg.generation != self.generation or not self.connected.is_set():
                return False
            rc = self._client.ack(msg.mid, msg.qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.acked += 1
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- paho callbacks: never raise into the network loop ---------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            text = FATAL_CONNACK.get(reason.value)
            if text:
                self.fatal = f"broker {self.broker} refused the connection: {text}"
                log.error("%s — check the credentials in URBANPULSE_MQTT_URL", self.fatal)
            else:
                log.warning(
                    "broker %s refused the connection: %s; retrying", self.broker, reason.getName()
                )
            return
        with self._lock:
            self.generation = next(_GENERATIONS)
            self.received = self.acked = 0  # unacked ones of before come again
        self.connected.set()
        if self.adopting:
            log.info(
                "took over the session of %s (present: %s); draining it",
                self.client_id,
                flags.session_present,
            )
            self._unsubscribed_at = time.monotonic()
            client.unsubscribe(
                [self.topic_filter, self.control_filter]
                if self.control_filter
                else self.topic_filter
            )
            return
        log.info(
            "connected to %s (session present: %s); subscribing to %s",
            self.broker,
            flags.session_present,
            self.topic_filter,
        )
        if self.control_filter:
            client.subscribe([(self.topic_filter, 1), (self.control_filter, 1)])
        else:
            client.subscribe(self.topic_filter, qos=1)
        if self._on_broker_stat is not None:  # the broker's own backlog, for the metrics
            client.subscribe(BROKER_STATS, qos=0)
        if self._announce_topic:  # "I am here": cancels peers' adoption after a broker restart
            client.publish(self._announce_topic, self.client_id, qos=1)

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._unsubscribed_at = time.monotonic()
        self.unsubscribed.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for rc in reasons:
            if rc.is_failure:
                self.fatal = (
                    f"broker refused the subscription to {self.topic_filter}: {rc.getName()}"
                )
                log.error("%s — check the broker ACL for this account", self.fatal)
                return
        log.info("subscribed to %s (QoS %d)", self.topic_filter, reasons[0].value if reasons else 1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self.adopting:
            # taken over by its owner or another peer (or a network blip: then our will, sent
            # after its delay, has another peer drain it): never come back for it
            self.taken_over = True
            log.info("left the session of %s (%s)", self.client_id, reason.getName())
            client.disconnect()
            return
        if reason.value != 0:
            log.warning("disconnected from %s: %s; reconnecting", self.broker, reason.getName())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a topic that is not UTF-8 still ends in quarantine
            topic = message._topic.decode("utf-8", "replace")
        if topic.startswith("$SYS/"):
            if self._on_broker_stat is not None:
                self._on_broker_stat(topic, bytes(message.payload).decode("ascii", "replace"))
            return
        if self._control_prefix is not None and topic.startswith(self._control_prefix):
            try:
                if self._on_control is not None:
                    kind = topic[len(self._control_prefix) :].split("/", 1)[0]
                    self._on_control(kind, bytes(message.payload).decode("utf-8", "replace"))
            except Exception:
                log.exception("control message on %s", topic[:200])
            client.ack(message.mid, message.qos)
            return
        if message.qos > 0:  # QoS 0 needs no acknowledgement, so drained() must not wait for it
            self.received += 1
        self.last_message_at = time.monotonic()
        try:
            self._sink(
                InboundMessage(
                    topic=topic,
                    payload=bytes(message.payload),
                    received_at=datetime.now(UTC),
                    qos=message.qos,
                    mid=message.mid,
                    generation=self.generation,
                    via=self.client_id,
                )
            )
        except Exception:  # a sink bug must not kill the network thread
            log.exception(
                "dropping message from the sink on %s (not acknowledged; the "
                "broker will redeliver it)",
                topic[:200],
            )
