"""The storage policy file, and applying it on TimescaleDB or on plain PostgreSQL."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import yaml
from psycopg import sql

from urbanpulse.errors import ConfigError

log = logging.getLogger(__name__)

_INTERVAL = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?\s*$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def parse_interval(text: str, where: str) -> timedelta:
    """'3 days' -> timedelta; the policy only uses fixed-length units."""
    match = _INTERVAL.match(str(text))
    if not match:
        raise ConfigError(f"{where}: expected an interval like '7 days', got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str
    bucket: timedelta
    refresh_start_offset: timedelta
    refresh_end_offset: timedelta
    refresh_every: timedelta
    retention: timedelta | None


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    timezone: str
    chunk_interval: timedelta
    compress_after: timedelta | None
    compress_segment_by: tuple[str, ...]
    retention: timedelta | None
    rollups: tuple[Rollup, ...]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


_ROLLUP_KEYS = {
    "bucket",
    "refresh_start_offset",
    "refresh_end_offset",
    "refresh_every",
    "retention",
}
_SEGMENT_COLUMNS = {"device_id", "metric"}


def parse_policy(doc: Any, source: str) -> StoragePolicy:
    """Strict parsing: unknown keys and bad values are errors naming the key."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping")
    problems: list[str] = []
    extra = set(doc) - {"timezone", "readings", "rollups"}
    if extra:
        problems.append(f"unknown keys {sorted(extra)}")
    readings = doc.get("readings") or {}
    extra = set(readings) - {"chunk_interval", "compress_after", "compress_segment_by", "retention"}
    if extra:
        problems.append(f"readings: unknown keys {sorted(extra)}")
    timezone = str(doc.get("timezone", "UTC"))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"timezone: unknown zone {timezone!r}")

    def interval(value: Any, where: str) -> timedelta | None:
        if value is None:
            return None
        try:
            return parse_interval(value, where)
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    segment_by = tuple(readings.get("compress_segment_by") or ("device_id", "metric"))
    if set(segment_by) - _SEGMENT_COLUMNS:
        problems.append(f"readings.compress_segment_by: only {sorted(_SEGMENT_COLUMNS)}")
    rollups = []
    for name, spec in (doc.get("rollups") or {}).items():
        if not re.fullmatch(r"readings_[a-z0-9_]+", str(name)) or not isinstance(spec, dict):
            problems.append(f"rollups.{name}: name must be readings_<suffix> with a mapping")
            continue
        if set(spec) - _ROLLUP_KEYS:
            problems.append(f"rollups.{name}: unknown keys {sorted(set(spec) - _ROLLUP_KEYS)}")
        bucket = interval(spec.get("bucket"), f"rollups.{name}.bucket")
        if bucket is None:
            problems.append(f"rollups.{name}.bucket is required")
            continue
        rollups.append(
            Rollup(
                str(name),
                bucket,
                interval(spec.get("refresh_start_offset", "3 days"), f"rollups.{name}") or bucket,
                interval(spec.get("refresh_end_offset", "0 hours"), f"rollups.{name}")
                or timedelta(0),
                interval(spec.get("refresh_every", "15 minutes"), f"rollups.{name}")
                or timedelta(minutes=15),
                interval(spec.get("retention"), f"rollups.{name}.retention"),
            )
        )
    chunk = interval(readings.get("chunk_interval", "1 day"), "readings.chunk_interval")
    if problems:
        raise ConfigError(f"invalid storage policy {source}:\n  " + "\n  ".join(problems))
    return StoragePolicy(
        timezone,
        chunk or timedelta(days=1),
        interval(readings.get("compress_after"), "readings.compress_after"),
        segment_by,
        interval(readings.get("retention"), "readings.retention"),
        tuple(rollups),
    )


def load_policy(path: Path | None = None) -> StoragePolicy:
    if path is None:
        text = resources.files("urbanpulse.db").joinpath("policy.yaml").read_text("utf-8")
        return parse_policy(yaml.safe_load(text), "urbanpulse/db/policy.yaml")
    try:
        return parse_policy(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read storage policy {path}: {exc}") from exc


# --- the rollup query, shared by both paths --------------------------------------------------


def _origin(policy: StoragePolicy) -> datetime:
    """Bucket origin at local midnight; the zone has a fixed offset (China has no DST)."""
    return datetime(2000, 1, 1, tzinfo=policy.tz).astimezone(UTC)


def _rollup_select(rollup: Rollup, policy: StoragePolicy, timescale: bool) -> sql.Composed:
    if timescale:
        bucket = (
            sql.SQL("time_bucket({}::interval, ts, {})").format(
                sql.Literal(rollup.bucket), sql.Literal(policy.timezone)
            )
            if rollup.bucket >= timedelta(days=1)
            else sql.SQL("time_bucket({}::interval, ts)").format(sql.Literal(rollup.bucket))
        )
        first_last = sql.SQL("first(value, ts) AS first, last(value, ts) AS last")
    else:
        bucket = sql.SQL("date_bin({}::interval, ts, {}::timestamptz)").format(
            sql.Literal(rollup.bucket), sql.Literal(_origin(policy))
        )
        first_last = sql.SQL(
            "(array_agg(value ORDER BY ts))[1] AS first, "
            "(array_agg(value ORDER BY ts DESC))[1] AS last"
        )
    return sql.SQL(
        "SELECT device_id, metric, {bucket} AS bucket, count(*)::integer AS n, "
        "avg(value) AS avg, min(value) AS min, max(value) AS max, sum(value) AS sum, {fl} "
        "FROM readings"
    ).format(bucket=bucket, fl=first_last)


# --- feature detection --------------------------------------------------------------------


def timescale_installed(conn: psycopg.Connection[Any]) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        is not None
    )


