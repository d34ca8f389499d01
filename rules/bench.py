"""Evaluation time per tick of the rule catalogue over a large fleet, beside its baseline.

    python -m rules.bench [--devices 10000] [--ticks 5] [--database-url URL]

Creates (and drops) its own database, provisions `--devices` devices spread over the kinds the
catalogue reads (inlet meters, depth gauges on carriageways, air stations, car parks), stores
an hour of readings for each at its reporting interval, and the minutes of the ticks (1 % of
the flow meters stuck), then
runs the catalogue: one catching-up pass over 30 minutes, then `--ticks` passes one minute
apart, as a live runner would. Baseline, in the same run: the runner's own readings query for
every rule, alone (the floor any evaluation pays). Prints medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg

from rules.model import catalogue_files, load_rule_files
from rules.runner import entities_of, fetch_series, run_pass
from urbanpulse.contract import Reading, default_registry
from urbanpulse.db.connect import drop_database, with_database
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.db.store import store_batch

KINDS = [  # (kind, domain, metric, interval s, attributes, share of the fleet)
    ("inlet_meter", "water", "flow", 60, {}, 0.4),
    ("depth_gauge", "flood", "depth", 60, {"carriageway": True}, 0.3),
    ("car_park", "parking", "occupied", 300, {}, 0.2),
    ("aq_station", "air", "pm25", 3600, {}, 0.1),
]


def populate(url: str, devices: int, now: datetime, minutes_after: int) -> int:
    rng = random.Random(7)  # noqa: S311 - benchmark data
    specs: list[DeviceSpec] = []
    readings: list[Reading] = []
    for kind, domain, metric, interval, attrs, share in KINDS:
        for i in range(int(devices * share)):
            dev = f"{kind[:2]}-{i:06d}"
            specs.append(
                DeviceSpec(
                    device_id=dev,
                    domain=domain,
                    kind=kind,
                    name=dev,
                    report_interval_s=interval,
                    attributes=attrs,
                )
            )
            stuck = kind == "inlet_meter" and i % 100 == 0
            for k in range((3600 + 60 * minutes_after) // interval + 1):
                value = 5.0 if stuck else 5 + 10 * rng.random()
                at = now - timedelta(seconds=3600 - k * interval)
                readings.append(Reading(dev, metric, at, value))
    with psycopg.connect(url) as conn:
        upsert_devices(conn, specs)
        for j in range(0, len(readings), 50_000):
            store_batch(conn, readings[j : j + 50_000], [])
    return len(readings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    registry = default_registry()
    rules = load_rule_files(catalogue_files(), registry)
    url = with_database(args.database_url, f"up_rules_bench_{int(time.time())}")
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    migrate(url, load_policy(), timescale_mode="off")
    try:
        t = time.perf_counter()
        n = populate(url, args.devices, now, args.ticks)
        print(
            f"rules benchmark: {len(rules)} rules, {args.devices:,} devices, {n:,} readings "
            f"(stored in {time.perf_counter() - t:.1f} s)",
            flush=True,
        )
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            first = run_pass(
                conn, rules, registry, now=now, lateness_s=0, since=now - timedelta(minutes=30)
            )
            print(f"  catching up 30 min: {time.perf_counter() - t:.2f} s", flush=True)
            ticks: list[float] = []
            floors: list[float] = []
            for k in range(1, args.ticks + 1):
                at = now + timedelta(minutes=k)
                t = time.perf_counter()
                report = run_pass(conn, rules, registry, now=at, lateness_s=0, since=now)
                ticks.append(time.perf_counter() - t)
                t = time.perf_counter()
                for rule in rules:  # baseline: the same readings query, nothing else
                    devices = entities_of(conn, rule, registry)
                    if devices:
                        fetch_series(conn, rule, devices, at.timestamp() - 60, at.timestamp())
                floors.append(time.perf_counter() - t)
                per_rule = ", ".join(f"{r.rule_id} {r.duration_ms:.0f} ms" for r in report.rules)
                print(f"  tick {k}: {ticks[-1]:.2f} s ({per_rule}); baseline {floors[-1]:.2f} s")
            firing = conn.execute(
                "SELECT rule_id, count(*) FROM alerts WHERE status = 'firing' GROUP BY 1"
            ).fetchall()
        assert not first.failed and not report.failed
        tick, floor = statistics.median(ticks), statistics.median(floors)
        print(
            f"median per tick: {tick:.2f} s for the catalogue over {args.devices:,} devices; "
            f"baseline (readings queries alone) {floor:.2f} s; ratio {tick / floor:.1f}"
        )
        print("firing: " + ", ".join(f"{r} {n}" for r, n in firing))
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
