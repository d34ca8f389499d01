"""The `urbanpulse` command as a person types it, including a short `make demo` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from demo.run import demo_database
from tests.pipeline import wait_until
from tests.services import SERVER_URL, Backend, Mosquitto, scratch_database
from urbanpulse.db.connect import drop_database, with_database

ROOT = Path(__file__).resolve().parents[1]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the tests read the return code
        [sys.executable, "-m", "urbanpulse.cli", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def test_migrate_import_list_and_quarantine_list(tmp_path: Path, fleet_file: Path) -> None:
    with scratch_database(SERVER_URL) as url:
        env = {"URBANPULSE_DATABASE_URL": url, "URBANPULSE_TIMESCALEDB": "off"}
        out = cli("db", "migrate", env=env)
        assert out.returncode == 0, out.stderr
        assert "created" in out.stdout and "0001_core" in out.stdout
        out = cli("devices", "import", str(fleet_file), env=env)
        assert out.returncode == 0 and "208 device(s): 208 created" in out.stdout, out.stderr
        out = cli("devices", "list", "--domain", "parking", env=env)
        assert out.returncode == 0 and "pk-hospital" in out.stdout and "never" in out.stdout
        assert "wn-xlh-inlet" not in out.stdout
        out = cli("quarantine", "list", env=env)
        assert out.returncode == 0 and "empty" in out.stdout
        out = cli("db", "maintain", env=env)
        assert out.returncode == 0 and "readings_hourly" in out.stdout, out.stderr


def test_bad_device_file_exits_nonzero_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "d.yaml"
    bad.write_text("- {device_id: a1, domain: moon, kind: x, name: y}\n")
    out = cli("devices", "import", str(bad))
    assert out.returncode == 1
    assert "moon" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_database_is_explained() -> None:
    out = cli(
        "db",
        "migrate",
        env={"URBANPULSE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/urbanpulse"},
    )
    assert out.returncode == 1
    assert "is PostgreSQL running?" in out.stderr and "Traceback" not in out.stderr


def test_invalid_setting_is_explained() -> None:
    out = cli("db", "migrate", env={"URBANPULSE_MQTT_URL": "http://nope"})
    assert out.returncode == 2 and "URBANPULSE_MQTT_URL" in out.stderr


def test_demo_shows_all_four_domains_and_ends_by_itself(tmp_path: Path, backend: Backend) -> None:
    """The whole pipeline on each storage path: simulated devices publish through a real
    broker, ingest stores every reading, the rule engine records the series and KPIs and
    raises the scenario's alerts."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        with scratch_database(backend.server_url) as url:
            out = cli(
                "demo",
                "--duration",
                "8",
                env={
                    "URBANPULSE_DATABASE_URL": url,
                    "URBANPULSE_MQTT_URL": broker.url,
                    "URBANPULSE_TIMESCALEDB": backend.timescale_mode,
                },
            )
            assert out.returncode == 0, out.stdout + out.stderr
            # the demo checks the simulator's own ledger against the database, exactly
            assert "✓ every reading the simulator sent is stored" in out.stdout, out.stdout
            stored = {
                line.split()[0]: int(line.split()[1])
                for line in out.stdout.splitlines()
                if line.strip().endswith("readings stored")
            }
            assert set(stored) == {"water", "flood", "air", "parking"}
            assert all(n > 0 for n in stored.values()), stored
            ponding = next(x for x in out.stdout.splitlines() if "ponding ≥ 15 cm" in x)
            assert ponding.count(" cm") == 3 + 1  # three points, and the heading's "15 cm"
            assert "car parks ≥ 95 % full: pk-happyvalley" in out.stdout
            assert "AQI > 200" in out.stdout and "simulated" in out.stdout
            # the rule catalogue's verdicts on the simulated days, with the owning department
            alerts = out.stdout.split("Alerts raised by the rule catalogue")[1]
            assert alerts.count("flood.ponding_15cm") == 3 and "区住房城乡建委" in alerts
            assert "device.offline_parking   pk-school" in alerts
            demo_url = with_database(url, demo_database(url))
            try:
                with psycopg.connect(demo_url) as conn:
                    row = conn.execute(
                        "SELECT count(*), count(DISTINCT device_id) FROM readings"
                    ).fetchone()
                    derived = conn.execute(
                        "SELECT (SELECT count(DISTINCT series) FROM recorded), "
                        "(SELECT count(DISTINCT kpi_id) FROM kpi_values), "
                        "(SELECT count(*) FROM alerts WHERE status IN ('firing', 'resolved')), "
                        "to_regclass('timescaledb_information.hypertables') IS NOT NULL"
                    ).fetchone()
            finally:
                drop_database(demo_url)
            assert row is not None and row[0] == sum(stored.values()) and row[1] == 208
            assert derived is not None
            series, kpis, raised, on_timescale = derived
            assert series >= 5 and kpis >= 3 and raised >= 10, derived
            assert on_timescale == backend.timescale
    finally:
        broker.stop()


