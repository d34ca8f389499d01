"""Schema, migrations, storage policy, provisioning and batch writes on real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.services import Backend, scratch_database
from urbanpulse.contract import Reading, Reason, Rejection, default_registry
from urbanpulse.db import migrate as migrate_mod
from urbanpulse.db.devices import device_refs, list_devices, read_device_file, upsert_devices
from urbanpulse.db.migrate import Migration, migrate, migrations
from urbanpulse.db.policy import load_policy, parse_policy, refresh_rollups
from urbanpulse.db.store import QuarantineEntry, store_batch
from urbanpulse.errors import ConfigError, ContractError, MigrationError

T0 = datetime(2026, 11, 25, 15, 30, tzinfo=UTC)  # 23:30 in Yongchuan (UTC+8)

ALL_MIGRATIONS = tuple(f"{m.version:04d}_{m.name}" for m in migrate_mod.migrations())


def tables(conn: psycopg.Connection[Any]) -> set[str]:
    """Tables and views (TimescaleDB's rollups are continuous aggregates, views)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
    ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.fixture
def any_conn(any_db_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection to a fresh database on each storage path."""
    with psycopg.connect(any_db_url) as c:
        yield c


def test_migrate_creates_the_database_and_is_idempotent(backend: Backend) -> None:
    with scratch_database(backend.server_url) as url:
        first = migrate(url, load_policy(), timescale_mode=backend.timescale_mode)
        second = migrate(url, load_policy(), timescale_mode=backend.timescale_mode)
        assert first.timescale == second.timescale == backend.timescale
        assert first.created_database and first.applied == ALL_MIGRATIONS
        assert not second.created_database and second.applied == ()
        with psycopg.connect(url) as conn:
            assert {
                "devices",
                "readings",
                "quarantine",
                "schema_migrations",
                "readings_hourly",
                "readings_daily",
            } <= tables(conn)


def test_concurrent_migrators_apply_each_migration_once(backend: Backend) -> None:
    mode = backend.timescale_mode
    with scratch_database(backend.server_url) as url:
        migrate(url, load_policy(), timescale_mode=mode)  # create the database first
        errors: list[BaseException] = []

        def run() -> None:
            try:
                migrate(url, load_policy(), timescale_mode=mode)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with psycopg.connect(url) as conn:
            count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert count == (len(migrations()),)


def test_an_edited_applied_migration_is_refused(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = migrate_mod.migrations()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
    monkeypatch.setattr(migrate_mod, "migrations", lambda: edited)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(db_url, load_policy(), timescale_mode="off")


def test_policy_file_is_strict() -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy(
            {
                "readings": {"retension": "3 days", "chunk_interval": "soon"},
                "timezone": "Mars/Olympus",
            },
            "p.yaml",
        )
    text = str(err.value)
    assert "retension" in text and "soon" in text and "Mars/Olympus" in text


def test_store_batch_absorbs_duplicates_and_folds_repeated_quarantine(
    any_conn: psycopg.Connection[Any],
) -> None:
    conn = any_conn
    r1 = Reading("aq1", "pm25", T0, 10.0)
    r2 = Reading("aq1", "pm25", T0 + timedelta(hours=1), 20.0)
    first = store_batch(conn, [r1, r2, r1], [])
    assert (first.inserted, first.duplicates) == (2, 1)
    again = store_batch(conn, [r1, Reading("aq1", "pm25", T0, 99.0)], [])
    assert (again.inserted, again.duplicates) == (0, 2)
    # the first value stored for (device, metric, time) stays
    assert conn.execute("SELECT value FROM readings WHERE ts = %s", (T0,)).fetchone() == (10.0,)

    bad = QuarantineEntry("yc/v1/air/x", b"{", T0, (Rejection(Reason.BAD_JSON, "eof"),), "x")
    store_batch(conn, [], [bad, bad])
    store_batch(conn, [], [bad])
    row = conn.execute("SELECT reason, occurrences, payload, state FROM quarantine").fetchall()
    assert row == [("bad_json", 3, b"{", "pending")]


def _staged(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session went through the staging table (the merge path)."""
    row = conn.execute("SELECT to_regclass('pg_temp.readings_stage') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_store_batch_copies_straight_in_and_merges_only_on_a_duplicate(
    any_conn: psycopg.Connection[Any],
) -> None:
    conn = any_conn
    batch = [Reading("wn1", "volume", T0 + timedelta(minutes=i), float(i)) for i in range(50)]
    bad = QuarantineEntry("yc/v1/water/x", b"[", T0, (Rejection(Reason.BAD_JSON, "eof"),), "x")
    res = store_batch(conn, batch, [bad])
    assert (res.inserted, res.duplicates, res.quarantined) == (50, 0, 1)
    assert not _staged(conn)  # one COPY into readings, no staging table

    # one duplicate among new readings: the COPY is refused and rolled back whole (quarantine
    # row included), then the merge stores the new ones and the quarantine row once
    more = [Reading("wn1", "volume", T0 + timedelta(minutes=i), -1.0) for i in range(49, 60)]
    res = store_batch(conn, more, [bad])
    assert (res.inserted, res.duplicates, res.quarantined) == (10, 1, 1)
    assert _staged(conn)
    rows = conn.execute("SELECT count(*), sum(value) FROM readings").fetchone()
    assert rows == (60, sum(range(50)) - 10.0)  # minute 49 kept its first value
    assert conn.execute("SELECT occurrences FROM quarantine").fetchall() == [(2,)]


def test_device_import_yaml_then_csv_update(
    any_conn: psycopg.Connection[Any], fleet_file: Path, tmp_path: Path
) -> None:
    conn = any_conn
    specs = read_device_file(fleet_file, default_registry())
    result = upsert_devices(conn, specs)
    assert result.created == len(specs) >= 12
    assert {d.domain for d in device_refs(conn).values()} == {"water", "flood", "air", "parking"}
    csv_file = tmp_path / "more.csv"
    csv_file.write_text(
        "device_id,domain,kind,name,zone,capacity,report_interval_s,attr_profile\n"
        "pk-school,parking,car_park,萱花中学路内停车,老城片区,64,300,school\n"
        "pk-new,parking,car_park,新车场,凤凰湖片区,100,600,\n",
        encoding="utf-8",
    )
    result = upsert_devices(conn, read_device_file(csv_file, default_registry()))
    assert (result.created, result.updated) == (1, 1)
    row = conn.execute(
        "SELECT capacity, attributes FROM devices WHERE device_id = 'pk-school'"
    ).fetchone()
    assert row == (64.0, {"profile": "school"})
    listed = list_devices(conn, domain="parking")
    parks = sorted(s.device_id for s in specs if s.domain == "parking")
    assert [d["device_id"] for d in listed] == sorted([*parks, "pk-new"])


def test_device_file_errors_are_all_reported_with_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "device_id,domain,kind,name,lat,colour\n"
        "ok-1,air,aq_station,站1,29.3,\n"
        "bad/id,air,aq_station,站2,29.3,\n"
        "x-2,sea,buoy,浮标,29.3,\n"
        "x-3,air,aq_station,站3,95,\n"
        "ok-1,air,aq_station,again,29.3,red\n",
        encoding="utf-8",
    )
    with pytest.raises(ContractError) as err:
        read_device_file(bad, default_registry())
    text = str(err.value)
    for expected in ("line 3", "device_id", "line 4", "sea", "line 5", "lat", "line 6", "colour"):
        assert expected in text


def _hourly_daily(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[Any]]:
    hourly = conn.execute(
        "SELECT bucket, n, avg, min, max, first, last FROM readings_hourly "
        "WHERE device_id = 'wn1' ORDER BY bucket"
    ).fetchall()
    daily = conn.execute(
        "SELECT bucket, n, first, last FROM readings_daily WHERE device_id = 'wn1' ORDER BY bucket"
    ).fetchall()
    return hourly, daily


def _rollup_fixture(conn: psycopg.Connection[Any]) -> None:
    # a cumulative meter read every 20 min from 23:30 to 00:50 local time: two local days
    readings = [
        Reading("wn1", "volume", T0 + timedelta(minutes=20 * i), 100.0 + i) for i in range(5)
    ]
    store_batch(conn, readings, [])


def test_plain_rollups_use_local_day_boundaries(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _rollup_fixture(conn)
        refresh_rollups(conn, load_policy(), timescale=False, now=T0 + timedelta(hours=2))
        refresh_rollups(conn, load_policy(), timescale=False, now=T0 + timedelta(hours=2))
        hourly, daily = _hourly_daily(conn)
    assert [(h[0], h[1], h[5], h[6]) for h in hourly] == [
        (datetime(2026, 11, 25, 15, tzinfo=UTC), 2, 100.0, 101.0),
        (datetime(2026, 11, 25, 16, tzinfo=UTC), 3, 102.0, 104.0),
    ]
    # local midnight (16:00 UTC) splits the days; consumption per day = last - first
    assert daily == [
        (datetime(2026, 11, 24, 16, tzinfo=UTC), 2, 100.0, 101.0),
        (datetime(2026, 11, 25, 16, tzinfo=UTC), 3, 102.0, 104.0),
    ]


@pytest.mark.timescaledb
def test_timescale_path_hypertable_policies_and_continuous_aggregates(timescale: Backend) -> None:
    with scratch_database(timescale.server_url) as url:
        result = migrate(url, load_policy(), timescale_mode="require")
        assert result.timescale
        again = migrate(url, load_policy(), timescale_mode="require")  # idempotent
        assert again.timescale and again.applied == ()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.hypertables "
                "WHERE hypertable_name = 'readings'"
            ).fetchone() == (1,)
            jobs = {
                str(r[0])
                for r in conn.execute(
                    "SELECT proc_name FROM timescaledb_information.jobs "
                    "WHERE hypertable_name IS NOT NULL"
                ).fetchall()
            }
            assert {
                "policy_compression",
                "policy_retention",
                "policy_refresh_continuous_aggregate",
            } <= jobs
            _rollup_fixture(conn)
            store_batch(conn, [Reading("wn1", "volume", T0, 100.0)], [])  # duplicate absorbed
            refresh_rollups(conn, load_policy(), timescale=True, now=T0 + timedelta(hours=2))
            hourly, daily = _hourly_daily(conn)
            assert [(h[1], h[5], h[6]) for h in hourly] == [(2, 100.0, 101.0), (3, 102.0, 104.0)]
            assert [(d[0], d[1]) for d in daily] == [
                (datetime(2026, 11, 24, 16, tzinfo=UTC), 2),
                (datetime(2026, 11, 25, 16, tzinfo=UTC), 3),
            ]
            # compressed chunks still absorb duplicates and take late data
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('readings') c")
            res = store_batch(
                conn,
                [
                    Reading("wn1", "volume", T0, 100.0),
                    Reading("wn1", "volume", T0 + timedelta(minutes=5), 100.5),
                ],
                [],
            )
            assert (res.inserted, res.duplicates) == (1, 1)
            # a batch of new readings only: one COPY straight into the compressed chunk, then
            # the same batch again: refused by the key there, absorbed by the merge
            fresh = [Reading("wn1", "volume", T0 + timedelta(minutes=m), 101.0) for m in (7, 9)]
            assert store_batch(conn, fresh, []).inserted == 2
            again_res = store_batch(conn, fresh, [])
            assert (again_res.inserted, again_res.duplicates) == (0, 2)


def test_auto_mode_falls_back_to_plain_postgresql_when_timescale_cannot_load() -> None:
    # the main test server has no TimescaleDB preloaded (absent, or installed but not
    # preloaded, where CREATE EXTENSION would kill the session): auto must fall back cleanly
    with scratch_database() as url:
        result = migrate(url, load_policy(), timescale_mode="auto")
        assert not result.timescale and result.applied == ALL_MIGRATIONS
        with pytest.raises(ConfigError, match="TimescaleDB"):
            migrate(url, load_policy(), timescale_mode="require")


@pytest.mark.timescaledb
def test_the_policys_jobs_run_from_the_scheduler_without_failure(timescale: Backend) -> None:
    """Compression, retention and each continuous aggregate's refresh, run by TimescaleDB's
    own scheduler in background workers (not by CALL run_job): every job of the database
    succeeds, none fails, and each does its work. Times are relative to the server's clock."""
    policy = load_policy()
    assert policy.retention is not None and policy.compress_after is not None
    with scratch_database(timescale.server_url) as url:
        migrate(url, policy, timescale_mode="require")
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            now: datetime = row[0]
            expired = now - policy.retention - timedelta(days=3)
            aged = now - policy.compress_after - timedelta(days=2)
            recent = now - timedelta(days=2)  # a whole hour and a whole local day, materialised
            store_batch(
                conn,
                [
                    Reading("wn1", "volume", t + timedelta(minutes=10 * m), 100.0 + m)
                    for t in (expired, aged, recent)
                    for m in range(6)
                ],
                [],
            )
            jobs = conn.execute(
                "SELECT job_id, proc_name, hypertable_name, next_start, fixed_schedule "
                "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL "
                "ORDER BY next_start"
            ).fetchall()
            # compression, retention of readings and of each rollup, each rollup's refresh:
            # on fixed schedules, none due at once after a migrate, no two at the same moment
            assert len(jobs) == 2 + 2 * len(policy.rollups), jobs
            assert all(j[3] > now and j[4] for j in jobs), jobs
            assert len({j[3] for j in jobs}) == len(jobs), jobs
            migrate(url, policy, timescale_mode="require")  # again: the same schedule
            assert [
                (j[1], j[2], j[3])
                for j in conn.execute(
                    "SELECT job_id, proc_name, hypertable_name, next_start "
                    "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL "
                    "ORDER BY next_start"
                ).fetchall()
            ] == [(j[1], j[2], j[3]) for j in jobs]
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT job_id FROM timescaledb_information.jobs "
                    "WHERE hypertable_name IS NOT NULL ORDER BY next_start"
                ).fetchall()
            ]

            def stats(job_ids: list[int]) -> list[tuple[Any, ...]]:
                return conn.execute(
                    "SELECT job_id, last_run_status, total_runs, total_failures "
                    "FROM timescaledb_information.job_stats WHERE job_id = ANY(%s) "
                    "AND total_runs > 0 AND last_run_status IS NOT NULL ORDER BY job_id",
                    (job_ids,),
                ).fetchall()

            # each job made due now in its schedule's order; the scheduler starts it
            for job_id in ids:
                conn.execute("SELECT alter_job(%s, next_start => now())", (job_id,))
                deadline = time.monotonic() + 60
                while not stats([job_id]) and time.monotonic() < deadline:
                    time.sleep(0.2)
            ran = stats(ids)
            assert [r[0] for r in ran] == sorted(ids), (jobs, ran)
            assert all(r[1] == "Success" and r[3] == 0 for r in ran), ran
            every = conn.execute(
                "SELECT job_id, total_failures FROM timescaledb_information.job_stats "
                "WHERE total_failures > 0"
            ).fetchall()
            assert every == []
            # retention dropped the expired chunk; compression took the aged one
            counts = conn.execute(
                "SELECT count(*) FILTER (WHERE ts < %s), count(*) FROM readings",
                (now - policy.retention,),
            ).fetchone()
            assert counts == (0, 12)
            compressed = conn.execute(
                "SELECT bool_or(is_compressed) FILTER (WHERE range_end <= %s), "
                "bool_or(is_compressed) FILTER (WHERE range_start >= %s) "
                "FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'",
                (now - policy.compress_after, now - policy.compress_after),
            ).fetchone()
            assert compressed == (True, False)
            # the refresh jobs materialised the recent hours and day
            for rollup in policy.rollups:
                name = sql.Identifier(rollup.name)
                conn.execute(
                    sql.SQL(
                        "ALTER MATERIALIZED VIEW {} SET (timescaledb.materialized_only)"
                    ).format(name)
                )
                got = conn.execute(
                    sql.SQL("SELECT count(*), sum(n) FROM {} WHERE bucket > %s").format(name),
                    (now - timedelta(days=4),),
                ).fetchone()
                assert got is not None and got[0] >= 1 and got[1] >= 1, (rollup.name, got)
