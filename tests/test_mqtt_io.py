"""The batched MQTT I/O under ingest and the benchmark, against a real Mosquitto.

`LeanClient` reaches into paho's internals (its read, PUBLISH decoding and write hooks): these
tests fail if a paho release moves them, rather than letting ingest fall back silently to the
slow path. `FastPublisher` is the benchmark's load generator: it must deliver exactly what it
counts as sent.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.loadgen import FastPublisher, LoadGenError, _receive_maximum
from ingest.source import LeanClient
from ingest.worker import Inbox
from tests.pipeline import wait_until
from tests.services import Mosquitto
from urbanpulse.contract.model import InboundMessage


class Received:
    """A LeanClient subscriber with manual acknowledgement, acking in batches."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str, *, clean: bool = True):
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = LeanClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if clean else 300
        self.client.connect("127.0.0.1", broker.port, clean_start=clean, properties=props)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def ack_all(self) -> int:
        with self.lock:
            mids = [m.mid for m in self.messages if m.qos == 1]
        self.client.ack_many(mids)
        return len(mids)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_lean_client_decodes_every_publish_itself(broker: Mosquitto, prefix: str) -> None:
    sub = Received(broker, f"{prefix}/#", "lean-decode")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lean-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = ("site", "永川")
        props.ContentType = "application/json"
        sent = [
            pub.publish(f"{prefix}/water/a", b'{"x":1}', qos=1, properties=props),
            pub.publish(f"{prefix}/water/b", b"", qos=1),  # empty payload
            pub.publish(f"{prefix}/water/c", b"q0" * 40_000, qos=0),  # 80 KB: spans reads
            pub.publish(f"{prefix}/water/d", b"plain", qos=1),
        ]
        for info in sent:
            info.wait_for_publish(5)
        wait_until(lambda: len(sub.messages) == 4, 10, "4 messages")
        by_topic = {m.topic: m for m in sub.messages}
        a = by_topic[f"{prefix}/water/a"]
        assert a.payload == b'{"x":1}' and a.qos == 1 and a.mid > 0
        assert a.properties is not None
        assert getattr(a.properties, "ContentType") == "application/json"  # noqa: B009
        assert ("site", "永川") in getattr(a.properties, "UserProperty")  # noqa: B009
        assert by_topic[f"{prefix}/water/b"].payload == b""
        assert by_topic[f"{prefix}/water/c"].payload == b"q0" * 40_000
        assert by_topic[f"{prefix}/water/c"].qos == 0
        assert by_topic[f"{prefix}/water/d"].properties is None  # none sent, none decoded
        stats = sub.client.io_stats
        assert stats["publish_decoded"] == 4  # our decoder, not paho's
        assert stats["recv"] < 20  # buffered reads, not three a packet
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.stop()


def test_lean_client_acks_in_one_write_and_nothing_comes_again(
    broker: Mosquitto, prefix: str
) -> None:
    """Acknowledged in one batch: after a reconnect to the same session, nothing is redelivered;
    the unacknowledged half is."""
    sub = Received(broker, f"{prefix}/#", "lean-ack", clean=False)
    with FastPublisher("127.0.0.1", broker.port, "lean-ack-pub") as pub:
        pub.publish_many([(f"{prefix}/water/m".encode(), b"%d" % i) for i in range(2000)])
        pub.flush(30)
    wait_until(lambda: len(sub.messages) == 2000, 20, "2000 messages")
    with sub.lock:
        first_half = [m.mid for m in sub.messages[:1000]]
    sub.client.ack_many(first_half)
    time.sleep(0.5)
    sub.client.disconnect()
    sub.client.loop_stop()

    again = Received(broker, f"{prefix}/#", "lean-ack", clean=False)
    try:
        wait_until(lambda: len(again.messages) >= 1000, 20, "the unacknowledged half")
        time.sleep(1.0)
        assert sorted(int(m.payload) for m in again.messages) == list(range(1000, 2000))
        assert again.ack_all() == 1000
    finally:
        again.stop()


def test_lean_client_refuses_filtered_callbacks() -> None:
    client = LeanClient(CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv5)
    with pytest.raises(NotImplementedError):
        client.message_callback_add("a/#", lambda *a: None)


def test_fast_publisher_delivers_exactly_what_it_sent(broker: Mosquitto, prefix: str) -> None:
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fp-count", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(bytes(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    try:
        with FastPublisher("127.0.0.1", broker.port, "fp-pub") as pub:
            assert 1 <= pub.window <= 65535
            for k in range(5):
                pub.publish_many(
                    [(f"{prefix}/d{i % 7}".encode(), b"%d" % (k * 3000 + i)) for i in range(3000)]
                )
            pub.flush(30)
            assert pub.sent == pub.acked == 15_000 and not pub.inflight
        wait_until(lambda: len(got) >= 15_000, 20, "15000 messages")
        time.sleep(0.3)
        assert sorted(int(p) for p in got) == list(range(15_000))
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_fast_publisher_sends_again_what_nobody_took(broker: Mosquitto, prefix: str) -> None:
    """A PUBACK 0x10 (no matching subscribers) is not a delivery: resent until one subscribes."""
    with FastPublisher("127.0.0.1", broker.port, "fp-unclaimed") as pub:
        pub.publish_many([(f"{prefix}/late".encode(), b"%d" % i) for i in range(50)])
        pub.idle(0.3)
        assert pub.acked == 0  # all refused so far
        sub = Received(broker, f"{prefix}/#", "fp-late-sub")
        try:
            pub.flush(10)
            assert pub.acked == 50 and pub.resent >= 50
            wait_until(lambda: len(sub.messages) >= 50, 10, "50 messages")
            assert sorted(int(m.payload) for m in sub.messages) == list(range(50))
        finally:
            sub.stop()


