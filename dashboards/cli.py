"""`urbanpulse grafana`: build the dashboards from the rule files, provision them."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from urbanpulse.cli import Commands, rule_files, settings_of
from urbanpulse.errors import UrbanPulseError

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    gf = sub.add_parser("grafana", help="Grafana dashboards generated from the rule files")
    gfsub = gf.add_subparsers(dest="grafana_command", required=True, metavar="ACTION")
    gb = gfsub.add_parser("build", help="write the dashboards (default: deploy/grafana/dashboards)")
    gb.add_argument("--out", help="folder to write them to")
    gb.add_argument("--files", nargs="*", default=[], metavar="FILE", help="rule files")
    gb.set_defaults(func=cmd_grafana_build)
    gp = gfsub.add_parser(
        "provision", help="create or update the data source, folder and dashboards by uid"
    )
    gp.add_argument("--url", required=True, help="Grafana's URL, e.g. http://127.0.0.1:3000")
    gp.add_argument(
        "--token-env",
        default="URBANPULSE_GRAFANA_TOKEN",
        help="environment variable holding a service-account token (never on the command line)",
    )
    gp.add_argument("--db-host", help="host:port of the database as Grafana sees it")
    gp.add_argument(
        "--db-user", required=True, help="the read-only database role Grafana connects as"
    )
    gp.add_argument(
        "--timescaledb",
        action="store_true",
        help="the database has TimescaleDB: let Grafana group time with time_bucket",
    )
    gp.add_argument(
        "--db-password-env",
        default="URBANPULSE_GRAFANA_DB_PASSWORD",
        help="environment variable holding that role's password",
    )
    gp.add_argument("--files", nargs="*", default=[], metavar="FILE", help="rule files")
    gp.set_defaults(func=cmd_grafana_provision)


def cmd_grafana_build(args: argparse.Namespace) -> int:
    from dashboards.grafana import dashboards_folder, write
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.rulefmt.model import load_rules

    found = load_rules(rule_files(args.files), default_registry())
    folder = Path(args.out) if args.out else dashboards_folder()
    for path in write(found, folder):
        print(f"  {path}")
    print(f"dashboards written to {folder} (thresholds from the rule files)")
    return 0


def cmd_grafana_provision(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from dashboards.provision import DatasourceSpec, provision
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.rulefmt.model import load_rules

    settings = settings_of(args)
    token = os.environ.get(args.token_env, "")
    if not token:
        raise UrbanPulseError(f"set {args.token_env} to a Grafana service-account token")
    password = os.environ.get(args.db_password_env, "")
    if not password:
        raise UrbanPulseError(
            f"set {args.db_password_env} to the password of {args.db_user!r}, the read-only "
            "role Grafana uses"
        )
    db = urlsplit(settings.database_url)
    spec = DatasourceSpec(
        host=args.db_host or f"{db.hostname or '127.0.0.1'}:{db.port or 5432}",
        database=(db.path or "/urbanpulse").lstrip("/"),
        user=args.db_user,
        password=password,
        timescaledb=args.timescaledb,
    )
    found = load_rules(rule_files(args.files), default_registry())
    for line in provision(args.url, token, found, spec):
        print(f"  {line}")
    return 0
