"""`urbanpulse ingest`: run an ingest worker."""

from __future__ import annotations

import argparse
import logging

from urbanpulse.cli import Commands, settings_of

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    ing = sub.add_parser("ingest", help="run an ingest worker (MQTT → database)")
    ing.add_argument(
        "--worker",
        type=int,
        default=0,
        help="worker index on this host (part of the stable MQTT client id)",
    )
    ing.add_argument("--client-id", help="explicit MQTT client id")
    ing.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    ing.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import run_ingest

    settings = settings_of(args)
    if args.client_id:
        settings = settings.model_copy(update={"ingest_client_id": args.client_id})
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    return run_ingest(settings, worker_index=args.worker)
