"""The `urbanpulse` command: one entry point with a subcommand per job.

Service modules are imported inside their subcommand, so `urbanpulse db migrate` needs
neither a broker library loaded nor anything else it does not use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from urbanpulse import __version__
from urbanpulse.errors import DatabaseAuthError, UrbanPulseError
from urbanpulse.settings import Settings, load_settings

log = logging.getLogger("urbanpulse")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "mqtt_url", None):
        overrides["mqtt_url"] = args.mqtt_url
    return load_settings(**overrides)


def _policy(settings: Settings) -> Any:
    from urbanpulse.db.policy import load_policy

    return load_policy(settings.storage_policy)


# --- db ----------------------------------------------------------------------------------------


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import where
    from urbanpulse.db.migrate import migrate

    settings = _settings(args)
    result = migrate(settings.database_url, _policy(settings), timescale_mode=settings.timescaledb)
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

    settings = _settings(args)
    policy = _policy(settings)
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

    settings = _settings(args)
    specs = [s for f in args.files for s in read_device_file(Path(f), default_registry())]
    with connect(settings.database_url) as conn:
        result = upsert_devices(conn, specs)
    print(f"{len(specs)} device(s): {result.created} created, {result.updated} updated")
    return 0


def cmd_devices_credentials(args: argparse.Namespace) -> int:
    from urbanpulse.credentials import Account, write_credentials
    from urbanpulse.db.connect import connect

    settings = _settings(args)
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

    settings = _settings(args)
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
    _print_table(table)
    print(f"{len(rows)} device(s)")
    return 0


def _print_table(rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- quarantine --------------------------------------------------------------------------------


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.db.quarantine import summary

    settings = _settings(args)
    with connect(settings.database_url) as conn:
        rows = summary(conn)
    if not rows:
        print("quarantine is empty")
        return 0
    _print_table([("reason", "state", "messages", "deliveries"), *rows])
    return 0


def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    from ingest.replay import ReplayResult, replay
    from ingest.worker import validation_limits
    from urbanpulse.contract.registry import default_registry

    settings = _settings(args)

    def progress(r: ReplayResult) -> None:
        print(f"  … {r.replayed} replayed, {r.still_failing} still failing", file=sys.stderr)

    result = replay(
        settings.database_url,
        registry=default_registry(),
        prefix=settings.topic_prefix,
        limits=validation_limits(settings),
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


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings(args)
    if args.database_url:  # the app reads its settings from the environment, in every worker
        os.environ["URBANPULSE_DATABASE_URL"] = args.database_url
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    workers = args.workers or settings.api_workers
    print(f"UrbanPulse API on http://{host}:{port}/docs ({workers} worker(s))", file=sys.stderr)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=5,  # live streams never end by themselves
    )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from urbanpulse.db.connect import connect
    from urbanpulse.db.tokens import Role, create_token, list_tokens, revoke_token

    settings = _settings(args)
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
    _print_table(table)
    return 0


# --- rules -------------------------------------------------------------------------------------


def _rule_files(files: list[str]) -> list[Path]:
    from rules.model import catalogue_files

    return [Path(f) for f in files] if files else catalogue_files()


def cmd_rules_check(args: argparse.Namespace) -> int:
    from rules.model import load_rules
    from urbanpulse.contract.registry import default_registry

    paths = _rule_files(args.files)
    found = load_rules(paths, default_registry())
    print(
        f"{len(found.records)} record(s), {len(found.rules)} rule(s) and {len(found.kpis)} KPI(s) "
        f"in {len(paths)} file(s): OK"
    )
    for rec in found.records:
        print(f"  {rec.id:<30} {'record':<8} {rec.kind:<17} {rec.title.zh}")
    for r in found.rules:
        print(f"  {r.id:<30} {r.severity:<8} {r.owner:<17} {r.title.zh}")
    for k in found.kpis:
        print(f"  {k.id:<30} {'kpi':<8} {k.owner:<17} {k.title.zh}")
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from rules.model import rule_test_files
    from rules.ruletest import run_test_files
    from urbanpulse.contract.registry import default_registry

    paths = [Path(f) for f in args.files] if args.files else rule_test_files()
    cases, failures = run_test_files(paths, default_registry())
    for f in failures:
        print(f"FAIL {f.file}: {f.case}: {f.message}")
    print(f"{cases} case(s) in {len(paths)} file(s): {len(failures)} failure(s)")
    return 1 if failures else 0


def cmd_rules_run(args: argparse.Namespace) -> int:
    import signal
    import threading
    from datetime import timedelta

    from rules.model import load_rules
    from rules.runner import run_forever, run_pass
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect

    settings = _settings(args)
    registry = default_registry()
    found = load_rules(_rule_files(args.files), registry)
    now = datetime.now(UTC)
    since = (
        datetime.fromisoformat(args.since) if args.since else now - timedelta(hours=args.lookback)
    )
    if since.tzinfo is None:
        raise UrbanPulseError("--since needs a timezone, e.g. 2026-11-20T00:00+08:00")
    if args.until:
        until = datetime.fromisoformat(args.until)
        if until.tzinfo is None:
            raise UrbanPulseError("--until needs a timezone, e.g. 2026-11-21T00:00+08:00")
        now = min(now, until + timedelta(seconds=args.lateness))
    if args.once:
        with connect(settings.database_url) as conn:
            report = run_pass(
                conn,
                found,
                registry,
                now=now,
                lateness_s=args.lateness,
                since=since,
                tz=settings.timezone,
            )
        for r in report.rules:
            if r.busy:
                print(f"  {r.rule_id:<26} busy: another runner has its turn")
                continue
            status = f"FAILED {r.error}" if r.error else "ok"
            if r.record:
                print(
                    f"  {r.rule_id:<26} record {r.evaluations:>8} rows written"
                    f"{'':>27}{r.duration_ms:7.0f} ms  {status}"
                )
                continue
            print(
                f"  {r.rule_id:<26} {r.entities:>6} entities {r.evaluations:>8} evaluations "
                f"{r.transitions:>5} transitions  {r.duration_ms:7.0f} ms  {status}"
            )
        print(f"evaluated up to {report.watermark.isoformat(timespec='seconds')}")
        return 1 if report.failed else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_forever(
        settings.database_url,
        found,
        registry,
        interval_s=args.interval,
        lateness_s=args.lateness,
        since=since,
        stop=stop,
        tz=settings.timezone,
    )
    return 0


def cmd_rules_backtest(args: argparse.Namespace) -> int:
    from rules.model import load_rule_files
    from rules.runner import backtest
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect

    settings = _settings(args)
    registry = default_registry()
    found = {r.id: r for r in load_rule_files(_rule_files(args.files), registry)}
    if args.rule not in found:
        raise UrbanPulseError(f"no rule {args.rule!r}; known: {', '.join(sorted(found))}")
    bounds = []
    for name in ("since", "until"):
        value = datetime.fromisoformat(getattr(args, name))
        if value.tzinfo is None:
            raise UrbanPulseError(f"--{name} needs a timezone, e.g. 2026-11-20T00:00+08:00")
        bounds.append(value)
    rule = found[args.rule]
    if args.threshold is not None:
        if rule.condition is None:
            raise UrbanPulseError(f"{rule.id} is a {rule.type} rule: it has no threshold")
        cond = rule.condition
        # keep the hysteresis band's width with the new threshold
        clear = None if cond.clear is None else args.threshold - (cond.value - cond.clear)
        rule = rule.model_copy(
            update={"condition": cond.model_copy(update={"value": args.threshold, "clear": clear})}
        )
    with connect(settings.database_url) as conn:
        raised = backtest(conn, rule, registry, since=bounds[0], until=bounds[1])
    for a in raised:
        end = a.ended_at.isoformat(timespec="minutes") if a.ended_at else "still firing"
        peak = f"{a.peak:g}" if a.peak is not None else "-"
        print(f"  {a.entity:<20} {a.started_at.isoformat(timespec='minutes')} → {end}  peak {peak}")
    print(f"{rule.id}: {len(raised)} alert(s) would have been raised (nothing was written)")
    return 0


def cmd_rules_kpi(args: argparse.Namespace) -> int:
    import json

    from rules.kpi import scorecard
    from rules.model import load_rules
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect

    settings = _settings(args)
    found = load_rules(_rule_files(args.files), default_registry())
    with connect(settings.database_url) as conn:
        lines = scorecard(conn, found.kpis, history=args.history)
    if args.json:
        out = [
            {
                "kpi": ln.kpi.id,
                "title": ln.kpi.title.model_dump(),
                "clause": ln.kpi.clause,
                "owner": ln.kpi.owner,
                "unit": ln.kpi.unit,
                "entity": ln.entity,
                "period": ln.kpi.period,
                "period_start": ln.period_start.isoformat(),
                "value": ln.value,
                "target": ln.kpi.target.model_dump(),
                "compliant": ln.compliant,
                "previous": ln.previous,
                "trend": ln.trend,
                "history": [
                    {"period_start": d.isoformat(), "value": v, "compliant": c}
                    for d, v, c in ln.history
                ],
            }
            for ln in lines
        ]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if not lines:
        print("no KPI scored yet: run `urbanpulse rules run` first")
        return 0
    mark = {True: "met", False: "NOT MET", None: "-"}
    for ln in lines:
        t = ln.kpi.target
        target = f"{t.op} {t.value:g}" if t.op and t.value is not None else f"{t.better} is better"
        value = "-" if ln.value is None else f"{ln.value:.2f}"
        print(
            f"  {ln.kpi.id:<30} {ln.entity:<14} {ln.period_start.isoformat()}  {value:>8} "
            f"{ln.kpi.unit:<6} target {target:<18} {mark[ln.compliant]:<8} {ln.trend}"
        )
    return 0


# --- services ----------------------------------------------------------------------------------


def _notify_context(settings: Settings, files: list[str]) -> Any:
    from rules.notify.service import load_context

    return load_context(settings, _rule_files(files))


def cmd_notify(args: argparse.Namespace) -> int:
    import signal
    import threading

    from prometheus_client import start_http_server

    from rules.notify.service import registry as notify_registry
    from rules.notify.service import run_forever, run_once
    from urbanpulse.db.connect import connect

    settings = _settings(args)
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
    settings = _settings(args)
    ctx = _notify_context(settings, args.rules)
    cfg = ctx.config
    print(f"{len(cfg.departments)} department(s), {len(cfg.channels)} channel(s): OK")
    for name, ch in cfg.channels.items():
        state = "on" if ch.resolved_url() else f"off (set {ch.url_env})"
        print(f"  {name:<16} {ch.type:<8} {state}")
    return 0


def cmd_silences(args: argparse.Namespace) -> int:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from rules.notify.silences import add_silence, expire_silence, list_silences, parse_matchers
    from urbanpulse.db.connect import connect
    from urbanpulse.durations import parse_offset

    settings = _settings(args)
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


def cmd_grafana_build(args: argparse.Namespace) -> int:
    from rules.grafana import dashboards_folder, write
    from rules.model import load_rules
    from urbanpulse.contract.registry import default_registry

    found = load_rules(_rule_files(args.files), default_registry())
    folder = Path(args.out) if args.out else dashboards_folder()
    for path in write(found, folder):
        print(f"  {path}")
    print(f"dashboards written to {folder} (thresholds from the rule files)")
    return 0


def cmd_grafana_provision(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from rules.grafana import DatasourceSpec, provision
    from rules.model import load_rules
    from urbanpulse.contract.registry import default_registry

    settings = _settings(args)
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
    found = load_rules(_rule_files(args.files), default_registry())
    for line in provision(args.url, token, found, spec):
        print(f"  {line}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from urbanpulse.db.connect import connect
    from urbanpulse.status import Check, broker_check, database_checks

    settings = _settings(args)
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


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import run_ingest

    settings = _settings(args)
    if args.client_id:
        settings = settings.model_copy(update={"ingest_client_id": args.client_id})
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    return run_ingest(settings, worker_index=args.worker)


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
        _settings(args),
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


def cmd_demo(args: argparse.Namespace) -> int:
    from urbanpulse.demo import run_demo

    return run_demo(_settings(args), duration=args.duration, scenario=args.scenario)


# --- replay (dataset replay: simulators/replay/) --------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "ingest":
        from ingest.bench import main as ingest_bench

        return ingest_bench(args.options)
    if args.what == "rules":
        from rules.bench import main as rules_bench

        rules_bench(args.options)
        return 0
    from api.bench import main as api_bench

    api_bench(args.options)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from simulators.replay.command import replay_command

    return replay_command(
        _settings(args),
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


# --- parser ------------------------------------------------------------------------------------


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

    rules_p = sub.add_parser("rules", help="alerting rules: check and test rule files")
    rsub = rules_p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    chk = rsub.add_parser("check", help="validate rule files (default: the packaged catalogue)")
    chk.add_argument("files", nargs="*", metavar="FILE")
    chk.set_defaults(func=cmd_rules_check)
    tst = rsub.add_parser("test", help="run rule unit tests (series in, expected alerts out)")
    tst.add_argument("files", nargs="*", metavar="FILE")
    tst.set_defaults(func=cmd_rules_test)
    rrun = rsub.add_parser("run", help="evaluate the rules against the database and keep alerts")
    rrun.add_argument("files", nargs="*", metavar="FILE")
    rrun.add_argument("--once", action="store_true", help="one pass, then exit")
    rrun.add_argument("--interval", type=float, default=30.0, help="seconds between passes")
    rrun.add_argument(
        "--lateness", type=float, default=120.0, help="allowed lateness of readings, seconds"
    )
    rrun.add_argument("--since", help="first measurement time for entities never evaluated")
    rrun.add_argument(
        "--lookback", type=float, default=24.0, help="hours back when --since is not given"
    )
    rrun.add_argument("--until", help="evaluate no later than this measurement time (with --once)")
    rrun.set_defaults(func=cmd_rules_run)
    bt = rsub.add_parser(
        "backtest", help="list the alerts a rule would have raised over stored history"
    )
    bt.add_argument("rule", help="rule id, e.g. flood.ponding_15cm")
    bt.add_argument("--since", required=True, help="start (ISO 8601 with timezone)")
    bt.add_argument("--until", required=True, help="end (ISO 8601 with timezone)")
    bt.add_argument("--threshold", type=float, help="try another threshold")
    bt.add_argument("--files", nargs="*", default=[], metavar="FILE", help="rule files")
    bt.set_defaults(func=cmd_rules_backtest)
    kp = rsub.add_parser(
        "kpi", help="the plan KPI scorecard (as scored by the last `rules run` pass)"
    )
    kp.add_argument("--history", type=int, default=6, help="periods of history to show")
    kp.add_argument("--json", action="store_true", help="machine-readable output")
    kp.add_argument("--files", nargs="*", default=[], metavar="FILE", help="rule files")
    kp.set_defaults(func=cmd_rules_kpi)

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

    st = sub.add_parser("status", help="each component's health, lag and last error")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

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

    api = sub.add_parser("api", help="serve the HTTP API (OpenAPI docs at /docs)")
    api.add_argument("--host", help="listen address (default URBANPULSE_API_HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default URBANPULSE_API_PORT, 8000)")
    api.add_argument(
        "--workers", type=int, help="worker processes (default URBANPULSE_API_WORKERS)"
    )
    api.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-For from a reverse proxy (the audit log's client address)",
    )
    api.set_defaults(func=cmd_api)

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

    bench = sub.add_parser(
        "bench",
        help="benchmarks: ingest, rules, api (each beside its baseline, in the same run)",
        description="Run a benchmark; the options after its name are its own (--help lists them).",
    )
    bench.add_argument("what", choices=("ingest", "rules", "api"))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser(
        "demo", help="migrate, provision, ingest and simulate, with live progress; ends by itself"
    )
    demo.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    demo.add_argument("--scenario", default="demo", help="scenario to run (default demo)")
    demo.set_defaults(func=cmd_demo)
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
