"""Evaluation time per tick of the whole catalogue over a large fleet, beside its baseline.

    python -m bench.rules [--devices 10000] [--ticks 5] [--lateness 0] [--json FILE]
                          [--database-url URL]

Creates (and drops) its own database and provisions `--devices` devices in the shares of a
city (customer meters in DMAs with their inlet meters, depth gauges on carriageways, car parks
in zones, air stations measuring the six HJ 633 pollutants). It stores a day of customer and
inlet readings (the water balance needs whole days) and two hours of the others, up to 01:00
local time; 1 % of the inlet meters are stuck. Then it runs the catalogue (records, KPIs,
rules): a catching-up pass over the last 2 hours, which computes the day's records (water
balance after its 1 h delay, daily AQI) and the hour's, then `--ticks` passes one minute
apart as a live runner would (with `--lateness`, as `urbanpulse rules run` has by default with
120 s, each pass also evaluates the head for early firing). Baseline, in the same run: the
runner's own readings query for every alerting rule, alone (the floor any evaluation pays).
Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from rules import runner
from rules.runner import entities_of, fetch_series, run_pass
from urbanpulse.contract import default_registry
from urbanpulse.db.connect import drop_database, with_database
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.rulefmt.model import RuleSet, catalogue_files, load_rules

TZ = ZoneInfo("Asia/Shanghai")
POLLUTANTS = {"pm25": 60.0, "pm10": 90.0, "so2": 10.0, "no2": 40.0, "o3": 80.0, "co": 0.8}


def _fleet(devices: int) -> list[DeviceSpec]:
    """Shares of a city: 60 % customer meters, 25 % depth gauges, 10 % car parks, 5 % air
    stations, and one inlet meter per DMA of 300 customers."""
    specs: list[DeviceSpec] = []

    def add(
        dev: str, domain: str, kind: str, interval: int, zone: str | None, **kw: object
    ) -> None:
        specs.append(
            DeviceSpec(
                device_id=dev,
                domain=domain,
                kind=kind,
                name=dev,
                zone=zone,
                report_interval_s=interval,
                **kw,
            )
        )

    customers = int(devices * 0.60)
    dmas = max(1, customers // 300)
    for d in range(dmas):
        district = {"district": f"D{d % 3}"}
        add(f"in-{d:04d}", "water", "inlet_meter", 60, f"DMA-{d:04d}", attributes=district)
    for i in range(customers):
        add(f"cu-{i:06d}", "water", "customer_meter", 900, f"DMA-{i % dmas:04d}")
    for i in range(devices - customers - dmas - int(devices * 0.10) - int(devices * 0.05)):
        add(f"fl-{i:06d}", "flood", "depth_gauge", 60, "Z", attributes={"carriageway": True})
    for i in range(int(devices * 0.10)):
        add(f"pk-{i:06d}", "parking", "car_park", 300, f"PZ-{i % 10}", capacity=500.0)
    for i in range(int(devices * 0.05)):
        add(f"aq-{i:06d}", "air", "aq_station", 3600, "Z")
    return specs


def populate(
    url: str, devices: int, now: datetime, minutes_after: int, *, mass: bool = False
) -> tuple[int, int]:
    """Devices and readings up to `now` + the ticks; returns (devices, readings). `mass`: every
    depth gauge ponds at 20 cm from 10 minutes before `now` (thousands of alerts firing)."""
    rng = random.Random(7)  # noqa: S311 - benchmark data
    specs = _fleet(devices)
    end = now + timedelta(minutes=minutes_after)
    day_start = now - timedelta(hours=25)
    recent = now - timedelta(hours=2)
    flood = now - timedelta(minutes=10)
    n = 0
    with psycopg.connect(url) as conn:
        upsert_devices(conn, specs)
        with (
            conn.cursor() as cur,
            cur.copy("COPY readings (device_id, metric, ts, value) FROM STDIN") as copy,
        ):

            def series(dev: str, metric: str, since: datetime, step: int, value: object) -> int:
                t, k = since, 0
                while t <= end:
                    v = value(t) if callable(value) else value
                    copy.write_row((dev, metric, t, v))
                    t += timedelta(seconds=step)
                    k += 1
                return k

            for i, spec in enumerate(specs):
                dev, kind = spec.device_id, spec.kind
                if kind == "inlet_meter":
                    stuck = i % 100 == 0
                    n += series(
                        dev,
                        "flow",
                        day_start,
                        60,
                        5.0 if stuck else (lambda _t: 5 + 10 * rng.random()),
                    )
                elif kind == "customer_meter":
                    base = 1000 * rng.random()
                    n += series(
                        dev,
                        "volume",
                        day_start,
                        900,
                        lambda t, b=base: b + (t - day_start).total_seconds() / 3600 * 0.05,
                    )
                elif kind == "depth_gauge":
                    n += series(
                        dev,
                        "depth",
                        recent,
                        60,
                        lambda t: 20.0 if mass and t >= flood else 5 * rng.random(),
                    )
                elif kind == "car_park":
                    n += series(dev, "occupied", recent, 300, lambda _t: 500 * rng.random())
                else:
                    for metric, level in POLLUTANTS.items():
                        n += series(
                            dev,
                            metric,
                            day_start,
                            3600,
                            lambda _t, x=level: x * (0.5 + rng.random()),
                        )
        conn.commit()
    return len(specs), n


def _mass_ticks(conn: psycopg.Connection[Any], catalogue: RuleSet, start: datetime, n: int) -> None:
    """Ticks with thousands of alerts open, alternating batched writes and one transaction per
    alert (BATCH = 1, the baseline), so both see the same machine noise."""
    registry = default_registry()
    timed: dict[int, list[float]] = {runner.BATCH: [], 1: []}
    saved = runner.BATCH
    try:
        for k in range(1, 2 * n + 1):
            runner.BATCH = saved if k % 2 else 1
            at = start + timedelta(minutes=k)
            t = time.perf_counter()
            run_pass(conn, catalogue, registry, now=at, lateness_s=0, since=start, tz=TZ.key)
            timed[runner.BATCH].append(time.perf_counter() - t)
    finally:
        runner.BATCH = saved
    open_now = conn.execute("SELECT count(*) FROM alerts WHERE status = 'firing'").fetchone()
    batched, single = statistics.median(timed[saved]), statistics.median(timed[1])
    print(
        f"  mass event, {open_now[0] if open_now else 0:,} alerts firing: median per tick "
        f"{batched:.2f} s with batched writes ({saved} per transaction), {single:.2f} s with one "
        f"transaction per alert; ratio {single / batched:.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench rules", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--mass",
        action="store_true",
        help="every depth gauge ponds: thousands of alerts firing; ticks alternate batched "
        "alert writes with one transaction per alert (the baseline)",
    )
    parser.add_argument(
        "--lateness",
        type=float,
        default=0.0,
        help="allowed lateness of the live passes, seconds (the runner's default is 120: the "
        "passes then also evaluate the head, from the watermark to now, for early firing)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    registry = default_registry()
    catalogue = load_rules(catalogue_files(), registry)
    rules = catalogue.rules
    url = with_database(args.database_url, f"up_rules_bench_{int(time.time())}")
    now = datetime(2026, 11, 26, 1, 0, tzinfo=TZ)
    migrate(url, load_policy(), timescale_mode="off")
    try:
        t = time.perf_counter()
        fleet, n = populate(
            url, args.devices, now, args.ticks * (2 if args.mass else 1), mass=args.mass
        )
        print(
            f"rules benchmark: {len(catalogue.records)} records, {len(catalogue.kpis)} KPIs and "
            f"{len(rules)} rules, {fleet:,} devices, {n:,} readings "
            f"(stored in {time.perf_counter() - t:.1f} s)",
            flush=True,
        )
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            first = run_pass(
                conn,
                catalogue,
                registry,
                now=now,
                lateness_s=0,
                since=now - timedelta(hours=2),
                tz=TZ.key,
            )
            catch_up = time.perf_counter() - t
            slow = sorted(first.rules, key=lambda r: -r.duration_ms)[:5]
            print(
                f"  catching up 2 h, with the day's records: {catch_up:.2f} s "
                f"(slowest: {', '.join(f'{r.rule_id} {r.duration_ms:.0f} ms' for r in slow)})",
                flush=True,
            )
            counts = conn.execute(
                "SELECT series, count(*) FROM recorded GROUP BY 1 ORDER BY 1"
            ).fetchall()
            print("  recorded: " + ", ".join(f"{s} {c}" for s, c in counts), flush=True)
            ticks: list[float] = []
            floors: list[float] = []
            for k in range(1, args.ticks + 1):
                at = now + timedelta(minutes=k)
                t = time.perf_counter()
                report = run_pass(
                    conn, catalogue, registry, now=at, lateness_s=args.lateness, since=now,
                    tz=TZ.key,
                )  # fmt: skip
                ticks.append(time.perf_counter() - t)
                t = time.perf_counter()
                for rule in rules:  # baseline: the same readings query, nothing else
                    devices = entities_of(conn, rule, registry)
                    if devices:
                        fetch_series(conn, rule, devices, at.timestamp() - 60, at.timestamp())
                floors.append(time.perf_counter() - t)
                slow = sorted(report.rules, key=lambda r: -r.duration_ms)[:4]
                per_rule = ", ".join(f"{r.rule_id} {r.duration_ms:.0f} ms" for r in slow)
                print(f"  tick {k}: {ticks[-1]:.2f} s ({per_rule}); baseline {floors[-1]:.2f} s")
            if args.mass:
                _mass_ticks(conn, catalogue, now + timedelta(minutes=args.ticks), args.ticks)
            firing = conn.execute(
                "SELECT rule_id, count(*) FROM alerts WHERE status = 'firing' GROUP BY 1"
            ).fetchall()
        assert not first.failed and not report.failed
        tick, floor = statistics.median(ticks), statistics.median(floors)
        print(
            f"median per tick: {tick:.2f} s for the catalogue over {fleet:,} devices; "
            f"baseline (readings queries alone) {floor:.2f} s; ratio {tick / floor:.1f}"
        )
        print("firing: " + ", ".join(f"{r} {n}" for r, n in firing))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "date": datetime.now(UTC).isoformat(timespec="seconds"),
                        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                        "devices": fleet,
                        "readings": n,
                        "rules": len(rules),
                        "records": len(catalogue.records),
                        "kpis": len(catalogue.kpis),
                        "lateness_s": args.lateness,
                        "catch_up_s": round(catch_up, 2),
                        "tick_s": [round(t, 3) for t in ticks],
                        "baseline_s": [round(f, 3) for f in floors],
                        "median_tick_s": round(tick, 3),
                        "median_baseline_s": round(floor, 3),
                        "ratio": round(tick / floor, 2),
                        "firing": dict(firing),
                    },
                    indent=1,
                )
            )
            print(f"wrote {args.json}")
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
