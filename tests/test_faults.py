"""The fault-injection run of `tests/faults.py`, short: 100 s of a live stream through
Mosquitto, two ingest workers, the rules runner and the notifier, with a fault every 11 s
(each component SIGKILLed and restarted, PostgreSQL crashed, Mosquitto restarted, the database
connections cut and refused). Nothing may be lost or duplicated: readings, alerts,
notifications and their deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults import Plan, report, run

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
