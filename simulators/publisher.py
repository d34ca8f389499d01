"""Publishing simulated messages over MQTT 5 with QoS 1."""

from __future__ import annotations

import time
from types import TracebackType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from urbanpulse.broker import BrokerAddress


class Publisher:
    """A QoS 1 publisher that can wait until the broker has every message."""

    def __init__(self, broker: BrokerAddress, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set()
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.broker = broker
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self.published = 0

    def __enter__(self) -> Publisher:
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        self._pending.append(self.client.publish(topic, payload, qos=1))
        self.published += 1
        if len(self._pending) >= 5000:
            self.flush()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the broker has acknowledged everything published so far."""
        deadline = time.monotonic() + timeout
        for info in self._pending:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"broker {self.broker} did not acknowledge message {info.mid}")
        self._pending.clear()
