"""`make demo`: migrate, provision the demo fleet, run ingest, simulate, and show progress."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

from urbanpulse.contract.registry import default_registry
from urbanpulse.db.connect import connect, where
from urbanpulse.db.devices import read_device_file, upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.settings import Settings

DOMAINS = ("water", "flood", "air", "parking")
SUBSCRIBE_TIMEOUT_S = 20.0


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


def run_demo(settings: Settings, *, duration: float) -> int:
    from simulators.run import simulate

    _say(
        f"▶ UrbanPulse demo — database {where(settings.database_url)}, broker "
        f"{settings.mqtt_url}, {duration:.0f} s"
    )
    result = migrate(
        settings.database_url,
        load_policy(settings.storage_policy),
        timescale_mode=settings.timescaledb,
    )
    _say(
        f"  schema ready ({'TimescaleDB' if result.timescale else 'plain PostgreSQL'}; "
        f"{len(result.applied)} migration(s) applied now)"
    )
    fleet_file = Path(str(resources.files("simulators").joinpath("fleet.yaml")))
    specs = read_device_file(fleet_file, default_registry())
    with connect(settings.database_url) as conn:
        imported = upsert_devices(conn, specs)
    _say(f"  provisioned {len(specs)} demo devices ({imported.created} new) from {fleet_file}")

    proc, lines = _start_ingest(settings)
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
    subscribed = False
    while time.monotonic() < deadline and proc.poll() is None and not subscribed:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        subscribed = "subscribed to" in line
        if "ERROR" in line:
            _say(f"  ingest: {line}")
    if not subscribed:
        proc.terminate()
        _say(
            "✗ the ingest worker did not subscribe; is Mosquitto running at "
            f"{settings.mqtt_url}? (see `urbanpulse ingest` output)"
        )
        return 1
    _say(
        f"  ingest worker running (pid {proc.pid}); publishing the four domains' feeds, "
        "with a few deliberately broken messages"
    )

    started = datetime.now(UTC)
    stop = threading.Event()
    last_print = [0.0]
    sent = [0]

    def on_round(rounds: int, published: int) -> None:
        sent[0] = published
        if time.monotonic() - last_print[0] < 5:
            return
        last_print[0] = time.monotonic()
        with connect(settings.database_url) as conn:
            counts, quarantined = _counts(conn, started)
        per = "  ".join(f"{d} {counts.get(d, 0):>5}" for d in DOMAINS)
        _say(
            f"  t+{(datetime.now(UTC) - started).total_seconds():3.0f}s  published "
            f"{published:>5} msgs │ readings stored: {per} │ quarantined {quarantined}"
        )

    interrupted = False
    try:
        simulate(
            settings,
            duration=duration,
            interval=1.0,
            speed=600.0,
            seed=7,
            faults=True,
            stop=stop,
            on_round=on_round,
        )
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
    time.sleep(1.0)  # let the last batch commit
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = -9
    with connect(settings.database_url) as conn:
        counts, quarantined = _counts(conn, started)
        reasons = conn.execute(
            "SELECT reason, count(*) FROM quarantine WHERE "
            "last_received_at >= %s GROUP BY 1 ORDER BY 1",
            (started,),
        ).fetchall()
        latest = conn.execute(
            "SELECT DISTINCT ON (r.device_id, r.metric) d.domain, r.device_id, r.metric, "
            "r.value, r.ts FROM readings r JOIN devices d USING (device_id) "
            "WHERE r.ingested_at >= %s ORDER BY r.device_id, r.metric, r.ts DESC",
            (started,),
        ).fetchall()
    _say("")
    _say(
        f"■ demo {'interrupted' if interrupted else 'finished'}: {sent[0]} messages published; "
        f"ingest exited with code {code}"
    )
    for d in DOMAINS:
        _say(f"  {d:<8} {counts.get(d, 0):>6} readings stored")
    _say(f"  quarantine: {quarantined} message(s) " + ", ".join(f"{r}={n}" for r, n in reasons))
    units = {m.name: m.unit for m in default_registry().metrics.values()}
    _say("  latest values:")
    for domain, device, metric, value, ts in latest:
        _say(
            f"    {domain:<8} {device:<18} {metric:<10} {value:>10.3f} "
            f"{units[str(metric)]:<6} at {cast(datetime, ts).astimezone(UTC):%H:%M:%SZ}"
        )
    _say("")
    _say("Where to look next:")
    _say("  urbanpulse devices list              devices with their last reading")
    _say("  urbanpulse quarantine list           what was refused, by reason")
    _say(f"  psql {settings.database_url} -c 'SELECT * FROM readings ORDER BY ts DESC LIMIT 20'")
    _say("  docs/contract.md                     how devices must publish")
    missing = [d for d in DOMAINS if not counts.get(d)]
    if missing and not interrupted:
        _say(f"✗ no readings arrived for {', '.join(missing)}")
        return 1
    return 130 if interrupted else 0
