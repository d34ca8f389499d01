"""Publish-rate benchmark of the simulator at fleet scale, beside its baseline.

    python -m bench.simulators [--devices 100000] [--seconds 30] [--trials 3] [--processes 1 2]

Baseline: one connection publishing a pre-encoded customer-meter payload in a loop, with the
same publisher (QoS 1, acknowledged): the ceiling of one MQTT connection from Python here.
Simulator: `baseline` scenario over a fleet of `--devices`, as fast as possible, for
`--seconds` real seconds, with P publisher processes. Nothing subscribes (the prefix
`bench/v1` is private), so the figure is the simulator's, not ingest's. Medians of the trials
are printed with the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from simulators.publisher import Publisher
from simulators.run import make_plan, run
from simulators.scenario import load_scenario
from urbanpulse.broker import parse_broker_url
from urbanpulse.settings import load_settings

PAYLOAD = b'{"metric":"volume","value":1234.5678,"unit":"m3","ts":1764122400000}'


def baseline_rate(mqtt_url: str, seconds: float, qos: int) -> float:
    with Publisher(parse_broker_url(mqtt_url), f"bench-raw-{os.getpid()}", qos=qos) as pub:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            for i in range(1000):
                pub.publish(f"bench/v1/water/wn-x-c{i:05d}", PAYLOAD)
            n += 1000
        pub.flush()
        return n / (time.monotonic() - started)


def simulator_rate(devices: int, processes: int, seconds: float, qos: int) -> tuple[float, int]:
    settings = load_settings(topic_prefix="bench/v1")
    plan = make_plan(
        settings,
        load_scenario("baseline"),
        fast=True,
        scale_to=devices,
        processes=processes,
        qos=qos,
        max_real_s=seconds,
    )
    result = run(plan, stop=threading.Event())
    # rate over the publishing time of the shards (process start-up excluded)
    busy = max(s.elapsed_s for s in result.shards)
    return result.messages / busy, result.messages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench simulators", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    args = parser.parse_args(argv)
    settings = load_settings()
    print(
        f"simulator publish benchmark: {args.devices:,} devices, {args.seconds:g} s per trial, "
        f"{args.trials} trials, QoS {args.qos}, broker {settings.mqtt_url}, "
        f"{os.cpu_count()} CPU(s)",
        flush=True,
    )
    base: list[float] = []
    sims: dict[int, list[float]] = {p: [] for p in args.processes}
    for trial in range(1, args.trials + 1):
        base.append(baseline_rate(settings.mqtt_url, args.seconds, args.qos))
        print(
            f"  trial {trial}: baseline (raw publish, 1 connection) {base[-1]:>9,.0f} msg/s",
            flush=True,
        )
        for p in args.processes:
            rate, sent = simulator_rate(args.devices, p, args.seconds, args.qos)
            sims[p].append(rate)
            print(
                f"  trial {trial}: simulator, {p} process(es) {rate:>13,.0f} msg/s ({sent:,} sent)",
                flush=True,
            )
    b = statistics.median(base)
    print(f"median baseline: {b:,.0f} msg/s")
    for p, rates in sims.items():
        m = statistics.median(rates)
        print(f"median simulator, {p} process(es): {m:,.0f} msg/s (ratio to baseline {m / b:.2f})")


if __name__ == "__main__":
    main()