def try_enable_timescale(conn: psycopg.Connection[Any], mode: str) -> bool:
    """CREATE EXTENSION when available; mode 'auto', 'require' or 'off'."""
    if mode == "off":
        return False
    if timescale_installed(conn):
        return True
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    preload = conn.execute("SHOW shared_preload_libraries").fetchone()
    if available and "timescaledb" not in str(preload[0] if preload else ""):
        # CREATE EXTENSION without the preload kills the session; check first
        problem = "installed but not in shared_preload_libraries"
        if mode == "require":
            raise ConfigError(f"TimescaleDB is required but {problem}")
        log.warning("TimescaleDB is %s; using plain PostgreSQL", problem)
        return False
    if available:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            return True
        except psycopg.Error as exc:  # e.g. not in shared_preload_libraries
            if mode == "require":
                raise ConfigError(f"TimescaleDB is required but cannot be enabled: {exc}") from exc
            log.warning(
                "TimescaleDB is available but cannot be enabled (%s); using plain PostgreSQL",
                str(exc).splitlines()[0],
            )
            return False
    if mode == "require":
        raise ConfigError(
            "TimescaleDB is required (URBANPULSE_TIMESCALEDB=require) but the "
            "extension is not installed on this server"
        )
    return False


# --- applying ---------------------------------------------------------------------------------


def _relkind(conn: psycopg.Connection[Any], name: str) -> str | None:
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
        "AND c.relname = %s",
        (name,),
    ).fetchone()
    return str(row[0]) if row else None


def _is_hypertable(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", (name,)
        ).fetchone()
        is not None
    )


def _is_cagg(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
            (name,),
        ).fetchone()
        is not None
    )


# When TimescaleDB's background jobs run, as offsets from local midnight. Left to itself, every
# policy added runs at once, and `migrate` re-adds them on every run: compression and retention
# of the same hypertable then take each other's locks and one dies with "deadlock detected"
# (seen on 2.28.3). Fixed, staggered slots keep them apart, off-peak, and the same after every
# migrate. The rollups' refreshes run every few minutes on minute marks of their own, and their
# retention falls between two refreshes.
COMPRESSION_SLOT = (timedelta(hours=2, minutes=10), timedelta(hours=12))  # (offset, every)
RETENTION_SLOT = (timedelta(hours=3, minutes=40), timedelta(days=1))
ROLLUP_REFRESH_OFFSET = timedelta(minutes=1)  # + a minute for each further rollup
ROLLUP_RETENTION_OFFSET = timedelta(hours=4, minutes=13, seconds=30)  # + 30 min for each further


