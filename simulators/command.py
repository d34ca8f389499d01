"""What `urbanpulse simulate` prints: the plan, live progress, and what was published."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from simulators.city import load_city
from simulators.run import (
    FAST_STEP_S,
    Plan,
    RunResult,
    engine_for,
    make_plan,
    provision,
    run,
    write_fleet,
)
from simulators.scenario import Scenario, load_scenario, scenario_names
from urbanpulse.broker import parse_broker_url
from urbanpulse.settings import Settings


def _say(text: str = "") -> None:
    print(text, flush=True)


def _fmt_offset(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    return f"{days}d {rest // 3600:02d}:{rest % 3600 // 60:02d}"


def list_scenarios() -> int:
    for name in scenario_names():
        sc = load_scenario(name)
        _say(f"{name:<16} {_fmt_offset(sc.span):>9}  {sc.title.zh} / {sc.title.en}")
    return 0


def describe(plan: Plan) -> None:
    sc = plan.scenario
    tz = ZoneInfo(plan.city.timezone)

    def local(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")

    pace = (
        "as fast as the broker takes it"
        if plan.speed is None
        else f"{plan.speed:g}× real time (≈{sc.span / plan.speed:.0f} s)"
    )
    _say(f"▶ scenario {sc.name}: {sc.title.zh} / {sc.title.en}")
    _say(f"  simulated {local(plan.start)} → {local(plan.end)}, {pace}, seed {plan.seed}")
    if sc.expect:
        _say("  alerts this scenario is built to raise (rule, entity, from / until):")
        for e in sc.expect:
            until = f" until {_fmt_offset(e.resolves)}" if e.resolves is not None else ""
            _say(f"    {e.rule:<26} {e.entity:<18} from {_fmt_offset(e.fires)}{until}")


def summary(result: RunResult, plan: Plan) -> None:
    rate = result.messages / result.elapsed_s if result.elapsed_s > 0 else 0.0
    _say(
        f"■ published {result.messages:,} messages ({result.readings:,} readings) from "
        f"{result.devices:,} devices in {result.elapsed_s:.1f} s: {rate:,.0f} msg/s "
        f"sustained over {plan.processes} process(es)"
        + (" — interrupted" if result.interrupted else "")
    )
    if plan.processes > 1:
        for s in result.shards:
            r = s.messages / s.elapsed_s if s.elapsed_s else 0.0
            _say(f"    process {s.index}: {s.devices:,} devices, {s.messages:,} msgs, {r:,.0f}/s")
    by_domain = result.total("by_domain")
    _say("  by domain: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_domain.items())))
    faults = result.total("faults")
    if faults:
        lost = sum(s.lost_readings for s in result.shards)
        _say(
            "  faults injected: "
            + ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))
            + f" ({lost} readings never sent)"
        )


def dry_run(plan: Plan) -> int:
    """Generate every shard and count, holding no more than one step of messages at a time."""
    started = time.monotonic()
    messages = readings = quarantined = 0
    for shard in range(plan.processes):
        engine = engine_for(plan, shard)
        while engine.pos < plan.end:
            if plan.max_real_s is not None and time.monotonic() - started > plan.max_real_s:
                break
            step = engine.advance(min(plan.end, engine.pos + FAST_STEP_S))
            if engine.pos >= plan.end:
                step += engine.finish()
            messages += len(step)
            readings += sum(m.readings for m in step)
            quarantined += sum(1 for m in step if m.quarantine)
    elapsed = time.monotonic() - started
    _say(
        f"■ dry run: {messages:,} messages, {readings:,} readings to store, {quarantined} "
        f"message(s) that ingest should quarantine; generated in {elapsed:.1f} s "
        f"({messages / max(elapsed, 1e-9):,.0f} msg/s)"
    )
    return 0


def simulate_command(
    settings: Settings,
    *,
    scenario: str,
    seed: int,
    speed: float | None,
    fast: bool,
    live: bool,
    start: datetime | None,
    duration: float | None,
    devices: int | None,
    processes: int,
    qos: int,
    do_provision: bool,
    dry: bool,
    fleet_file: Path | None,
    city_file: Path | None,
) -> int:
    sc: Scenario = load_scenario(scenario)
    city = load_city(city_file)
    plan = make_plan(
        settings,
        sc,
        seed=seed,
        speed=speed,
        fast=fast,
        live=live,
        start=start,
        scale_to=devices,
        processes=processes,
        qos=qos,
        city=city,
        max_real_s=duration,
    )
    fleet = plan.fleet()
    if fleet_file is not None:
        write_fleet(fleet_file, fleet)
        _say(f"wrote {len(fleet):,} devices to {fleet_file} (`urbanpulse devices import` reads it)")
        return 0
    describe(plan)
    if dry:
        return dry_run(plan)
    if do_provision:
        t0 = time.monotonic()
        created, updated = provision(settings.database_url, fleet)
        _say(
            f"  provisioned {len(fleet):,} devices ({created:,} new, {updated:,} updated) "
            f"in {time.monotonic() - t0:.1f} s"
        )
    _say(f"  publishing to {parse_broker_url(settings.mqtt_url)} (QoS {qos})")
    stop = threading.Event()
    last = [time.monotonic(), 0]
    t_start = time.monotonic()

    def progress(messages: int, reached: float) -> None:
        now = time.monotonic()
        if now - last[0] < 5.0:
            return
        rate = (messages - last[1]) / (now - last[0])
        last[0], last[1] = now, messages
        done = (reached - plan.start) / (plan.end - plan.start)
        print(
            f"  t+{now - t_start:4.0f}s  simulated +{_fmt_offset(reached - plan.start)} "
            f"({done:4.0%})  {messages:>10,} msgs  {rate:>8,.0f} msg/s",
            file=sys.stderr,
            flush=True,
        )

    try:
        result = run(plan, stop=stop, on_progress=progress)
    except KeyboardInterrupt:
        stop.set()
        return 130
    summary(result, plan)
    return 130 if result.interrupted else 0
