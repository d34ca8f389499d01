"""Fixtures: every test gets its own database; integration tests share a private Mosquitto.

Storage paths: a test that takes `backend` (or `any_db_url`) runs on plain PostgreSQL and on
TimescaleDB; `timescale` is the TimescaleDB path alone. Where no TimescaleDB server answers
(URBANPULSE_TEST_TIMESCALE_URL, default 127.0.0.1:5433) those are skipped with the reason; with
URBANPULSE_REQUIRE_TIMESCALEDB set (CI) they fail.

The calendar: no test may depend on the day it runs. Data is either pinned to fixed dates and
read only by code that is handed its `now` (the rule engine, the notifier's planning), or dated
relative to the run. `make test-clock` (tests/clockshift.py) is the guard: it runs the
date-sensitive modules again with the wall clock moved 400 days ahead, in PostgreSQL
(libfaketime) and in every Python process (time-machine), so a fixed date that meets code
counting from now() fails there first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from simulators.city import build_fleet, load_city
from simulators.run import write_fleet
from tests.services import (
    PLAIN,
    SERVER_URL,
    TIMESCALE,
    Backend,
    Mosquitto,
    need_timescale,
    scratch_database,
)
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy


@pytest.fixture
def db_url() -> Iterator[str]:
    """A freshly migrated database on plain PostgreSQL, dropped after the test."""
    with scratch_database(SERVER_URL) as url:
        migrate(url, load_policy(), timescale_mode="off")
        yield url


@pytest.fixture(
    params=[
        pytest.param(PLAIN, id="plain"),
        pytest.param(TIMESCALE, id="timescaledb", marks=pytest.mark.timescaledb),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each storage path in turn: a test taking this runs on plain PostgreSQL and on
    TimescaleDB (skipped with the reason where TimescaleDB is not set up, failed in CI)."""
    chosen: Backend = request.param
    if chosen.timescale:
        need_timescale()
    return chosen


@pytest.fixture
def timescale() -> Backend:
    """The TimescaleDB path alone."""
    need_timescale()
    return TIMESCALE


@pytest.fixture
def any_db_url(backend: Backend) -> Iterator[str]:
    """A freshly migrated database on each storage path, dropped after the test."""
    with scratch_database(backend.server_url) as url:
        migrate(url, load_policy(), timescale_mode=backend.timescale_mode)
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(db_url) as c:
        yield c


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto for the whole session (own port, own persistence directory)."""
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests sharing a broker never see each other."""
    return f"t{uuid.uuid4().hex[:10]}/v1"


@pytest.fixture(scope="session")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated city's fleet as a device file (what `simulate --write-fleet` writes)."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    write_fleet(path, build_fleet(load_city()))
    return path
