"""Known message streams for the integration tests, with the exact outcome they must produce."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from urbanpulse.db.devices import DeviceSpec

DEVICES = [
    DeviceSpec(device_id="aq1", domain="air", kind="aq_station", name="兴龙湖空气站"),
    DeviceSpec(
        device_id="wn1", domain="water", kind="inlet_meter", name="兴龙湖DMA进水表", zone="DMA-XLH"
    ),
    DeviceSpec(device_id="fl1", domain="flood", kind="depth_gauge", name="凤凰湖下穿道"),
    DeviceSpec(device_id="pk1", domain="parking", kind="car_park", name="医院停车场", capacity=320),
]


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


@dataclass
class Stream:
    """Messages to publish, the distinct readings they hold, and the quarantine they cause."""

    prefix: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    readings: set[tuple[str, str, int]] = field(default_factory=set)  # device, metric, ms
    quarantine: Counter[str] = field(default_factory=Counter)

    def topic(self, domain: str, device: str) -> str:
        return f"{self.prefix}/{domain}/{device}"

    def add(
        self,
        domain: str,
        device: str,
        body: Any,
        readings: list[tuple[str, datetime]] | None = None,
        reason: str | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.messages.append((self.topic(domain, device), raw))
        for metric, ts in readings or []:
            self.readings.add((device, metric, _ms(ts)))
        if reason:
            self.quarantine[reason] += 1


def mixed_stream(prefix: str, start: datetime | None = None) -> Stream:
    """Valid, duplicate, malformed, unknown-device, out-of-order, batched and SenML messages."""
    t0 = (start or datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    s = Stream(prefix)
    for i in range(40):  # single readings, every other one sent twice (a duplicate delivery)
        ts = t0 + timedelta(minutes=i)
        s.add("air", "aq1", {"metric": "pm25", "value": 30 + i, "ts": _ms(ts)}, [("pm25", ts)])
        if i % 2 == 0:
            s.add("air", "aq1", {"metric": "pm25", "value": 30 + i, "ts": _ms(ts)})
    for i in range(20):  # several metrics per message, with a unit conversion
        ts = t0 + timedelta(minutes=i)
        s.add(
            "water",
            "wn1",
            {
                "ts": ts.isoformat(),
                "values": {
                    "flow": {"value": 12.5, "unit": "L/s"},
                    "pressure": 0.31,
                    "volume": 1000 + i,
                },
            },
            [("flow", ts), ("pressure", ts), ("volume", ts)],
        )
    for i in reversed(range(10)):  # out of order: newest first
        ts = t0 + timedelta(minutes=i)
        s.add(
            "parking",
            "pk1",
            {
                "readings": [
                    {"metric": "occupied", "value": 100 + i, "ts": _ms(ts)},
                    {"metric": "capacity", "value": 320, "ts": _ms(ts)},
                ]
            },
            [("occupied", ts), ("capacity", ts)],
        )
    for i in range(10):  # SenML packs of three depth samples in inches
        bt = t0 + timedelta(minutes=3 * i)
        s.add(
            "flood",
            "fl1",
            [
                {"bn": "urn:dev:yc:fl1:", "bt": bt.timestamp(), "bu": "in", "n": "depth", "v": 1.5},
                {"n": "depth", "t": 60, "v": 2},
                {"n": "depth", "t": 120, "v": 2.5},
            ],
            [("depth", bt + timedelta(seconds=k * 60)) for k in range(3)],
        )
    # one batch with one bad entry: the good ones are stored, the message is quarantined
    ts = t0 + timedelta(hours=1)
    s.add(
        "parking",
        "pk1",
        {
            "readings": [
                {"metric": "occupied", "value": 50, "ts": _ms(ts)},
                {"metric": "occupied", "value": -5, "ts": _ms(ts + timedelta(minutes=1))},
            ]
        },
        [("occupied", ts)],
        reason="out_of_range",
    )
    # bad messages, each with its reason
    s.add("air", "aq1", b'{"metric": "pm25", "value": ', reason="bad_json")
    s.add("air", "aq1", b"\xff\xfe\xfd", reason="bad_json")
    s.add("air", "aq1", {"metric": "pm25", "value": 30}, reason="bad_timestamp")
    s.add(
        "air",
        "aq1",
        {"metric": "pm25", "value": 30, "ts": _ms(datetime.now(UTC) + timedelta(days=1))},
        reason="future_timestamp",
    )
    s.add("air", "aq1", {"metric": "pm1", "value": 30, "ts": _ms(t0)}, reason="unknown_metric")
    s.add(
        "air", "aq1", {"metric": "co", "value": 3, "unit": "ppt", "ts": _ms(t0)}, reason="bad_unit"
    )
    s.add("air", "ghost-7", {"metric": "pm25", "value": 30, "ts": _ms(t0)}, reason="unknown_device")
    s.add("water", "aq1", {"metric": "flow", "value": 3, "ts": _ms(t0)}, reason="topic_mismatch")
    s.add(
        "air",
        "aq1",
        {"metric": "pm25", "value": 30, "ts": _ms(t0), "device": "aq2"},
        reason="topic_mismatch",
    )
    s.add("air", "aq1", b"[" + b"{}," * 100_000 + b"{}]", reason="oversize")
    s.add("air", "aq1", "not an object", reason="bad_schema")
    return s


def steady_stream(prefix: str, count: int, start: datetime | None = None) -> Stream:
    """`count` messages of three readings each (the water-meter shape), all distinct."""
    t0 = (start or datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    s = Stream(prefix)
    for i in range(count):
        ts = t0 + timedelta(seconds=i)
        s.add(
            "water",
            "wn1",
            {"ts": _ms(ts), "values": {"flow": 40 + i % 7, "pressure": 0.3, "volume": 1000 + i}},
            [("flow", ts), ("pressure", ts), ("volume", ts)],
        )
    return s
