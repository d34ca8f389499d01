"""Publishing over MQTT 5, QoS 1 by default, from one thread.

paho's network loop runs in the publishing thread (`client.loop(0)` between publishes) rather
than in a background thread: with both threads busy, the GIL hand-over halves the QoS 1 rate
(about 5 k against 10 k msg/s per connection on the reference machine). Callers that wait
between rounds call `idle()` so that acknowledgements and keep-alives are still served.

A QoS 1 message the broker acknowledges with reason 0x10, "no matching subscribers", reached
nobody: it is kept and sent again. That happens right after a broker restart, before the
ingest workers have subscribed again (Mosquitto does not restore shared subscriptions from its
persistence file), and would otherwise lose the messages of those seconds. What still finds no
subscriber after `UNCLAIMED_GIVE_UP_S` is dropped with a warning (no ingest is running).

What is still to be acknowledged is tracked by message id, cleared by the PUBACK, and not by
paho's `MQTTMessageInfo.is_published()`: a QoS 1 message written while the connection drops
keeps the error code of that first write in its info (so `is_published()` raises), although
paho keeps the message and sends it again after the reconnect, where it is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from urbanpulse.backoff import Backoff
from urbanpulse.broker import BrokerAddress
from urbanpulse.errors import ConfigError

LOOP_EVERY = 50  # publishes between two turns of the network loop
FLUSH_AT = 20000  # pending messages that trigger a wait for the broker's acknowledgements
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK reason code
RESEND_AFTER_S = 0.5  # wait before sending a message nobody took again
UNCLAIMED_GIVE_UP_S = 30.0  # then drop it: nobody subscribes to the topic

log = logging.getLogger(__name__)


class Publisher:
    """A publisher that can wait until the broker has acknowledged every message."""

    def __init__(self, broker: BrokerAddress, client_id: str, qos: int = 1) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.broker = broker
        self.qos = qos
        self._refused: str | None = None
        self._since_loop = 0
        self.published = 0
        self.resent = 0  # sent again after "no matching subscribers"
        self.unclaimed = 0  # dropped after UNCLAIMED_GIVE_UP_S without a subscriber
        self._inflight: dict[int, tuple[str, bytes, float]] = {}  # mid → message, first refusal
        self._refused_msgs: deque[tuple[float, str, bytes, float]] = deque()  # due, message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None or reason.value != NO_MATCHING_SUBSCRIBERS:
            return
        topic, payload, first = sent
        now = time.monotonic()
        self._refused_msgs.append((now + RESEND_AFTER_S, topic, payload, first or now))

    def _send(self, topic: str, payload: bytes, first_refused: float = 0.0) -> None:
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # cannot happen: the queue is unbounded
            raise RuntimeError(f"paho refused to queue a message for {topic}")
        if self.qos > 0:
            self._inflight[info.mid] = (topic, payload, first_refused)

    @property
    def unacknowledged(self) -> int:
        """Messages sent and not yet acknowledged, or waiting to be sent again."""
        return len(self._inflight) + len(self._refused_msgs)

    def _resend_due(self) -> None:
        now = time.monotonic()
        while self._refused_msgs and self._refused_msgs[0][0] <= now:
            _, topic, payload, first = self._refused_msgs.popleft()
            if now - first > UNCLAIMED_GIVE_UP_S:
                self.unclaimed += 1
                if self.unclaimed == 1:
                    log.warning(
                        "no subscriber for %s for %.0f s: dropping what nobody takes "
                        "(is an ingest worker running?)",
                        topic,
                        UNCLAIMED_GIVE_UP_S,
                    )
                continue
            self.resent += 1
            self._send(topic, payload, first)

    def __enter__(self) -> Publisher:
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as exc:
            raise ConfigError(f"cannot reach the MQTT broker at {self.broker}: {exc}") from exc
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            self._turn(0.05)
            if self._refused:
                raise ConfigError(f"the MQTT broker {self.broker} refused us: {self._refused}")
            if time.monotonic() > deadline:
                raise ConfigError(f"no answer from the MQTT broker at {self.broker}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        self.client.disconnect()
        self.client.loop(0.1)

    def _turn(self, timeout: float = 0.0) -> None:
        """One turn of the network loop; reconnects (with backoff) if the broker went away."""
        rc = self.client.loop(timeout)
        if rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            if self._refused_msgs:
                self._resend_due()
            return
        backoff = Backoff(initial=0.2, maximum=5.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client.reconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            except OSError:
                pass
            time.sleep(backoff.delay())
        raise ConfigError(f"lost the MQTT broker at {self.broker} and could not reconnect")

    def publish(self, topic: str, payload: bytes) -> None:
        self._send(topic, payload)
        self.published += 1
        self._since_loop += 1
        if self._since_loop >= LOOP_EVERY:
            self._since_loop = 0
            self._turn()
        if len(self._inflight) >= FLUSH_AT:
            self.flush()

    def idle(self, seconds: float) -> None:
        """Wait, serving acknowledgements and keep-alives meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._turn(min(left, 0.1))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the broker has acknowledged everything published so far."""
        deadline = time.monotonic() + timeout
        # QoS 1: until every PUBACK is in; QoS 0: until paho has written everything out
        while self.unacknowledged or self.client.want_write():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"broker {self.broker} did not acknowledge {self.unacknowledged} message(s)"
                )
            self._turn(0.01)
