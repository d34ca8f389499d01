"""Versioned, idempotent migrations followed by the storage policy."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from urbanpulse.db.connect import connect, ensure_database
from urbanpulse.db.policy import (
    StoragePolicy,
    apply_plain,
    apply_timescale,
    try_enable_timescale,
)
from urbanpulse.errors import MigrationError

log = logging.getLogger(__name__)

# Serialises concurrent migrators (several services starting at once); any constant will do.
MIGRATION_LOCK_KEY = 0x5572_6261_6E50  # "UrbanP"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrateResult:
    created_database: bool
    applied: tuple[str, ...]
    timescale: bool


def migrations() -> list[Migration]:
    """The packaged migrations in version order."""
    found = []
    for entry in resources.files("urbanpulse.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


def _apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    applied: list[str] = []
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, checksum text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {
        int(v): str(c)
        for v, c in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    }
    for mig in migrations():
        if mig.version in done:
            if done[mig.version] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name} was changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
            continue
        try:
            conn.execute(mig.sql.encode("utf-8"))
        except psycopg.Error as exc:
            raise MigrationError(f"migration {mig.version:04d}_{mig.name} failed: {exc}") from exc
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (mig.version, mig.name, mig.checksum),
        )
        applied.append(f"{mig.version:04d}_{mig.name}")
    return applied


def migrate(url: str, policy: StoragePolicy, *, timescale_mode: str = "auto") -> MigrateResult:
    """Create the database if missing, apply pending migrations, then the storage policy.

    Everything runs under one advisory lock, so concurrent callers apply each step once.
    """
    created = ensure_database(url)
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            timescale = try_enable_timescale(conn, timescale_mode)
            with conn.transaction():
                applied = _apply_migrations(conn)
            with conn.transaction():
                if timescale:
                    apply_timescale(conn, policy)
                else:
                    apply_plain(conn, policy)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    for name in applied:
        log.info("applied migration %s", name)
    return MigrateResult(created, tuple(applied), timescale)