def test_fast_publisher_refused_connection_is_an_error(tmp_path: Any) -> None:
    secured = Mosquitto(tmp_path, extra_conf="allow_anonymous false\n")
    secured.start()
    try:
        with pytest.raises(LoadGenError, match="refused"):
            FastPublisher("127.0.0.1", secured.port, "anon")
    finally:
        secured.stop()


def test_receive_maximum_from_connack_properties() -> None:
    # properties length 8: Receive Maximum 0x21 = 20, Topic Alias Maximum 0x22 = 10,
    # Retain Available 0x25 = 1
    assert _receive_maximum(bytes([8, 0x25, 1, 0x22, 0, 10, 0x21, 0, 20])) == 20
    assert _receive_maximum(b"\x00") == 65535


def _msg(payload: bytes = b"x" * 100) -> InboundMessage:
    from datetime import UTC, datetime

    return InboundMessage("t/v1/water/a", payload, datetime.now(UTC))


def test_inbox_hands_over_full_batches_without_waiting() -> None:
    inbox = Inbox()
    stop = threading.Event()
    for _ in range(25):
        inbox.put(_msg())
    started = time.monotonic()
    batch = inbox.take(stop, max_messages=10, max_bytes=1 << 20, wait=1.0, delay=5.0)
    assert len(batch) == 10 and time.monotonic() - started < 1.0
    assert len(inbox) == 15
    # by bytes: 100-byte payloads, 350 bytes → the fourth message crosses it
    batch = inbox.take(stop, max_messages=100, max_bytes=350, wait=1.0, delay=5.0)
    assert len(batch) == 4
    assert len(inbox.drain()) == 11 and len(inbox) == 0


def test_inbox_waits_for_a_batch_to_fill_then_for_its_delay() -> None:
    inbox = Inbox()
    stop = threading.Event()
    assert inbox.take(stop, max_messages=10, max_bytes=1 << 20, wait=0.05, delay=0.1) == []

    def trickle() -> None:
        for _ in range(10):
            time.sleep(0.02)
            inbox.put(_msg())

    t = threading.Thread(target=trickle)
    t.start()
    started = time.monotonic()
    batch = inbox.take(stop, max_messages=10, max_bytes=1 << 20, wait=2.0, delay=5.0)
    t.join()
    assert len(batch) == 10  # woken by the tenth, long before the delay
    assert time.monotonic() - started < 2.0

    inbox.put(_msg())
    started = time.monotonic()
    batch = inbox.take(stop, max_messages=10, max_bytes=1 << 20, wait=2.0, delay=0.3)
    assert len(batch) == 1
    assert 0.2 < time.monotonic() - started < 1.5  # the delay, counted from its arrival


def test_lean_client_keeps_writing_while_reading_a_backlog(broker: Mosquitto, prefix: str) -> None:
    """A subscriber slower than the stream always finds more to read. Its loop must still turn:
    acknowledgements go out and the connection stays alive (keep-alive 2 s here: the broker
    drops a client it hears nothing from for 3 s), rather than reading forever."""
    received = [0]
    drops: list[Any] = []
    client = LeanClient(
        CallbackAPIVersion.VERSION2, client_id="lean-backlog", protocol=mqtt.MQTTv5,
        manual_ack=True,
    )  # fmt: skip
    pending: list[int] = []

    def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received[0] += 1
        pending.append(message.mid)
        spin = time.perf_counter() + 0.001  # a slow consumer: 1 ms a message
        while time.perf_counter() < spin:
            pass
        if len(pending) >= 50:
            client.ack_many(pending[:])
            pending.clear()

    client.on_message = on_message
    client.on_disconnect = lambda *a: drops.append(a[3])
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = 1000
    client.connect("127.0.0.1", broker.port, keepalive=2, properties=props)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    time.sleep(0.3)
    try:
        with FastPublisher("127.0.0.1", broker.port, "lean-backlog-pub") as pub:
            sent = 6000  # 24 MB: a backlog for 6 s, more than the socket buffers hold
            pub.publish_many([(f"{prefix}/w".encode(), b"x" * 4000)] * sent)
            pub.flush(30)
        wait_until(lambda: received[0] >= sent, 120, f"{sent} messages")
        assert drops == []  # never dropped for silence, so nothing came twice
        assert received[0] == sent
    finally:
        client.disconnect()
        client.loop_stop()


def test_variable_byte_integers() -> None:
    from ingest.source import decode_varint

    assert decode_varint(b"\x00", 0) == (0, 1)
    assert decode_varint(b"\x10\x7f", 1) == (127, 2)
    assert decode_varint(b"\x80\x01", 0) == (128, 2)
    assert decode_varint(b"\xff\xff\xff\x7f", 0) == (268_435_455, 4)  # the largest
    assert decode_varint(b"\x80", 0) is None  # continues past the end
    with pytest.raises(ValueError):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)
