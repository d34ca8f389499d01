"""`urbanpulse demo`: the whole platform end to end, with live progress."""

from __future__ import annotations

import argparse
import logging

from urbanpulse.cli import Commands, settings_of

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    demo = sub.add_parser(
        "demo", help="migrate, provision, ingest and simulate, with live progress; ends by itself"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--scenario", default="demo", help="scenario to run (default demo)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from demo.run import run_demo

    return run_demo(settings_of(args), duration=args.duration, scenario=args.scenario)
