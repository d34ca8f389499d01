"""`make demo`: migrate, provision the fleet, run ingest and the demo scenario, show progress."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from notify.context import load_context
from notify.deliver import deliver
from notify.plan import plan
from rules.runner import run_pass
from simulators.command import describe
from simulators.run import make_plan, provision, run
from simulators.scenario import load_scenario
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.connect import (
    connect,
    database_name,
    drop_database,
    where,
    with_database,
)
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.db.scorecard import scorecard
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.errors import UrbanPulseError
from urbanpulse.rulefmt.model import catalogue_files, load_rules
from urbanpulse.rulefmt.records import CITY
from urbanpulse.serve import free_port, start_api, stop_process
from urbanpulse.settings import Settings

DOMAINS = ("water", "flood", "air", "parking")
SUBSCRIBE_TIMEOUT_S = 20.0
MAX_BEHIND = 1500  # readings published but not yet stored before publishing waits


def _say(text: str) -> None:
    print(text, flush=True)


def _counts(conn: Any, since: datetime) -> tuple[dict[str, int], int]:
    rows = conn.execute(
        "SELECT d.domain, count(*) FROM readings r JOIN devices d USING (device_id) "
        "WHERE r.ingested_at >= %s GROUP BY 1",
        (since,),
    ).fetchall()
    q = conn.execute(
        "SELECT count(*) FROM quarantine WHERE last_received_at >= %s", (since,)
    ).fetchone()
    conn.commit()
    return {str(k): int(v) for k, v in rows}, int(q[0]) if q else 0


def _start_ingest(settings: Settings) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    # A share group and session of the demo's own, expiring soon after it: a broker keeps
    # handing a persistent shared-subscription session its share of messages while it is
    # offline, so a demo must not join (or leave behind) a member of the real `ingest` group.
    run = f"demo-{os.getpid()}"
    env = dict(
        os.environ,
        URBANPULSE_DATABASE_URL=settings.database_url,
        URBANPULSE_MQTT_URL=settings.mqtt_url,
        URBANPULSE_INGEST_LOG_INTERVAL_S="10",
        URBANPULSE_INGEST_GROUP=run,
        URBANPULSE_INGEST_SESSION_EXPIRY_S="60",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "urbanpulse.cli", "ingest", "--client-id", f"urbanpulse-{run}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _highlights(conn: Any, since: datetime) -> list[str]:
    """What the scenario did to the city, read back from the stored readings."""
    out: list[str] = []
    rows = conn.execute(
        "SELECT device_id, max(value) FROM readings WHERE metric = 'depth' AND ingested_at >= %s "
        "GROUP BY 1 HAVING max(value) >= 15 ORDER BY 2 DESC",
        (since,),
    ).fetchall()
    if rows:
        out.append("ponding ≥ 15 cm (GB 51222): " + ", ".join(f"{d} {v:.0f} cm" for d, v in rows))
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE value > 150), count(*) FROM readings "
        "WHERE metric = 'pm25' AND ingested_at >= %s",
        (since,),
    ).fetchone()
    if row and row[1]:
        out.append(f"hourly PM2.5 above 150 µg/m³ (AQI > 200): {row[0]} of {row[1]} station-hours")
    rows = conn.execute(
        "SELECT o.device_id, max(o.value / c.value) FROM readings o JOIN readings c "
        "ON c.device_id = o.device_id AND c.ts = o.ts AND c.metric = 'capacity' "
        "WHERE o.metric = 'occupied' AND o.ingested_at >= %s AND c.value > 0 "
        "GROUP BY 1 HAVING max(o.value / c.value) >= 0.95 ORDER BY 1",
        (since,),
    ).fetchall()
    if rows:
        out.append("car parks ≥ 95 % full: " + ", ".join(f"{d} {v:.0%}" for d, v in rows))
    conn.commit()
    return out


def _alerts(settings: Settings, start: float, end: float, tz: str) -> tuple[list[str], list[str]]:
    """Run the rule catalogue once over the scenario's span; describe the alerts and the plan
    KPIs of the whole city (and every entity that misses its target)."""
    registry = default_registry()
    catalogue = load_rules(catalogue_files(), registry)
    zone = ZoneInfo(tz)
    with connect(settings.database_url) as conn:
        report = run_pass(
            conn,
            catalogue,
            registry,
            now=datetime.fromtimestamp(end, UTC),
            lateness_s=0,
            since=datetime.fromtimestamp(start, UTC),
            tz=tz,
        )
        rows = conn.execute(
            "SELECT rule_id, entity, status, started_at, ended_at, owner FROM alerts "
            "WHERE status IN ('firing', 'resolved') AND started_at >= to_timestamp(%s) "
            "ORDER BY started_at, rule_id, entity",
            (start,),
        ).fetchall()
        scores = scorecard(conn, catalogue.kpis, history=1)
    kpis = []
    for sc in scores:
        if sc.entity != CITY and sc.compliant is not False:
            continue
        t = sc.kpi.target
        target = f"target {t.op} {t.value:g}" if t.op and t.value is not None else t.better
        value = "-" if sc.value is None else f"{sc.value:.1f}"
        verdict = {True: "met", False: "NOT MET", None: ""}[sc.compliant]
        kpis.append(
            f"{sc.kpi.title.zh:<24} {sc.entity:<10} {value:>6} {sc.kpi.unit:<6} {target:<14} "
            f"{verdict}"
        )

    def local(t: object) -> str:
        return t.astimezone(zone).strftime("%m-%d %H:%M") if isinstance(t, datetime) else "?"

    lines = []
    for rule, entity, _status, started, ended, owner in rows:
        until = f" → {local(ended)}" if isinstance(ended, datetime) else " (firing)"
        lines.append(f"{rule:<24} {entity:<18} {local(started)}{until:<15}  {owner}")
    lines += [f"rule {r.rule_id} failed: {r.error}" for r in report.failed]
    return lines or ["(none)"], kpis or ["(none scored)"]


def _notifications(settings: Settings) -> list[str]:
    """One notifier pass over the alerts just raised (no group wait): what each department
    would be sent, and which channels are off until their URL variable is set."""
    ctx = load_context(settings)
    config = ctx.config.model_copy(update={"group_wait": 0.0})
    ctx = replace(ctx, config=config)
    now = datetime.now(UTC)
    with connect(settings.database_url) as conn:
        planned = plan(conn, ctx, now)
        sent, failed = deliver(conn, ctx, now)
        rows = conn.execute(
            "SELECT department, kind, state, title FROM notifications ORDER BY id"
        ).fetchall()
    per_dept = Counter((str(d), str(k)) for d, k, _, _ in rows)
    lines = [f"{planned} message(s) planned, {sent} sent, {failed} failed now"]
    lines += [f"{d:<10} {k:<9} {n} message(s)" for (d, k), n in sorted(per_dept.items())]
    if rows:
        lines.append(f"e.g. {rows[0][3]}")
    off = sum(1 for c in config.channels.values() if not c.resolved_url())
    if off:
        lines.append(
            f"{off} channel(s) are off until their URL variable is set (urbanpulse notify check);"
            " their messages are kept as dead, with the variable to set"
        )
    return lines


def _through_api(url: str, token: str) -> list[str]:
    try:
        got = httpx.get(
            f"{url}/api/v1/alerts",
            params={"limit": 1000},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        got.raise_for_status()
    except httpx.HTTPError as exc:
        return [f"✗ the API did not answer: {exc}"]
    items = got.json()["items"]
    firing = sum(1 for a in items if a["status"] == "firing")
    return [
        f"GET {url}/api/v1/alerts → {len(items)} alert(s), {firing} firing",
        f'curl -H "Authorization: Bearer {token}" {url}/api/v1/alerts?status=firing',
    ]


def demo_database(url: str) -> str:
    """The name of the demo's own database: the configured one with `_demo` appended."""
    return f"{database_name(url)}_demo"