def _next_slot(
    conn: psycopg.Connection[Any], policy: StoragePolicy, offset: timedelta, every: timedelta
) -> datetime:
    """The first instant after now that is `offset` past local midnight plus whole `every`s."""
    row = conn.execute(
        "SELECT date_bin(%s::interval, now(), %s::timestamptz) + %s::interval",
        (every, _origin(policy) + offset, every),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def apply_timescale(conn: psycopg.Connection[Any], policy: StoragePolicy) -> None:
    """Hypertable, compression, retention and continuous aggregates, with the background
    jobs on staggered fixed schedules; safe to run again."""
    if not _is_hypertable(conn, "readings"):
        conn.execute(
            "SELECT create_hypertable('readings', 'ts', chunk_time_interval => %s, "
            "migrate_data => true)",
            (policy.chunk_interval,),
        )
    else:
        conn.execute("SELECT set_chunk_time_interval('readings', %s)", (policy.chunk_interval,))
    if policy.compress_after is not None:
        conn.execute(
            sql.SQL(
                "ALTER TABLE readings SET (timescaledb.compress, "
                "timescaledb.compress_segmentby = {}, timescaledb.compress_orderby = 'ts DESC')"
            ).format(sql.Literal(",".join(policy.compress_segment_by)))
        )
        conn.execute("SELECT remove_compression_policy('readings', if_exists => true)")
        offset, every = COMPRESSION_SLOT
        conn.execute(
            "SELECT add_compression_policy('readings', %s, schedule_interval => %s, "
            "initial_start => %s)",
            (policy.compress_after, every, _next_slot(conn, policy, offset, every)),
        )
    conn.execute("SELECT remove_retention_policy('readings', if_exists => true)")
    if policy.retention is not None:
        offset, every = RETENTION_SLOT
        conn.execute(
            "SELECT add_retention_policy('readings', %s, schedule_interval => %s, "
            "initial_start => %s)",
            (policy.retention, every, _next_slot(conn, policy, offset, every)),
        )
    for i, rollup in enumerate(policy.rollups):
        name = sql.Identifier(rollup.name)
        if _relkind(conn, rollup.name) is not None and not _is_cagg(conn, rollup.name):
            # left over from a plain-PostgreSQL install: rebuilt from readings below
            conn.execute(sql.SQL("DROP TABLE {}").format(name))
        if not _is_cagg(conn, rollup.name):
            conn.execute(
                sql.SQL(
                    "CREATE MATERIALIZED VIEW {} WITH (timescaledb.continuous, "
                    "timescaledb.materialized_only = false) AS {} GROUP BY 1, 2, 3 WITH NO DATA"
                ).format(name, _rollup_select(rollup, policy, timescale=True))
            )
        conn.execute(
            "SELECT remove_continuous_aggregate_policy(%s, if_exists => true)", (rollup.name,)
        )
        refresh_at = _next_slot(conn, policy, ROLLUP_REFRESH_OFFSET * (i + 1), rollup.refresh_every)
        conn.execute(
            "SELECT add_continuous_aggregate_policy(%s, start_offset => %s, "
            "end_offset => %s, schedule_interval => %s, initial_start => %s)",
            (
                rollup.name,
                rollup.refresh_start_offset,
                rollup.refresh_end_offset,
                rollup.refresh_every,
                refresh_at,
            ),
        )
        conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (rollup.name,))
        if rollup.retention is not None:
            offset = ROLLUP_RETENTION_OFFSET + timedelta(minutes=30) * i
            conn.execute(
                "SELECT add_retention_policy(%s, %s, schedule_interval => %s, initial_start => %s)",
                (
                    rollup.name,
                    rollup.retention,
                    RETENTION_SLOT[1],
                    _next_slot(conn, policy, offset, RETENTION_SLOT[1]),
                ),
            )


def apply_plain(conn: psycopg.Connection[Any], policy: StoragePolicy) -> None:
    """Native equivalents: rollup tables refreshed by `urbanpulse db maintain`."""
    conn.execute("CREATE INDEX IF NOT EXISTS readings_ts_brin ON readings USING brin (ts)")
    for rollup in policy.rollups:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (device_id text NOT NULL, metric text NOT NULL, "
                "bucket timestamptz NOT NULL, n integer NOT NULL, avg double precision, "
                "min double precision, max double precision, sum double precision, "
                "first double precision, last double precision, "
                "PRIMARY KEY (device_id, metric, bucket))"
            ).format(sql.Identifier(rollup.name))
        )


def refresh_rollups(
    conn: psycopg.Connection[Any],
    policy: StoragePolicy,
    *,
    timescale: bool,
    now: datetime,
    since: datetime | None = None,
) -> None:
    """Recompute rollup buckets from `since` (default: each rollup's start offset) to now."""
    for rollup in policy.rollups:
        start = since or now - rollup.refresh_start_offset
        end = now - rollup.refresh_end_offset + rollup.bucket
        if timescale:
            with conn.cursor() as cur:  # CALL refresh must run outside a transaction block
                cur.execute(
                    "CALL refresh_continuous_aggregate(%s, %s, %s)", (rollup.name, start, end)
                )
            continue
        select = _rollup_select(rollup, policy, timescale=False)
        origin = _origin(policy)
        with conn.transaction():
            lo = conn.execute(
                "SELECT date_bin(%s::interval, %s::timestamptz, %s::timestamptz)",
                (rollup.bucket, start, origin),
            ).fetchone()
            start_bucket = lo[0] if lo else start
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE bucket >= %s AND bucket < %s").format(
                    sql.Identifier(rollup.name)
                ),
                (start_bucket, end),
            )
            conn.execute(
                sql.SQL("INSERT INTO {} {} WHERE ts >= %s AND ts < %s GROUP BY 1, 2, 3").format(
                    sql.Identifier(rollup.name), select
                ),
                (start_bucket, end),
            )


def prune_plain(conn: psycopg.Connection[Any], policy: StoragePolicy, now: datetime) -> int:
    """Retention on plain PostgreSQL; returns the raw readings deleted."""
    deleted = 0
    with conn.transaction():
        if policy.retention is not None:
            cur = conn.execute("DELETE FROM readings WHERE ts < %s", (now - policy.retention,))
            deleted = cur.rowcount
        for rollup in policy.rollups:
            if rollup.retention is not None:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE bucket < %s").format(sql.Identifier(rollup.name)),
                    (now - rollup.retention,),
                )
    return deleted
