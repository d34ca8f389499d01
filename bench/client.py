"""The MQTT receive path of an ingest worker, stock paho against `LeanClient`, in one run.

    python -m bench.client [--seconds 8] [--trials 2]

A subscriber with manual acknowledgement, like an ingest worker's (QoS 1, every message acked:
stock paho one by one as each arrives, `LeanClient` a hundred at a time with `ack_many`, as a
worker acks a committed batch), receives what one `FastPublisher` sends as fast as it can for
`--seconds`, 3-reading water-meter payloads, through a Mosquitto of its own. Per trial and
client: messages per second until the last arrived, and the subscriber's CPU per message (the
process's own CPU; the publisher runs in a child process). Trials alternate stock and lean, and
the medians are printed with their ratio.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.ingest import Broker, Load, publish_for
from ingest.source import LeanClient


def trial(broker: Broker, lean: bool, seconds: float, index: int) -> tuple[float, float]:
    """(messages/s, µs of subscriber CPU per message) for one client and one window."""
    prefix = f"bench-client-{index}/v1"
    got = [0]
    lock = threading.Lock()
    if lean:
        client: mqtt.Client = LeanClient(
            CallbackAPIVersion.VERSION2, client_id=f"bc-{index}", protocol=mqtt.MQTTv5,
            manual_ack=True,
        )  # fmt: skip
        pending: list[int] = []

        def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with lock:
                got[0] += 1
                pending.append(message.mid)
                if len(pending) >= 100:  # a worker acks a committed batch
                    client.ack_many(pending[:])  # type: ignore[attr-defined]
                    pending.clear()
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bc-{index}", protocol=mqtt.MQTTv5,
            manual_ack=True,
        )  # fmt: skip

        def on_message(c: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with lock:
                got[0] += 1
            c.ack(message.mid, message.qos)

    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = 1000  # as an ingest worker asks (ingest_max_inflight)
    client.connect("127.0.0.1", broker.port, properties=props)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    time.sleep(0.5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sent = publish_for(Load(broker.url, 3, prefix, 10_000, seconds, 1)).messages
    while got[0] < sent and time.monotonic() - started < seconds + 120:
        time.sleep(0.01)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    client.disconnect()
    client.loop_stop()
    if got[0] < sent:
        raise RuntimeError(f"received {got[0]} of {sent}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return sent / took, cpu / sent * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args(argv)
    results: dict[str, list[tuple[float, float]]] = {"paho": [], "lean": []}
    with tempfile.TemporaryDirectory(prefix="up-bench-client-") as tmp:
        broker = Broker(Path(tmp))
        try:
            for k in range(args.trials):
                for name in ("paho", "lean"):
                    index = len(results["paho"]) + len(results["lean"])
                    rate, us = trial(broker, name == "lean", args.seconds, index)
                    results[name].append((rate, us))
                    print(f"trial {k + 1} {name:>4}: {rate:>9,.0f} msg/s, {us:5.1f} µs CPU/msg")
        finally:
            broker.stop()
    med = {n: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for n, v in results.items()}  # fmt: skip
    print(
        f"median: paho {med['paho'][0]:,.0f} msg/s at {med['paho'][1]:.1f} µs/msg; "
        f"LeanClient {med['lean'][0]:,.0f} msg/s at {med['lean'][1]:.1f} µs/msg; "
        f"CPU per message ×{med['lean'][1] / med['paho'][1]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