def run_demo(settings: Settings, *, duration: float, scenario: str = "demo") -> int:
    sc = load_scenario(scenario)
    # The demo owns a database of its own, recreated on every run: a scenario replays fixed
    # simulated days, so data left by an earlier run (or real data) would mix with it.
    demo_url = with_database(settings.database_url, demo_database(settings.database_url))
    settings = settings.model_copy(update={"database_url": demo_url})
    plan = make_plan(settings, sc, speed=sc.span / duration)
    _say(
        f"▶ UrbanPulse demo — database {where(demo_url)} (recreated for the demo), broker "
        f"{settings.mqtt_url}, about {duration:.0f} s"
    )
    drop_database(demo_url)
    result = migrate(
        settings.database_url,
        load_policy(settings.storage_policy),
        timescale_mode=settings.timescaledb,
    )
    _say(
        f"  schema ready ({'TimescaleDB' if result.timescale else 'plain PostgreSQL'}; "
        f"{len(result.applied)} migration(s) applied now)"
    )
    fleet = plan.fleet()
    created, _ = provision(settings.database_url, fleet)
    _say(f"  provisioned {len(fleet)} simulated devices ({created} new) from simulators/city.yaml")

    api_proc, api_url, api_token = _start_api(settings)
    if api_proc is not None:
        _say(f"  API serving at {api_url}/docs (pid {api_proc.pid}; demo admin token below)")
    try:
        return _run(settings, plan, api_url, api_token)
    finally:
        if api_proc is not None:
            stop_process(api_proc)


