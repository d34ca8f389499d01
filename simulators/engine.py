"""The simulation engine: who reports when, what they measure, how faults bend it, and the
MQTT messages that result.

`Engine.advance(until)` walks simulated time forward and returns the messages due, in
measurement-time order. It is deterministic: the same city, scenario, seed, start and device
set give the same bytes, however the caller paces publishing or splits the fleet into shards.
Each message carries the simulator's own account of what ingest should do with it (the
readings it should store, or the reason it should be quarantined), so tests can hold the
pipeline to it.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simulators import noise
from simulators.city import City, SimDevice
from simulators.models import (
    AirModel,
    FloodModel,
    LocalClock,
    ParkingModel,
    WaterModel,
    holidays,
)
from simulators.scenario import (
    Backlog,
    ClockReset,
    ClockSkew,
    Duplicate,
    Malformed,
    OutOfOrder,
    OutOfRange,
    Scenario,
    Silent,
    Stuck,
)
from urbanpulse.errors import ContractError

WINDOW_S = 60.0  # simulated seconds handled per scheduling step


@dataclass(slots=True)
class Sample:
    """What one device measured at one time (canonical units)."""

    device: SimDevice
    t: float  # measurement time, epoch seconds
    values: dict[str, float]
    ts: float | None = None  # the time the device *says* (clock faults); default t


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message, with what ingest should make of it."""

    topic: str
    payload: bytes
    sent_at: float  # simulated time it goes out (pacing)
    device_id: str
    stores: tuple[tuple[str, int], ...]  # (metric, ts in ms) ingest should store from it
    quarantine: str | None = None  # the reason ingest should quarantine it with, if any
    fault: str | None = None  # the fault that shaped it

    @property
    def readings(self) -> int:
        return len(self.stores)


@dataclass
class Stats:
    """What the engine produced, and what faults withheld."""

    messages: int = 0
    readings: int = 0
    by_domain: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    faults: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lost_readings: int = 0  # readings a fault made the device never send (silent, malformed)


def _ms(t: float) -> int:
    return round(t * 1000)


