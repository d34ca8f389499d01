"""The `urbanpulse` command as a person types it, including a short `make demo` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.services import SERVER_URL, Mosquitto, scratch_database

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
        assert out.returncode == 0 and "14 device(s): 14 created" in out.stdout, out.stderr
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
    assert out.returncode == 2 and "mqtt_url" in out.stderr


def test_demo_shows_all_four_domains_and_ends_by_itself(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        with scratch_database(SERVER_URL) as url:
            out = cli(
                "demo",
                "--duration",
                "8",
                env={
                    "URBANPULSE_DATABASE_URL": url,
                    "URBANPULSE_MQTT_URL": broker.url,
                    "URBANPULSE_TIMESCALEDB": "off",
                },
            )
            assert out.returncode == 0, out.stdout + out.stderr
            # every round publishes one message per fleet device; round 5 adds 3 broken ones
            published = int(out.stdout.split(" messages published")[0].rsplit(" ", 1)[1])
            rounds = (published - 3) // 14
            per_round = {"water": 8, "flood": 4, "air": 12, "parking": 6}
            for domain, n in per_round.items():
                line = next(
                    x
                    for x in out.stdout.splitlines()
                    if x.strip().startswith(domain) and "readings stored" in x
                )
                assert int(line.split()[1]) == n * rounds, line
            assert "unknown_device=1" in out.stdout and "bad_json=1" in out.stdout
            with psycopg.connect(url) as conn:
                domains = conn.execute(
                    "SELECT count(DISTINCT d.domain) FROM readings r "
                    "JOIN devices d USING (device_id)"
                ).fetchone()
            assert domains == (4,)
    finally:
        broker.stop()
