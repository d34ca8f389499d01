"""`urbanpulse notify` (deliver, check) and `urbanpulse silences`."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from urbanpulse.cli import Commands, rule_files, settings_of
from urbanpulse.errors import UrbanPulseError
from urbanpulse.settings import Settings

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
    _register_notify(sub)
    _register_silences(sub)


def _register_notify(sub: Commands) -> None:
    nt = sub.add_parser("notify", help="deliver alerts to the departments that own them")
    nt.add_argument(
        "--once", action="store_true", help="one pass (plan, escalate, send), then exit"
    )
    nt.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    nt.add_argument("--rules", nargs="*", default=[], metavar="FILE", help="rule files")
    nt.set_defaults(func=cmd_notify)
    ntsub = nt.add_subparsers(dest="notify_command", metavar="ACTION")
    ntc = ntsub.add_parser("check", help="validate the notify file; list channels on and off")
    ntc.add_argument("--rules", nargs="*", default=[], metavar="FILE", help="rule files")
    ntc.set_defaults(func=cmd_notify_check)


def _register_silences(sub: Commands) -> None:
    sil = sub.add_parser("silences", help="silences and maintenance windows")
    silsub = sil.add_subparsers(dest="silences_command", required=True, metavar="ACTION")
    sa = silsub.add_parser("add", help="hold back the notifications of matching alerts")
    sa.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="rule_id, entity, zone, district, domain, severity, owner or labels.NAME; "
        "repeat for more (all must match); VALUE* matches by prefix",
    )
    sa.add_argument("--starts", help="start (ISO 8601 with timezone; default now)")
    sa.add_argument("--for", dest="duration", required=True, help="how long, e.g. 2h or 3d")
    sa.add_argument("--author", required=True)
    sa.add_argument("--reason", required=True)
    silsub.add_parser("list", help="active and future silences").add_argument(
        "--all", action="store_true", help="ended ones too"
    )
    se = silsub.add_parser("expire", help="end a silence now")
    se.add_argument("id", type=int)
    sil.set_defaults(func=cmd_silences)


def _notify_context(settings: Settings, files: list[str]) -> Any:
    from notify.context import load_context

    return load_context(settings, rule_files(files))


def cmd_notify(args: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import start_http_server

    from notify.context import registry as notify_registry
    from notify.service import run_forever, run_once
    from urbanpulse.db.connect import connect

    settings = settings_of(args)
    ctx = _notify_context(settings, args.rules)
    off = [n for n, c in ctx.config.channels.items() if not c.resolved_url()]
    if off:
        log.warning("channels off (their URL variable is not set): %s", ", ".join(off))
    if args.once:
        with connect(settings.database_url) as conn:
            got = run_once(conn, ctx, datetime.now(UTC))
        print(", ".join(f"{k} {v}" for k, v in got.items()))
        return 0
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=notify_registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("notifier running (every %.0f s)", args.interval)
    run_forever(
        settings.database_url,
        ctx,
        stop=stop,
        interval_s=args.interval,
        clock=lambda: datetime.now(UTC),
    )
    return 0


def cmd_notify_check(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    ctx = _notify_context(settings, args.rules)
    cfg = ctx.config
    print(f"{len(cfg.departments)} department(s), {len(cfg.channels)} channel(s): OK")
    for name, ch in cfg.channels.items():
        state = "on" if ch.resolved_url() else f"off (set {ch.url_env})"
        print(f"  {name:<16} {ch.type:<8} {state}")
    return 0


def cmd_silences(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from notify.silences import add_silence, expire_silence, list_silences, parse_matchers
    from urbanpulse.db.connect import connect
    from urbanpulse.durations import parse_offset

    settings = settings_of(args)
    now = datetime.now(UTC)
    with connect(settings.database_url) as conn:
        if args.silences_command == "add":
            starts = datetime.fromisoformat(args.starts) if args.starts else now
            if starts.tzinfo is None:
                raise UrbanPulseError("--starts needs a timezone, e.g. 2026-11-20T08:00+08:00")
            ends = starts + timedelta(seconds=parse_offset(args.duration))
            sid = add_silence(
                conn,
                parse_matchers(args.match),
                starts_at=starts,
                ends_at=ends,
                author=args.author,
                reason=args.reason,
            )
            print(f"silence {sid}: {starts.isoformat()} → {ends.isoformat()}")
            return 0
        if args.silences_command == "expire":
            if not expire_silence(conn, args.id):
                raise UrbanPulseError(f"no active silence {args.id}")
            print(f"silence {args.id} expired")
            return 0
        zone = ZoneInfo(settings.timezone)

        def local(t: datetime) -> str:
            return t.astimezone(zone).strftime("%Y-%m-%d %H:%M%z")

        for sid, matchers, starts, ends, author, reason, expired in list_silences(
            conn, include_ended=args.all, now=now
        ):
            m = ", ".join(f"{k}={v}" for k, v in matchers.items())
            end = f"expired {local(expired)}" if expired else f"until {local(ends)}"
            print(f"  {sid:>5} {m:<40} from {local(starts)} {end}  {author}: {reason}")
    return 0