def _start_api(settings: Settings) -> tuple[subprocess.Popen[bytes] | None, str, str]:
    """`urbanpulse api` on the demo database (on the configured port, or a free one), with an
    admin token of the demo's own."""
    with connect(settings.database_url) as conn:
        token, _ = create_token(conn, "demo-admin", Role.ADMIN)
    port = settings.api_port
    with socket.socket() as probe:
        if probe.connect_ex((settings.api_host, port)) == 0:  # taken: let the OS pick
            port = free_port(settings.api_host)
    try:
        proc, url = start_api(settings.database_url, port, host=settings.api_host)
    except UrbanPulseError:
        _say("  ✗ the API did not start (see `urbanpulse api`); carrying on without it")
        return None, f"http://{settings.api_host}:{port}", token
    return proc, url, token


def _wait_subscribed(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> bool:
    """Wait until the ingest worker says it subscribed (or dies, or the timeout passes)."""
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if "ERROR" in line:
            _say(f"  ingest: {line}")
        if "subscribed to" in line:
            return True
    return False


def _publish(settings: Settings, plan: Any, started: datetime) -> tuple[Any, bool]:
    """Run the scenario with progress every 5 s; returns (outcome or None, interrupted)."""
    stop = threading.Event()
    last_print = [time.monotonic()]

    def on_progress(published: int, reached: float) -> None:
        if time.monotonic() - last_print[0] < 5:
            return
        last_print[0] = time.monotonic()
        with connect(settings.database_url) as conn:
            counts, quarantined = _counts(conn, started)
        per = "  ".join(f"{d} {counts.get(d, 0):>6}" for d in DOMAINS)
        sim = datetime.fromtimestamp(reached, UTC).astimezone(ZoneInfo(plan.city.timezone))
        _say(
            f"  t+{(datetime.now(UTC) - started).total_seconds():3.0f}s  simulated "
            f"{sim:%m-%d %H:%M}  published {published:>7} msgs │ stored: {per} │ "
            f"quarantined {quarantined}"
        )

    # Back-pressure: a stock Mosquitto queues only 1000 messages per session and drops the
    # rest, so publishing waits while ingest is more than MAX_BEHIND readings behind.
    watch = connect(settings.database_url, autocommit=True)

    def hold(published: int) -> bool:
        row = watch.execute("SELECT count(*) FROM readings").fetchone()
        stored = row[0] if row and isinstance(row[0], int) else 0
        return published - stored > MAX_BEHIND

    try:
        outcome = run(plan, stop=stop, on_progress=on_progress, hold=hold)
    except KeyboardInterrupt:
        stop.set()
        return None, True
    finally:
        watch.close()
    return outcome, outcome.interrupted


def _drain(settings: Settings, started: datetime, outcome: Any) -> None:
    """Let ingest drain: wait until the stored count stops moving (or matches the ledger)."""
    expected = outcome.readings if outcome else None
    seen, still = -1, 0
    while still < 4:
        time.sleep(0.5)
        with connect(settings.database_url) as conn:
            counts, quarantined = _counts(conn, started)
        total = sum(counts.values())
        if (
            expected is not None
            and total >= expected
            and outcome is not None
            and (quarantined >= outcome.quarantined)
        ):
            return
        still = still + 1 if total == seen else 0
        seen = total


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def _report_stored(
    settings: Settings, started: datetime, outcome: Any, interrupted: bool, code: int
) -> tuple[dict[str, int], bool]:
    """What was stored and quarantined against what the simulator sent, and the highlights;
    returns the counts per domain and whether everything sent is accounted for."""
    with connect(settings.database_url) as conn:
        counts, quarantined = _counts(conn, started)
        reasons = conn.execute(
            "SELECT reason, count(*) FROM quarantine WHERE "
            "last_received_at >= %s GROUP BY 1 ORDER BY 1",
            (started,),
        ).fetchall()
        highlights = _highlights(conn, started)
    total = sum(counts.values())
    _say("")
    sent = outcome.messages if outcome else 0
    _say(
        f"■ demo {'interrupted' if interrupted else 'finished'}: {sent} messages published; "
        f"ingest exited with code {code}"
    )
    for d in DOMAINS:
        _say(f"  {d:<8} {counts.get(d, 0):>7} readings stored")
    _say(
        f"  quarantine: {quarantined} message(s)"
        + (": " + ", ".join(f"{r}={n}" for r, n in reasons) if reasons else "")
    )
    ok = True
    if outcome is not None and not interrupted:
        if total == outcome.readings and quarantined == outcome.quarantined:
            _say(
                f"  ✓ every reading the simulator sent is stored ({total}), and every message it "
                "broke on purpose is quarantined"
            )
        else:
            ok = False
            _say(
                f"  ✗ the simulator sent {outcome.readings} readings and {outcome.quarantined} "
                f"broken message(s); {total} stored, {quarantined} quarantined. If readings are "
                "missing, the broker may have dropped them: its max_queued_messages must be 0 "
                "(see deploy/mosquitto/mosquitto.conf)"
            )
    for line in highlights:
        _say(f"  {line}")
    return counts, ok


def _report_verdicts(settings: Settings, plan: Any, api_url: str, api_token: str) -> None:
    """The rules' alerts and KPIs over the simulated days, the notifications, the API."""
    _say("")
    _say("Alerts raised by the rule catalogue over the simulated days:")
    alert_lines, kpi_lines = _alerts(settings, plan.start, plan.end, plan.city.timezone)
    for line in alert_lines:
        _say(f"  {line}")
    _say("")
    _say("Plan KPIs (全区, and every place that misses its target):")
    for line in kpi_lines:
        _say(f"  {line}")
    _say("")
    _say("Notifications to the departments (urbanpulse notify):")
    for line in _notifications(settings):
        _say(f"  {line}")
    _say("")
    _say("The same alerts through the HTTP API:")
    for line in _through_api(api_url, api_token):
        _say(f"  {line}")


def _where_next(settings: Settings, api_url: str, api_token: str) -> None:
    _say("")
    _say("Where to look next:")
    _say(f"  {api_url}/docs   the API while the demo runs (token {api_token})")
    _say(f"  {api_url}/console   the alert console, with that token (served again as below)")
    _say(
        f"  URBANPULSE_DATABASE_URL={settings.database_url} urbanpulse api   "
        "serves the demo's data again afterwards"
    )
    _say("  urbanpulse devices list              devices with their last reading")
    _say("  urbanpulse quarantine list           what was refused, by reason")
    _say("  urbanpulse rules kpi                 the plan KPI scorecard with its history")
    _say("  urbanpulse status                    each component's health, lag and last error")
    _say("  docs/grafana.md                      the dashboards (urbanpulse grafana build)")
    _say("  urbanpulse simulate --list           the other scenarios")
    _say(f"  psql {settings.database_url} -c 'SELECT * FROM readings ORDER BY ts DESC LIMIT 20'")
    _say("  docs/simulators.md                   what each scenario does and should raise")


def _run(settings: Settings, plan: Any, api_url: str, api_token: str) -> int:
    proc, lines = _start_ingest(settings)
    if not _wait_subscribed(proc, lines):
        proc.terminate()
        _say(
            "✗ the ingest worker did not subscribe; is Mosquitto running at "
            f"{settings.mqtt_url}? (see `urbanpulse ingest` output)"
        )
        return 1
    _say(f"  ingest worker running (pid {proc.pid})")
    describe(plan)
    started = datetime.now(UTC)
    outcome, interrupted = _publish(settings, plan, started)
    _drain(settings, started, outcome)
    code = _stop(proc)
    counts, ok = _report_stored(settings, started, outcome, interrupted, code)
    if outcome is not None and not interrupted:
        _report_verdicts(settings, plan, api_url, api_token)
    _where_next(settings, api_url, api_token)
    missing = [d for d in DOMAINS if not counts.get(d)]
    if missing and not interrupted:
        _say(f"✗ no readings arrived for {', '.join(missing)}")
        return 1
    if interrupted:
        return 130
    return 0 if ok else 1
