"""Run tests with the clock moved ahead: the guard against a suite that passes only in the weeks
after it was written.

The class of failure it catches: test data pinned to a fixed date (a scenario "ending"
2026-11-20 09:00 UTC, say) read by code that compares it with the real clock (an API that looks
back 14 days from `now()`, a retention horizon, a token's expiry). Such a test passes on the
day it is written and starts failing weeks later, on a branch that touched nothing near it.

The mechanism: the wall clock reads `--shift` later (400 days by default: a new year, another
weekday and month, past a year's retention horizons) wherever the tests' data meets it:

- a private PostgreSQL cluster of its own (initdb in a temporary folder, a free port) runs
  with libfaketime preloaded (Debian's `faketime`), so `now()` in SQL moves; the tests'
  databases are made there;
- pytest and every Python process it starts (API server, ingest, rules, notifier) move their
  clock with time-machine, from `tests/clockshift_site/sitecustomize.py` on PYTHONPATH.
  (libfaketime is not used there: it hangs Python's timed waits on threads.)

The monotonic clock is left alone (timeouts and timers stay real); Mosquitto and Chromium keep
the real clock, as a phone does that opens an old alert. TimescaleDB tests are left out: their
server is the shared one on 5433, whose clock cannot move.

    python -m tests.clockshift                       # the date-sensitive modules, +400 days
    python -m tests.clockshift --shift 3y -- -k api  # any pytest arguments after --

A test that fails here and passes without the shift reads the wall clock against fixed dates:
take its time from an injected clock or from dates relative to the run (see
tests/test_rules_scenarios.py), or fix the product code that counts from now.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.services import PostgresCluster

# The tests that hold data at fixed dates and reach code that reads the clock: the API and
# console over the demo scenario, the notifier, KPIs, rollups, the dashboards' queries, status.
# The scenario tests hand the rule engine its `now` on every pass, so by construction they
# cannot meet the clock; two of them that go through the command line are kept here.
DATE_SENSITIVE = [
    "tests/test_api.py",
    "tests/test_api_inprocess.py",
    "tests/test_console.py",
    "tests/test_rules_scenarios.py::test_a_second_pass_adds_nothing_and_health_is_recorded",
    "tests/test_rules_scenarios.py::test_two_rules_run_processes_never_duplicate_an_alert",
    "tests/test_early_firing.py",
    "tests/test_alert_store.py",
    "tests/test_notify.py",
    "tests/test_kpi.py",
    "tests/test_recording.py",
    "tests/test_storage.py",
    "tests/test_grafana.py",
    "tests/test_status.py",
]
_SHIFT = re.compile(r"^\+?(\d+)([dy])$")


def faketime_library() -> str:
    """libfaketime, the thread-safe build, for the PostgreSQL server."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise SystemExit(
            "libfaketime is not installed: apt-get install faketime (.ci/run installs it)"
        )
    return str(found[0])


def faketime_offset(shift: str) -> str:
    """'400d' or '3y' as libfaketime's relative offset ('+400d', '+1095d')."""
    match = _SHIFT.match(shift.strip())
    if not match:
        raise SystemExit(f"--shift: expected days or years like 400d or 3y, got {shift!r}")
    n, unit = int(match.group(1)), match.group(2)
    return f"+{n * 365 if unit == 'y' else n}d"


def check_moved(db_url: str, env: dict[str, str], days: int) -> None:
    """Refuse to run (and so to pass) unless both the server's and the tests' clocks moved."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT extract(epoch FROM now())").fetchone()
    server = float(row[0]) if row else 0.0
    tests = float(
        subprocess.run(
            [sys.executable, "-c", "import time; print(time.time())"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    want = time.time() + days * 86400 - 3600
    if server < want or tests < want:
        raise SystemExit(f"the clock did not move (server {server:.0f}, tests {tests:.0f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.clockshift", description=__doc__)
    parser.add_argument("--shift", default="400d", help="how far ahead (days or years)")
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments (after --)")
    args = parser.parse_args(argv)
    offset = faketime_offset(args.shift)
    days = int(offset[1:-1])
    cluster = PostgresCluster(
        env={
            "LD_PRELOAD": faketime_library(),
            "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
    try:
        cluster.start()
        site = str(Path(__file__).resolve().parent / "clockshift_site")
        path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
        env = dict(
            os.environ,
            PYTHONPATH=path,
            URBANPULSE_TEST_CLOCK_SHIFT_S=str(days * 86400),
            URBANPULSE_TEST_DATABASE_URL=cluster.url,
        )
        env.pop("URBANPULSE_REQUIRE_TIMESCALEDB", None)
        check_moved(cluster.url, env, days)
        targets = args.pytest_args or DATE_SENSITIVE
        print(f"== tests with the clock moved {offset}: {' '.join(targets)}", flush=True)
        command = [sys.executable, "-m", "pytest", "-p", "no:time_machine"]
        command += ["-m", "not timescaledb and not slow", *targets]
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
