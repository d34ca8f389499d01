"""`urbanpulse simulate` (the simulated city) and `urbanpulse replay` (public datasets)."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from urbanpulse.cli import Commands, settings_of
from urbanpulse.errors import UrbanPulseError

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    sim = sub.add_parser(
        "simulate",
        help="run a scenario over the simulated fleet and publish it (see --list)",
        description="Publish a named scenario (default: baseline). Measurement times are "
        "simulated time: the scenario ends no later than now and runs --speed times faster "
        "than real time. Devices are provisioned first.",
    )
    sim.add_argument("scenario", nargs="?", default="baseline", help="name or scenario file")
    sim.add_argument("--list", action="store_true", help="list the scenarios and exit")
    sim.add_argument("--seed", type=int, default=7, help="same seed, same data (default 7)")
    pace = sim.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, help="simulated seconds per real second (default: the scenario's)"
    )
    pace.add_argument("--fast", action="store_true", help="publish as fast as possible")
    pace.add_argument("--live", action="store_true", help="start now and run at real time")
    sim.add_argument("--start", help="simulated start (ISO 8601 with timezone)")
    sim.add_argument("--duration", type=float, help="stop after this many real seconds")
    sim.add_argument(
        "--devices", type=int, help="scale the fleet to this many devices (more customer meters)"
    )
    sim.add_argument("--processes", type=int, default=1, help="publisher processes (default 1)")
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    sim.add_argument(
        "--no-provision", action="store_true", help="do not upsert the fleet into the registry"
    )
    sim.add_argument("--dry-run", action="store_true", help="generate and count, publish nothing")
    sim.add_argument("--write-fleet", metavar="FILE", help="write the fleet (.csv/.yaml) and exit")
    sim.add_argument("--city", metavar="FILE", help="a city file instead of the packaged one")
    sim.set_defaults(func=cmd_simulate)
    _add_replay_parser(sub)


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.command import list_scenarios, simulate_command

    if args.list:
        return list_scenarios()
    start = None
    if args.start:
        start = datetime.fromisoformat(args.start)
        if start.tzinfo is None:
            raise UrbanPulseError("--start needs a timezone, e.g. 2026-11-20T00:00+08:00")
    return simulate_command(
        settings_of(args),
        scenario=args.scenario,
        seed=args.seed,
        speed=args.speed,
        fast=args.fast,
        live=args.live,
        start=start,
        duration=args.duration,
        devices=args.devices,
        processes=args.processes,
        qos=args.qos,
        do_provision=not args.no_provision,
        dry=args.dry_run,
        fleet_file=Path(args.write_fleet) if args.write_fleet else None,
        city_file=Path(args.city) if args.city else None,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from simulators.replay.command import replay_command

    return replay_command(
        settings_of(args),
        mapping=args.mapping,
        list_only=args.list,
        data_dir=args.data_dir,
        since=args.since,
        until=args.until,
        devices=[d.strip() for d in (args.devices or "").split(",")],
        limit=args.limit,
        speed=args.speed,
        shift_to_now=args.shift_to_now,
        max_gap=args.max_gap,
        dry_run=args.dry_run,
        provision=not args.no_provision,
        as_json=args.json,
    )


def _add_replay_parser(sub: Any) -> None:
    rp = sub.add_parser(
        "replay",
        help="replay a real public dataset through MQTT (docs/datasets.md)",
        description="Replay one of the public datasets (or your own CSV/Excel files, given a "
        "mapping YAML) as device messages: measurement times kept, quirks counted.",
    )
    rp.add_argument("mapping", nargs="?", help="a shipped mapping (see --list) or a mapping file")
    rp.add_argument("--list", action="store_true", help="list the shipped mappings and exit")
    rp.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding the dataset folders (URBANPULSE_DATASETS; "
        "default ../shared/datasets beside the project)",
    )
    rp.add_argument("--since", help="first measurement time, e.g. 2016-07-19 (dataset local time)")
    rp.add_argument("--until", help="end of the window, exclusive")
    rp.add_argument("--devices", help="comma-separated device ids or patterns, e.g. 'bj-*-rain'")
    rp.add_argument("--limit", type=int, help="publish at most this many messages, earliest first")
    rp.add_argument(
        "--speed",
        default="max",
        help="pace at N× real time by measurement time (3600: an hour a second); "
        "default max (as fast as possible)",
    )
    rp.add_argument(
        "--shift-to-now",
        action="store_true",
        help="shift every time so the last reading lands at now (whole minutes)",
    )
    rp.add_argument(
        "--max-gap",
        type=float,
        metavar="SECONDS",
        help="with --speed, never wait longer than this between two messages (data outages)",
    )
    rp.add_argument("--dry-run", action="store_true", help="read and report only, no broker")
    rp.add_argument(
        "--no-provision",
        action="store_true",
        help="do not create/update the devices first (ingest quarantines unknown devices)",
    )
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp.set_defaults(func=cmd_replay)