class Engine:
    """Generates a shard of the fleet's messages for a scenario, in simulated-time order."""

    def __init__(
        self,
        city: City,
        scenario: Scenario,
        *,
        seed: int,
        start: float,
        devices: list[SimDevice],
        customer_counts: dict[str, int],
        prefix: str = "yc/v1",
    ) -> None:
        self.city = city
        self.scenario = scenario
        self.seed = seed
        self.start = start
        self.prefix = prefix
        self.devices = devices
        self.clock = LocalClock(city.timezone, start, holidays(scenario))
        self.water = WaterModel(
            city, scenario, seed=seed, start=start, counts=customer_counts, clock=self.clock
        )
        self.flood = FloodModel(city, scenario, seed, start)
        self.air = AirModel(city, scenario, seed, start, self.clock)
        self.parking = ParkingModel(city, seed, self.clock)
        self.co_unit = {f"aq-{s.id}": s.co_unit for s in city.air.stations}
        self.pos = start
        self.stats = Stats()
        # schedule: per interval, devices sorted by their phase within it
        groups: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for i, d in enumerate(devices):
            phase = (
                0.0
                if d.kind == "aq_station"
                else float(int(noise.unit(seed, noise.key(d.device_id), 7) * d.interval_s))
            )
            groups[d.interval_s].append((phase, i))
        self.schedule = {k: sorted(v) for k, v in groups.items()}
        self.phases = {k: [p for p, _ in v] for k, v in self.schedule.items()}
        known = {d.device_id for d in devices}
        self.faults = FaultLayer(
            scenario, start, encode=self._encode, encode_batch=self.encode_batch, topic=self.topic
        )
        self.faults.only(known)

    # --- scheduling ----------------------------------------------------------------------------

    def _due(self, a: float, b: float) -> list[tuple[float, int]]:
        due: list[tuple[float, int]] = []
        for interval, entries in self.schedule.items():
            phases = self.phases[interval]
            cycle = (a // interval) * interval
            while cycle < b:
                lo = bisect.bisect_left(phases, a - cycle)
                hi = bisect.bisect_left(phases, b - cycle)
                due.extend((cycle + entries[j][0], entries[j][1]) for j in range(lo, hi))
                cycle += interval
        due.sort()
        return due

    def advance(self, until: float) -> list[Message]:
        """Messages of every report with measurement time in [position, until)."""
        out: list[Message] = []
        while self.pos < until:
            b = min(until, self.pos + WINDOW_S)
            for t, i in self._due(self.pos, b):
                dev = self.devices[i]
                out.extend(self.faults.apply(Sample(dev, t, self.measure(dev, t))))
            self.pos = b
        self._count(out)
        return out

    def finish(self) -> list[Message]:
        """Whatever faults still hold back (a backlog never uploaded, a held out-of-order one)."""
        out = self.faults.flush(self.pos)
        self._count(out)
        return out

    def _count(self, messages: Iterable[Message]) -> None:
        for m in messages:
            self.stats.messages += 1
            self.stats.readings += m.readings
            self.stats.by_domain[m.topic.rsplit("/", 2)[1]] += 1
        for k, v in self.faults.counts.items():
            self.stats.faults[k] = v
        self.stats.lost_readings = self.faults.lost

    # --- physics -------------------------------------------------------------------------------

    def measure(self, dev: SimDevice, t: float) -> dict[str, float]:
        kind = dev.kind
        if kind == "customer_meter":
            return {"volume": round(self.water.customer(dev, t), 4)}
        if kind == "inlet_meter":
            got = self.water.inlet(dev, t)
            return {"flow": round(got["flow"], 4), "pressure": round(got["pressure"], 4)}
        if kind == "rain_gauge":
            got = self.flood.rain(dev, t)
            return {"rain_rate": round(got["rain_rate"], 2), "rainfall": round(got["rainfall"], 3)}
        if kind == "depth_gauge":
            depth = self.flood.ponding(dev, t)
            jitter = 0.15 * noise.gauss(self.seed, noise.key(dev.device_id), int(t))
            return {"depth": round(max(0.0, depth + jitter) if depth > 0 else 0.0, 2)}
        if kind == "aq_station":
            return self.air.sample(dev, t)
        if kind == "car_park":
            return self.parking.sample(dev, t)
        raise ContractError(f"no model for device kind {kind!r}")

    # --- encoding ------------------------------------------------------------------------------

    def topic(self, dev: SimDevice) -> str:
        return f"{self.prefix}/{dev.domain}/{dev.device_id}"

    def _encode(self, sample: Sample) -> bytes:
        """The payload form each kind of device uses (all forms of the contract appear)."""
        dev, v = sample.device, sample.values
        ts = _ms(sample.ts if sample.ts is not None else sample.t)
        body: Any
        if dev.kind == "customer_meter":  # the bulk of a large fleet: formatted directly
            return b'{"metric":"volume","value":%r,"unit":"m3","ts":%d}' % (v["volume"], ts)
        if dev.kind == "inlet_meter":
            values: dict[str, Any] = dict(v)
            if "flow" in values:
                values["flow"] = {"value": round(values["flow"] / 3.6, 5), "unit": "L/s"}
            body = {"ts": ts, "values": values}
        elif dev.kind == "depth_gauge":
            body = [
                {"bn": f"urn:dev:yc:{dev.device_id}:", "bt": ts / 1000, "n": m, "u": "cm", "v": x}
                for m, x in v.items()
            ]
        elif dev.kind == "aq_station":
            values = dict(v)
            if "co" in values and self.co_unit.get(dev.device_id) == "ug/m3":
                values["co"] = {"value": round(values["co"] * 1000), "unit": "ug/m3"}
            body = {"ts": ts, "values": values}
        elif dev.kind == "car_park":
            body = {"readings": [{"metric": m, "value": x, "ts": ts} for m, x in v.items()]}
        else:
            body = {"ts": ts, "values": v}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def encode_batch(self, samples: list[Sample]) -> bytes:
        """A backlog upload: one batch message with every held reading."""
        readings = [
            {"metric": m, "value": x, "ts": _ms(s.ts if s.ts is not None else s.t)}
            for s in samples
            for m, x in s.values.items()
        ]
        return json.dumps({"readings": readings}, separators=(",", ":")).encode()


class FaultLayer:
    """Applies the scenario's device faults to samples and turns samples into messages."""

    def __init__(
        self,
        scenario: Scenario,
        start: float,
        *,
        encode: Callable[[Sample], bytes],
        encode_batch: Callable[[list[Sample]], bytes],
        topic: Callable[[SimDevice], str],
    ) -> None:
        self.start = start
        self.encode = encode
        self.encode_batch = encode_batch
        self.topic_of = topic
        self.by_device: dict[str, list[Any]] = defaultdict(list)
        for e in scenario.device_faults():
            self.by_device[e.device].append(e)
        self.frozen: dict[tuple[str, float], dict[str, float]] = {}
        self.fired: set[int] = set()  # one-shot faults already applied (by id)
        self.malformed_left: dict[int, int] = {}
        self.backlog: dict[str, tuple[Backlog, list[Sample]]] = {}
        self.held: dict[str, Message] = {}
        self.counts: dict[str, int] = defaultdict(int)
        self.lost = 0

    def only(self, devices: set[str]) -> None:
        """Keep the faults of the devices this shard simulates."""
        self.by_device = defaultdict(
            list, {k: v for k, v in self.by_device.items() if k in devices}
        )

    def _window(self, e: Any, t: float) -> bool:
        a = self.start + e.at
        return bool(a <= t < a + e.duration)

    def _message(self, sample: Sample, payload: bytes, **kw: Any) -> Message:
        dev = sample.device
        ts = sample.ts if sample.ts is not None else sample.t
        stores = kw.pop("stores", tuple((m, _ms(ts)) for m in sample.values))
        return Message(
            topic=self.topic_of(dev),
            payload=payload,
            sent_at=sample.t,
            device_id=dev.device_id,
            stores=stores,
            **kw,
        )

    def apply(self, sample: Sample) -> list[Message]:
        faults = self.by_device.get(sample.device.device_id)
        if not faults:
            return [self._message(sample, self.encode(sample))]
        dev_id = sample.device.device_id
        out: list[Message] = []
        fault: str | None = None
        quarantine: str | None = None
        stores: tuple[tuple[str, int], ...] | None = None
        for e in faults:
            if isinstance(e, Stuck) and self._window(e, sample.t):
                key = (dev_id, e.at)
                sample.values = dict(self.frozen.setdefault(key, dict(sample.values)))
                fault = "stuck"
            elif isinstance(e, ClockSkew) and self._window(e, sample.t):
                sample.ts = sample.t + e.offset_s
                fault = "clock_skew"
            elif isinstance(e, ClockReset) and self._window(e, sample.t):
                sample.ts = sample.t - (self.start + e.at)  # seconds since the reset, from 1970
                fault, quarantine, stores = "clock_reset", "bad_timestamp", ()
            elif (
                isinstance(e, OutOfRange)
                and id(e) not in self.fired
                and sample.t >= self.start + e.at
            ) and e.metric in sample.values:
                self.fired.add(id(e))
                sample.values = {**sample.values, e.metric: e.value}
                ts = _ms(sample.ts if sample.ts is not None else sample.t)
                fault, quarantine = "out_of_range", "out_of_range"
                stores = tuple((m, ts) for m in sample.values if m != e.metric)
        for e in faults:
            if isinstance(e, Silent) and self._window(e, sample.t):
                self.counts["silent"] += 1
                self.lost += len(sample.values)
                return []
            if isinstance(e, Backlog) and self._window(e, sample.t):
                self.backlog.setdefault(dev_id, (e, []))[1].append(sample)
                return []
            if isinstance(e, Malformed) and sample.t >= self.start + e.at:
                left = self.malformed_left.setdefault(id(e), e.count)
                if left > 0:
                    self.malformed_left[id(e)] = left - 1
                    self.counts["malformed"] += 1
                    self.lost += len(sample.values)
                    payload = self.encode(sample)
                    return [
                        self._message(
                            sample,
                            payload[: max(1, len(payload) // 2)],
                            stores=(),
                            quarantine="bad_json",
                            fault="malformed",
                        )
                    ]
        if dev_id in self.backlog:  # back online: the batch goes first
            _, held = self.backlog.pop(dev_id)
            out.append(self._batch(held, sample.t))
        msg = self._message(
            sample,
            self.encode(sample),
            quarantine=quarantine,
            fault=fault,
            **({"stores": stores} if stores is not None else {}),
        )
        if fault:
            self.counts[fault] += 1
        for e in faults:
            if isinstance(e, Duplicate) and self._window(e, sample.t):
                self.counts["duplicate"] += 1
                dup = Message(
                    msg.topic,
                    msg.payload,
                    msg.sent_at,
                    msg.device_id,
                    (),
                    msg.quarantine,
                    "duplicate",
                )
                return [*out, msg, dup]
            if isinstance(e, OutOfOrder) and self._window(e, sample.t):
                if dev_id in self.held:
                    earlier = self.held.pop(dev_id)
                    self.counts["out_of_order"] += 1
                    return [*out, msg, earlier]
                self.held[dev_id] = msg
                return out
        if dev_id in self.held:  # the window closed while one was held
            out.append(self.held.pop(dev_id))
        out.append(msg)
        return out

    def _batch(self, held: list[Sample], sent_at: float) -> Message:
        self.counts["backlog"] += 1
        first = held[0]
        payload = self.encode_batch(held)
        stores = tuple((m, _ms(s.ts if s.ts is not None else s.t)) for s in held for m in s.values)
        return Message(
            self.topic_of(first.device),
            payload,
            sent_at,
            first.device.device_id,
            stores,
            None,
            "backlog",
        )

    def flush(self, now: float) -> list[Message]:
        out = [self._batch(held, now) for _, held in self.backlog.values()]
        self.backlog.clear()
        out.extend(self.held.values())
        self.held.clear()
        return out
