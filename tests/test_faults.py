"""The fault-injection run of `tests/faults.py`, short: 100 s of a live stream through
Mosquitto, two ingest workers, the rules runner and the notifier, with a fault every 11 s
(each component SIGKILLed and restarted, PostgreSQL crashed, Mosquitto restarted, the database
connections cut and refused). Nothing may be lost or duplicated: readings, alerts,
notifications and their deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import Plan, overload, overload_report, report, run

pytestmark = pytest.mark.slow


def test_every_fault_in_turn_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = run(Plan(), tmp_path, print)
    print(report(out))
    assert out.problems() == [], report(out)
    # the run did what it claims: every fault happened, the stream and the alerts were real
    assert len(out.faults) >= 8
    assert out.expected_readings > 15_000 and out.stored_rows == out.expected_readings
    assert sorted(out.alerts) == sorted(out.expected_alerts) and len(out.expected_alerts) == 6
    assert out.notifications >= 1 and out.deliveries == out.notifications


def test_overload_with_the_database_frozen_holds_memory_and_catches_up(tmp_path: Path) -> None:
    """60 000 messages into a frozen database: the worker holds at most Receive Maximum
    messages, the broker holds the rest (visible in the worker's metrics), and after the
    database returns every reading is stored."""
    o = overload(tmp_path, messages=60_000, max_inflight=500, pause_s=5.0)
    print(overload_report(o))
    assert o.problems() == [], overload_report(o)
    assert o.stored_rows == o.expected_readings == 180_000
    assert 0 < o.unacked_peak <= 500
    # the backlog is the broker's, and visible: most of the 60 000 were held there at once
    assert o.broker_stored_peak > 30_000 and o.broker_stored_after < 1_000
    assert o.store_age_peak_s >= 5.0  # the stall shows: the last commit stops moving
    # bounded: the worker did not buffer the backlog (60 000 messages would be > 60 MB here)
    assert o.rss_peak_mb - o.rss_idle_mb < 30, overload_report(o)
