"""The `urbanpulse` command: one entry point with a subcommand per job.

The core's own subcommands are here (db, devices, quarantine, tokens, status). Each service
adds its own from its `cli` module, found through the `urbanpulse.commands` entry-point group
(pyproject.toml), so the core imports no service. A `cli` module imports its service inside
the subcommand, so `urbanpulse db migrate` loads neither a broker library nor anything else it
does not use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import ValidationError

from urbanpulse import __version__
from urbanpulse.errors import DatabaseAuthError, UrbanPulseError
from urbanpulse.settings import Settings, load_settings

log = logging.getLogger("urbanpulse")


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the command line's global overrides."""
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "mqtt_url", None):
        overrides["mqtt_url"] = args.mqtt_url
    return load_settings(**overrides)


def rule_files(files: list[str]) -> list[Path]:
    """The rule files named on the command line, or the packaged catalogue."""
    from urbanpulse.rulefmt.model import catalogue_files

    return [Path(f) for f in files] if files else catalogue_files()


def policy_of(settings: Settings) -> Any:
    from urbanpulse.db.policy import load_policy

    return load_policy(settings.storage_policy)


# --- db ----------------------------------------------------------------------------------------


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import where
    from urbanpulse.db.migrate import migrate

    settings = settings_of(args)
    result = migrate(
        settings.database_url, policy_of(settings), timescale_mode=settings.timescaledb
    )
    print(
        f"database {where(settings.database_url)}"
        f"{' created' if result.created_database else ''}: "
        f"{len(result.applied)} migration(s) applied"
        f"{' (' + ', '.join(result.applied) + ')' if result.applied else ''}; storage: "
        + (
            "TimescaleDB hypertable + continuous aggregates"
            if result.timescale
            else "plain PostgreSQL (rollup tables)"
        )
    )
    return 0


