"""`urbanpulse rules`: check and test rule files, run the rules, backtest, the KPI scorecard."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from urbanpulse.cli import Commands, rule_files, settings_of
from urbanpulse.errors import UrbanPulseError

log = logging.getLogger("urbanpulse")


def register(sub: Commands) -> None:
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


def cmd_rules_check(args: argparse.Namespace) -> int:
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.rulefmt.model import load_rules

    paths = rule_files(args.files)
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
    from rules.ruletest import run_test_files
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.rulefmt.model import rule_test_files

    paths = [Path(f) for f in args.files] if args.files else rule_test_files()
    cases, failures = run_test_files(paths, default_registry())
    for f in failures:
        print(f"FAIL {f.file}: {f.case}: {f.message}")
    print(f"{cases} case(s) in {len(paths)} file(s): {len(failures)} failure(s)")
    return 1 if failures else 0


def cmd_rules_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from rules.runner import run_forever, run_pass
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect
    from urbanpulse.rulefmt.model import load_rules

    settings = settings_of(args)
    registry = default_registry()
    found = load_rules(rule_files(args.files), registry)
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
    from rules.runner import backtest
    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect
    from urbanpulse.rulefmt.model import load_rule_files

    settings = settings_of(args)
    registry = default_registry()
    found = {r.id: r for r in load_rule_files(rule_files(args.files), registry)}
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

    from urbanpulse.contract.registry import default_registry
    from urbanpulse.db.connect import connect
    from urbanpulse.db.scorecard import scorecard
    from urbanpulse.rulefmt.model import load_rules

    settings = settings_of(args)
    found = load_rules(rule_files(args.files), default_registry())
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