def test_simulate_lists_explains_and_refuses_clearly(tmp_path: Path) -> None:
    out = cli("simulate", "--list")
    assert out.returncode == 0 and "rainstorm" in out.stdout and "暴雨" in out.stdout
    out = cli("simulate", "no-such-thing", "--dry-run")
    assert out.returncode == 1 and "known: baseline" in out.stderr and "Traceback" not in out.stderr
    out = cli("simulate", "rainstorm", "--start", "2999-01-01T00:00+08:00", "--dry-run")
    assert out.returncode == 1 and "in the future" in out.stderr
    out = cli("simulate", "device-faults", "--dry-run", "--processes", "2")
    assert out.returncode == 0, out.stderr
    assert (
        "38,929 messages" in out.stdout
        and "8 message(s) that ingest should quarantine" in out.stdout
    )
    fleet = tmp_path / "fleet.csv"
    out = cli("simulate", "--write-fleet", str(fleet), "--devices", "1000")
    assert out.returncode == 0 and "1,000 devices" in out.stdout
    assert len(fleet.read_text(encoding="utf-8").splitlines()) == 1001


def test_simulate_publishes_a_scenario_that_ingest_stores(tmp_path: Path) -> None:
    """`urbanpulse simulate rainstorm --fast` against a private broker, with ingest running."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        with scratch_database(SERVER_URL) as url:
            env = {
                "URBANPULSE_DATABASE_URL": url,
                "URBANPULSE_MQTT_URL": broker.url,
                "URBANPULSE_TIMESCALEDB": "off",
                "URBANPULSE_INGEST_GROUP": "clitest",
            }
            assert cli("db", "migrate", env=env).returncode == 0
            log = tmp_path / "ingest.log"
            with log.open("wb") as sink:
                ingest = subprocess.Popen(
                    [sys.executable, "-m", "urbanpulse.cli", "ingest"],
                    cwd=ROOT,
                    env=dict(os.environ, **env),
                    stderr=sink,
                )
            try:
                # messages published before the group's first subscription reach nobody
                wait_until(lambda: "subscribed to" in log.read_text(), 30, "ingest to subscribe")
                out = cli("simulate", "rainstorm", "--fast", env=env)
                assert out.returncode == 0, out.stderr
                assert "provisioned 208 devices" in out.stdout
                assert "published 39,264 messages (51,552 readings)" in out.stdout
                deadline = time.monotonic() + 60
                count = 0
                while time.monotonic() < deadline and count < 51_552:
                    with psycopg.connect(url) as conn:
                        row = conn.execute("SELECT count(*) FROM readings").fetchone()
                    count = row[0] if row else 0
                    time.sleep(0.5)
            finally:
                ingest.send_signal(signal.SIGTERM)
                ingest.wait(timeout=30)
            with psycopg.connect(url) as conn:
                flooded = conn.execute(
                    "SELECT device_id FROM readings WHERE metric = 'depth' "
                    "GROUP BY 1 HAVING max(value) >= 15 ORDER BY 1"
                ).fetchall()
                total = conn.execute("SELECT count(*) FROM readings").fetchone()
            assert total == (51_552,)
            assert [f[0] for f in flooded] == [
                "fl-fhh-underpass",
                "fl-lc-honghe",
                "fl-lc-zhongshan",
            ]
    finally:
        broker.stop()
