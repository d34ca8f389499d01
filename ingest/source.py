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
import struct
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
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


class LeanClient(mqtt.Client):
    """paho's client with its socket I/O batched; the protocol handling is paho's own.

    Per message, stock paho reads a packet in three `recv` calls (type, length, body), runs a
    `select`, builds a `Properties` object (two dicts of every property MQTT 5 defines, then a
    pass over 28 names) even when the packet has none, walks its topic matcher for filtered
    callbacks, and queues every acknowledgement as a packet of its own, each with a wake-up of
    the network thread. Here:

    - reads come from a 64 KB buffer; a turn of the network loop handles up to 256 buffered
      packets, and the loop does not wait on `select` while some remain;
    - a QoS 0 or 1 PUBLISH is decoded here (MQTT 5 §3.3) and handed straight to `on_message`;
      properties are decoded (by paho) only when the packet carries some. No filtered
      callbacks (`message_callback_add` is refused), so no matcher walk;
    - `ack_many` acknowledges a committed batch as one queued write.

    `python -m bench.client` measures both in one run: on the reference machine (2
    cores), stock paho took 69 µs of CPU a message and received 13 910 msg/s; this client 14 µs,
    receiving the 32 773 msg/s its publisher sent (medians of 3).

    The rest (connect, QoS 2, subscriptions, keep-alive, reconnects) is paho's own. These hooks
    reach into paho's internals, which may move in a minor release: tests check that each one
    is still called (`io_stats`).
    """

    READ_SIZE = 65536
    DRAIN = 256  # buffered packets handled in one turn of paho's loop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self.io_stats = {"recv": 0, "publish_decoded": 0}

    def ack_many(self, mids: list[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (manual acknowledgement): one queued write for all."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        packets = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
        return self._packet_queue(mqtt.PUBACK, packets, 0, 1)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("LeanClient delivers every message to on_message")

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2 or self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        size = len(packet)
        if size < 2:
            raise MalformedPacket("PUBLISH too short for its topic length")
        at = 2 + ((packet[0] << 8) | packet[1])
        topic = bytes(packet[2:at])
        mid = 0
        if qos:
            if size < at + 2:
                raise MalformedPacket("PUBLISH too short for its packet identifier")
            mid = (packet[at] << 8) | packet[at + 1]
            at += 2
        start = at
        try:
            decoded = decode_varint(packet, at)  # the properties' length
        except ValueError as exc:
            raise MalformedPacket(f"PUBLISH properties length: {exc}") from exc
        if decoded is None:
            raise MalformedPacket("PUBLISH properties length malformed")
        props_len, at = decoded
        if at + props_len > size:
            raise MalformedPacket("PUBLISH properties longer than the packet")
        properties = None
        if props_len:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            try:
                properties.unpack(packet[start:])  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise MalformedPacket(f"PUBLISH properties: {exc}") from exc
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = properties
        message.payload = bytes(packet[at + props_len :])
        message.timestamp = time.monotonic()
        self.io_stats["publish_decoded"] += 1
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception:
                    log.exception("on_message raised")
                    if not self.suppress_exceptions:
                        raise
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # nothing of the old connection may be read on the new
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(self.READ_SIZE)  # BlockingIOError etc. as paho expects
            self.io_stats["recv"] += 1
            if len(data) <= bufsize:  # also b"": the broker closed the connection
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # paho reads one packet per turn of its loop. Handle what is already buffered, up to
        # DRAIN packets: then return, so that the loop writes the acknowledgements queued
        # meanwhile, keeps the connection alive and can be stopped. What is left in the buffer
        # is reported by the socket's pending(), so the next turn reads it without waiting.
        for _ in range(self.DRAIN):
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is None:
                break
            if self._rpos >= len(self._rbuf):
                break
            rc = super().loop_read(max_packets)
        return rc

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket(), self)

    def buffered(self) -> int:
        return len(self._rbuf) - self._rpos


class _BufferedSocket:
    """The connection's socket as paho sees it: reads are buffered by LeanClient, and
    `pending()` (which paho's loop asks TLS sockets) tells the loop that bytes wait in that
    buffer, so that it reads them before waiting on `select` for new ones."""

    def __init__(self, sock: Any, client: LeanClient) -> None:
        self._sock = sock
        self._client = client

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return int(inner) + self._client.buffered()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def decode_varint(buf: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer at `at`: (value, position after it), or None when `buf`
    ends first. More than four bytes is malformed (ValueError)."""
    value = shift = 0
    for pos in range(at, min(at + 4, len(buf))):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + 1
        shift += 7
    if len(buf) >= at + 4:
        raise ValueError("variable byte integer longer than four bytes")
    return None


_PUBACK = struct.Struct("!BBH")  # type, remaining length 2, packet id: reason 0 implied


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
        client = LeanClient(
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
    def ack(self, msgs: list[InboundMessage]) -> int:
        """Acknowledge committed messages (of this session); how many were acknowledged.

        After a reconnect the broker redelivers what we had not acknowledged, with packet ids
        that may be reused; acking an old id could acknowledge a message we have not stored,
        so messages of an earlier connection are left out (the broker redelivers them).
        """
        with self._lock:
            if not self.connected.is_set():
                return 0
            mids = [m.mid for m in msgs if m.qos == 1 and m.generation == self.generation]
            rc = self._client.ack_many(mids)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return 0
            self.acked += len(mids)
        return len(mids)

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