def cmd_db_maintain(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.db.policy import prune_plain, refresh_rollups, timescale_installed

    settings = settings_of(args)
    policy = policy_of(settings)
    since = datetime.fromisoformat(args.since) if getattr(args, "since", None) else None
    if since is not None and since.tzinfo is None:
        raise UrbanPulseError("--since needs a timezone, e.g. 2026-11-01T00:00+08:00")
    now = datetime.now(UTC)
    with connect(settings.database_url, autocommit=True) as conn:
        timescale = timescale_installed(conn)
        refresh_rollups(conn, policy, timescale=timescale, now=now, since=since)
        deleted = 0 if timescale or args.refresh_only else prune_plain(conn, policy, now)
    names = ", ".join(r.name for r in policy.rollups)
    print(f"refreshed {names}" + ("" if timescale else f"; retention removed {deleted} readings"))
    return 0


# --- devices -----------------------------------------------------------------------------------


def cmd_devices_import(args: argparse.Namespace) -> int:
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect
    from urbanpulse.db.devices import read_device_file, upsert_devices

    settings = settings_of(args)
    specs = [s for f in args.files for s in read_device_file(Path(f), default_registry())]
    with connect(settings.database_url) as conn:
        result = upsert_devices(conn, specs)
    print(f"{len(specs)} device(s): {result.created} created, {result.updated} updated")
    return 0


def cmd_devices_credentials(args: argparse.Namespace) -> int:
    from urbanpulse.credentials import Account, write_credentials
    from urbanpulse.db.connect import connect

    settings = settings_of(args)
    with connect(settings.database_url) as conn:
        rows = conn.execute("SELECT device_id, domain FROM devices ORDER BY device_id").fetchall()
    accounts = [Account(str(d), str(m)) for d, m in rows]
    out = Path(args.out)
    try:
        result = write_credentials(
            out,
            accounts,
            prefix=settings.topic_prefix,
            ingest_user=args.ingest_user,
            ingest_group=settings.ingest_group,
            rotate=args.rotate or (),
            rotate_all=args.rotate_all,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{len(accounts)} device account(s) and {args.ingest_user!r} in {result.passwd} and "
        f"{result.acl}: {len(result.created)} new password(s), {len(result.kept)} kept, "
        f"{len(result.removed)} removed"
        + (f" ({', '.join(result.removed[:10])})" if result.removed else "")
    )
    if result.secrets_file:
        print(
            f"the new passwords are in {result.secrets_file} (readable by you only): give each "
            "device its line, then delete the file; they are not kept anywhere else"
        )
    print(
        "make the broker read them: chgrp mosquitto passwd acl dynamic-security.json, then either "
        "point password_file and acl_file at the first two and reload it (kill -HUP its pid), or "
        "load the dynamic-security plugin with the third and restart it "
        "(deploy/mosquitto/mosquitto.conf)"
    )
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.db.devices import list_devices

    settings = settings_of(args)
    with connect(settings.database_url) as conn:
        rows = list_devices(conn, domain=args.domain, zone=args.zone)
    if args.json:
        print(json.dumps(rows, default=str, ensure_ascii=False, indent=2))
        return 0
    header = ("device_id", "domain", "kind", "zone", "every", "last_seen", "name")
    table = [header] + [
        (
            r["device_id"],
            r["domain"],
            r["kind"],
            r["zone"] or "-",
            f"{r['report_interval_s']}s",
            r["last_seen"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if r["last_seen"]
            else "never",
            r["name"],
        )
        for r in rows
    ]
    print_table(table)
    print(f"{len(rows)} device(s)")
    return 0


def print_table(rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- quarantine --------------------------------------------------------------------------------


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.db.quarantine import summary

    settings = settings_of(args)
    with connect(settings.database_url) as conn:
        rows = summary(conn)
    if not rows:
        print("quarantine is empty")
        return 0
    print_table([("reason", "state", "messages", "deliveries"), *rows])
    return 0


def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    from urbanpulse.contract import Limits
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.replay import ReplayResult, replay

    settings = settings_of(args)

    def progress(r: ReplayResult) -> None:
        print(f"  … {r.replayed} replayed, {r.still_failing} still failing", file=sys.stderr)

    result = replay(
        settings.database_url,
        registry=default_registry(),
        prefix=settings.topic_prefix,
        limits=Limits.of(settings),
        reason=args.reason,
        device_id=args.device,
        include_failed=args.include_failed,
        progress=progress,
    )
    print(
        f"replayed {result.replayed} message(s) ({result.readings_stored} readings stored, "
        f"{result.duplicates} already present); {result.still_failing} still failing "
        "(see `urbanpulse quarantine list`)"
    )
    return 0


# --- api and tokens ----------------------------------------------------------------------------


def cmd_tokens(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from urbanpulse.db.connect import connect
    from urbanpulse.db.tokens import Role, create_token, list_tokens, revoke_token

    settings = settings_of(args)
    with connect(settings.database_url) as conn:
        if args.tokens_cmd == "create":
            expires = timedelta(days=args.expires_days) if args.expires_days else None
            secret, info = create_token(
                conn, args.name, Role(args.role), department=args.department, expires_in=expires
            )
            print(secret)
            print(
                f"token {info.name} ({info.role.value}"
                f"{', ' + info.department if info.department else ''}) created; "
                "the secret above is shown once: store it now",
                file=sys.stderr,
            )
            return 0
        if args.tokens_cmd == "revoke":
            if not revoke_token(conn, args.name):
                print(f"urbanpulse: no active token named {args.name}", file=sys.stderr)
                return 1
            print(f"token {args.name} revoked (API workers forget it within 5 s)")
            return 0
        rows = list_tokens(conn, include_revoked=args.all)
    table: list[tuple[str, ...]] = [("name", "role", "department", "created", "expires", "state")]
    for t in rows:
        table.append(
            (
                t.name,
                t.role.value,
                t.department or "-",
                t.created_at.astimezone(UTC).strftime("%Y-%m-%d"),
                t.expires_at.astimezone(UTC).strftime("%Y-%m-%d") if t.expires_at else "never",
                "revoked" if t.revoked_at else "active",
            )
        )
    print_table(table)
    return 0


# --- rules -------------------------------------------------------------------------------------


# --- services ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.status import Check, broker_check, database_checks

    settings = settings_of(args)
    now = datetime.now(UTC)
    checks = [broker_check(settings.mqtt_url)]
    try:
        with connect(settings.database_url) as conn:
            checks += database_checks(conn, now)
    except UrbanPulseError as exc:
        checks.append(Check("database", "fail", str(exc)))
    if args.json:
        rows = [{"component": c.component, "state": c.state, "detail": c.detail} for c in checks]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        mark = {"ok": "✓", "warn": "!", "fail": "✗"}
        for c in checks:
            print(f"  {mark[c.state]} {c.component:<11} {c.state:<5} {c.detail}")
    return 1 if any(c.state == "fail" for c in checks) else 0


# --- replay (dataset replay: simulators/replay/) --------------------------------------------------


# --- parser ------------------------------------------------------------------------------------


# what a service's `register(sub)` adds its commands to
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
ENTRY_POINTS = "urbanpulse.commands"


def _service_commands() -> list[tuple[str, Callable[[Commands], None]]]:
    """Each installed service's `register` function, as the installation's metadata lists them."""
    out: list[tuple[str, Callable[[Commands], None]]] = []
    for ep in entry_points(group=ENTRY_POINTS):
        try:
            out.append((ep.name, ep.load()))
        except Exception as exc:  # an uninstalled or broken service: say so, keep the rest
            print(f"urbanpulse: the {ep.name} commands are unavailable: {exc}", file=sys.stderr)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urbanpulse",
        description="UrbanPulse: sensor platform for Yongchuan's urban "
        "renewal targets. Settings come from URBANPULSE_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"urbanpulse {__version__}")
    parser.add_argument("--database-url", help="overrides URBANPULSE_DATABASE_URL")
    parser.add_argument("--mqtt-url", help="overrides URBANPULSE_MQTT_URL")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database schema and maintenance").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser(
        "migrate", help="create the database if missing and apply migrations and the storage policy"
    ).set_defaults(func=cmd_db_migrate)
    maintain = db.add_parser(
        "maintain", help="refresh rollups; on plain PostgreSQL also apply retention"
    )
    maintain.add_argument("--since", help="recompute rollups from this time (late data)")
    maintain.add_argument("--refresh-only", action="store_true", help="skip retention")
    maintain.set_defaults(func=cmd_db_maintain)

    devices = sub.add_parser("devices", help="device registry").add_subparsers(
        dest="devices_command", required=True, metavar="ACTION"
    )
    imp = devices.add_parser("import", help="create or update devices from CSV or YAML files")
    imp.add_argument("files", nargs="+", metavar="FILE")
    imp.set_defaults(func=cmd_devices_import)
    lst = devices.add_parser("list", help="list devices with their last reading")
    lst.add_argument("--domain")
    lst.add_argument("--zone")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_devices_list)
    cred = devices.add_parser(
        "credentials",
        help="write Mosquitto's password and ACL files: one account per device, which may "
        "publish on its own topic only, and an ingest account that may only read",
    )
    cred.add_argument("--out", required=True, help="folder for passwd, acl and new secrets")
    cred.add_argument("--ingest-user", default="ingest", help="the ingest account's name")
    cred.add_argument(
        "--rotate", nargs="+", metavar="USER", help="new passwords for these accounts"
    )
    cred.add_argument("--rotate-all", action="store_true", help="new passwords for every account")
    cred.set_defaults(func=cmd_devices_credentials)

    quarantine = sub.add_parser("quarantine", help="messages that could not be stored")
    qsub = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    qsub.add_parser("list", help="counts by reason and state").set_defaults(
        func=cmd_quarantine_list
    )
    rep = qsub.add_parser(
        "replay",
        help="re-validate pending messages (after provisioning "
        "a device, for example) and store what is now valid",
    )
    rep.add_argument("--reason", help="only this reason, e.g. unknown_device")
    rep.add_argument("--device", help="only this device id")
    rep.add_argument(
        "--include-failed",
        action="store_true",
        help="also retry messages that failed an earlier replay",
    )
    rep.set_defaults(func=cmd_quarantine_replay)

    st = sub.add_parser("status", help="each component's health, lag and last error")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    tok = sub.add_parser("tokens", help="API tokens: create, list, revoke")
    toksub = tok.add_subparsers(dest="tokens_cmd", required=True, metavar="{create,list,revoke}")
    tc = toksub.add_parser("create", help="create a token and print its secret (once)")
    tc.add_argument("name", help="who or what holds it, e.g. zhang.wei or grafana-bridge")
    tc.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    tc.add_argument("--department", help="the 牵头单位 whose alerts an operator may act on")
    tc.add_argument("--expires-days", type=int, help="expire after this many days")
    tl = toksub.add_parser("list", help="tokens (never their secrets)")
    tl.add_argument("--all", action="store_true", help="include revoked tokens")
    tr = toksub.add_parser("revoke", help="revoke a token")
    tr.add_argument("name")
    tok.set_defaults(func=cmd_tokens)

    for name, register in _service_commands():
        try:
            register(sub)
        except Exception as exc:  # a broken service must not take the others down
            print(f"urbanpulse: the {name} commands are unavailable: {exc}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValidationError as exc:
        # what is wrong and where, never the values (a URL may carry a password)
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            name = f"URBANPULSE_{where.upper()}" if where != "settings" else where
            print(f"urbanpulse: invalid settings: {name}: {err['msg']}", file=sys.stderr)
        return 2
    except DatabaseAuthError as exc:
        print(f"urbanpulse: {exc}", file=sys.stderr)
        return 3
    except UrbanPulseError as exc:
        print(f"urbanpulse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
