"""`urbanpulse simulate`: run a scenario over the fleet and publish it over MQTT.

Time: the scenario covers `span` of simulated time from a local midnight, placed so that it
ends no later than now (measurement times are never in the future). With `speed` S, one real
second publishes S simulated seconds of readings; `fast` publishes as fast as the broker
takes them; `live` starts now and runs at real time.

Scale: the fleet is split round-robin over `processes` publisher processes, each with its own
MQTT connection; every process reports what it published and the run sums them up.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from simulators.city import City, SimDevice, build_fleet, customers_per_dma, load_city
from simulators.engine import Engine, Message
from simulators.models import local_midnight_before
from simulators.publisher import Publisher
from simulators.scenario import Scenario
from urbanpulse.broker import parse_broker_url
from urbanpulse.db.connect import connect
from urbanpulse.db.devices import upsert_devices
from urbanpulse.errors import ConfigError
from urbanpulse.settings import Settings

log = logging.getLogger(__name__)

FAST_STEP_S = 60.0  # simulated seconds generated per step when publishing as fast as possible
PROGRESS_EVERY_S = 5.0
HOLD_EVERY = 200  # messages between two back-pressure checks


@dataclass(frozen=True)
class Plan:
    """Everything a publisher process needs to produce its shard (picklable)."""

    scenario: Scenario
    city: City
    seed: int
    start: float  # epoch seconds, a local midnight unless live
    end: float
    speed: float | None  # simulated seconds per real second; None: as fast as possible
    scale_to: int | None
    processes: int
    prefix: str
    qos: int
    mqtt_url: str
    max_real_s: float | None = None  # stop after this many real seconds

    def fleet(self) -> list[SimDevice]:
        return build_fleet(self.city, self.scale_to)

    def shard(self, index: int) -> list[SimDevice]:
        return self.fleet()[index :: self.processes]


@dataclass
class ShardResult:
    index: int
    devices: int
    messages: int = 0
    readings: int = 0
    quarantined: int = 0  # messages the simulator expects ingest to quarantine
    elapsed_s: float = 0.0
    sim_reached: float = 0.0
    by_domain: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    lost_readings: int = 0
    error: str | None = None


@dataclass
class RunResult:
    shards: list[ShardResult]
    elapsed_s: float
    interrupted: bool = False

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.shards)

    @property
    def readings(self) -> int:
        return sum(s.readings for s in self.shards)

    @property
    def quarantined(self) -> int:
        return sum(s.quarantined for s in self.shards)

    @property
    def devices(self) -> int:
        return sum(s.devices for s in self.shards)

    def total(self, attr: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for s in self.shards:
            for k, v in getattr(s, attr).items():
                out[k] += v
        return dict(out)


def make_plan(
    settings: Settings,
    scenario: Scenario,
    *,
    seed: int = 7,
    speed: float | None = None,
    fast: bool = False,
    live: bool = False,
    start: datetime | None = None,
    scale_to: int | None = None,
    processes: int = 1,
    qos: int = 1,
    city: City | None = None,
    max_real_s: float | None = None,
    now: float | None = None,
) -> Plan:
    city = city or load_city()
    now = time.time() if now is None else now
    if live:
        begin = now if start is None else start.timestamp()
        rate: float | None = 1.0
    else:
        rate = None if fast else (speed or scenario.speed)
        begin = (
            start.timestamp()
            if start is not None
            else local_midnight_before(now - scenario.span, city.timezone)
        )
    end = begin + scenario.span
    if not live and end > now + 1:
        raise ConfigError(
            f"the scenario would end at {_local(end, city)}, in the future; measurement times "
            "must not be (give an earlier --start, or --live)"
        )
    if processes < 1:
        raise ConfigError("--processes must be at least 1")
    return Plan(
        scenario=scenario,
        city=city,
        seed=seed,
        start=begin,
        end=end,
        speed=rate,
        scale_to=scale_to,
        processes=processes,
        prefix=settings.topic_prefix,
        qos=qos,
        mqtt_url=settings.mqtt_url,
        max_real_s=max_real_s,
    )


def _local(t: float, city: City) -> str:
    return (
        datetime.fromtimestamp(t, UTC)
        .astimezone(ZoneInfo(city.timezone))
        .strftime("%Y-%m-%d %H:%M")
    )


def generate(plan: Plan, shard: int = 0) -> tuple[list[Message], Engine]:
    """Every message of a shard at once, without a broker (tests, dry runs)."""
    engine = engine_for(plan, shard)
    messages = engine.advance(plan.end)
    messages += engine.finish()
    return messages, engine


def engine_for(plan: Plan, shard: int) -> Engine:
    return Engine(
        plan.city,
        plan.scenario,
        seed=plan.seed,
        start=plan.start,
        devices=plan.shard(shard),
        customer_counts=customers_per_dma(plan.city, plan.scale_to),
        prefix=plan.prefix,
    )


Progress = Callable[[int, int, float], None]  # (shard, messages so far, simulated time reached)


def run_shard(
    plan: Plan,
    index: int,
    stop: threading.Event | Any,
    progress: Progress | None = None,
    hold: Callable[[int], bool] | None = None,
) -> ShardResult:
    """Publish one shard of the fleet, paced by the plan; returns what was published."""
    engine = engine_for(plan, index)
    result = ShardResult(index=index, devices=len(engine.devices))
    broker = parse_broker_url(plan.mqtt_url)
    started = time.monotonic()
    last_report = 0.0
    with Publisher(broker, client_id=f"urbanpulse-sim-{os.getpid()}-{index}", qos=plan.qos) as pub:

        def send(messages: list[Message]) -> None:
            for m in messages:
                pub.publish(m.topic, m.payload)
                result.messages += 1
                result.readings += m.readings
                result.quarantined += m.quarantine is not None
                if hold is not None and result.messages % HOLD_EVERY == 0:
                    # back-pressure: wait while the consumer is too far behind
                    while hold(result.readings) and not stop.is_set():
                        pub.idle(0.05)

        while engine.pos < plan.end and not stop.is_set():
            elapsed = time.monotonic() - started
            if plan.max_real_s is not None and elapsed >= plan.max_real_s:
                break
            if plan.speed is None:
                target = min(plan.end, engine.pos + FAST_STEP_S)
            else:
                target = min(plan.end, plan.start + elapsed * plan.speed, time.time())
            send(engine.advance(target))
            if progress and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(index, result.messages, engine.pos)
            if plan.speed is not None and engine.pos < plan.end:
                pub.idle(0.1)
        if not stop.is_set() and engine.pos >= plan.end:
            send(engine.finish())
        pub.flush()
    result.elapsed_s = time.monotonic() - started
    result.sim_reached = engine.pos
    result.by_domain = dict(engine.stats.by_domain)
    result.faults = dict(engine.stats.faults)
    result.lost_readings = engine.stats.lost_readings
    if progress:
        progress(index, result.messages, engine.pos)
    return result


def _child(plan: Plan, index: int, stop: Any, out: Any) -> None:
    """Entry point of a publisher process: progress and the result go back on a queue."""
    logging.basicConfig(level=logging.WARNING)

    def progress(shard: int, messages: int, reached: float) -> None:
        out.put(("progress", shard, messages, reached))

    try:
        result = run_shard(plan, index, stop, progress)
    except KeyboardInterrupt:
        result = ShardResult(index=index, devices=0, error="interrupted")
    except Exception as exc:  # the parent reports it; a shard must not fail silently
        result = ShardResult(index=index, devices=0, error=f"{type(exc).__name__}: {exc}")
    out.put(("done", result))


def run(
    plan: Plan,
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, float], None] | None = None,
    hold: Callable[[int], bool] | None = None,
) -> RunResult:
    """Run the plan in this process (one shard) or in `plan.processes` processes.

    `hold(readings published so far)` is asked every few hundred messages (one process only)
    and publishing waits while it says so: back-pressure from a consumer that falls behind."""
    stop = stop or threading.Event()
    started = time.monotonic()
    if plan.processes == 1:
        done: dict[int, int] = {}

        def progress(shard: int, messages: int, reached: float) -> None:
            done[shard] = messages
            if on_progress:
                on_progress(messages, reached)

        shard = run_shard(plan, 0, stop, progress, hold)
        return RunResult([shard], time.monotonic() - started, interrupted=stop.is_set())
    if hold is not None:
        raise ConfigError("back-pressure (hold) needs a single publisher process")
    ctx = mp.get_context("spawn")
    mp_stop = ctx.Event()
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(plan, i, mp_stop, out), daemon=True)
        for i in range(plan.processes)
    ]
    for p in procs:
        p.start()
    results: dict[int, ShardResult] = {}
    counts: dict[int, int] = {}
    reached: dict[int, float] = {}
    interrupted = False
    try:
        while len(results) < len(procs):
            if stop.is_set():
                mp_stop.set()
            try:
                item = out.get(timeout=0.5)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and out.empty():
                    break
                continue
            if item[0] == "progress":
                _, shard, messages, at = item
                counts[shard], reached[shard] = messages, at
                if on_progress:
                    on_progress(sum(counts.values()), min(reached.values()))
            else:
                results[item[1].index] = item[1]
    except KeyboardInterrupt:
        interrupted = True
        mp_stop.set()
        while len(results) < len(procs):
            try:
                item = out.get(timeout=10)
            except queue.Empty:
                break
            if item[0] == "done":
                results[item[1].index] = item[1]
    for p in procs:
        p.join(timeout=10)
    missing = [i for i in range(plan.processes) if i not in results]
    for i in missing:
        results[i] = ShardResult(index=i, devices=0, error="publisher process died")
    errors = [f"shard {r.index}: {r.error}" for r in results.values() if r.error]
    if errors and not interrupted:
        raise ConfigError("simulation failed: " + "; ".join(errors))
    return RunResult(
        [results[i] for i in sorted(results)],
        time.monotonic() - started,
        interrupted=interrupted or stop.is_set(),
    )


# --- provisioning ------------------------------------------------------------------------------


def provision(database_url: str, devices: list[SimDevice]) -> tuple[int, int]:
    """Create or update the fleet in the device registry; returns (created, updated)."""
    with connect(database_url) as conn:
        result = upsert_devices(conn, [d.spec() for d in devices])
    return result.created, result.updated


def write_fleet(path: Path, devices: list[SimDevice]) -> None:
    """The fleet as a device file `urbanpulse devices import` reads (CSV or YAML by suffix)."""
    specs = [d.spec().model_dump() for d in devices]
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            cols = [k for k in specs[0] if k != "attributes"] + ["attributes"]
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            for s in specs:
                writer.writerow(
                    {**s, "attributes": json.dumps(s["attributes"], ensure_ascii=False)}
                )
        return
    path.write_text(
        yaml.safe_dump({"devices": specs}, allow_unicode=True, sort_keys=False), "utf-8"
    )
