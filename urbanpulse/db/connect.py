"""Opening PostgreSQL connections with errors that tell an operator what to do."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from urbanpulse.backoff import Backoff
from urbanpulse.errors import DatabaseAuthError, DatabaseUnavailable

CONNECT_TIMEOUT_S = 5
_AUTH_MARKERS = ("password authentication failed", "no password supplied", "role ", "pg_hba.conf")


def where(url: str) -> str:
    """host:port/dbname of a URL, without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def classify(exc: psycopg.OperationalError, url: str) -> DatabaseAuthError | DatabaseUnavailable:
    """Turn a connection failure into our error with a next step."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if any(marker in text for marker in _AUTH_MARKERS):
        return DatabaseAuthError(
            f"PostgreSQL at {where(url)} refused the credentials ({text}); "
            "fix the user/password in URBANPULSE_DATABASE_URL"
        )
    return DatabaseUnavailable(
        f"database unreachable at {where(url)} ({text}) — is PostgreSQL running? "
        "set URBANPULSE_DATABASE_URL"
    )


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """A new connection, or DatabaseUnavailable / DatabaseAuthError."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="urbanpulse",
        )
    except psycopg.OperationalError as exc:
        raise classify(exc, url) from exc


def ensure_database(url: str) -> bool:
    """Create the database named in the URL if it does not exist; True if it was created."""
    name = database_name(url)
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:  # another migrator won the race
            return False
        return True


def drop_database(url: str) -> None:
    """Drop the database named in the URL (tests and `db drop`), closing its sessions."""
    name = database_name(url)
    with connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# What a lost or restarted server looks like to a client: the connection is unusable and a new
# one is the cure. (A query error inside a healthy session is not in this list.)
CONNECTION_LOST = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


def keep_connected(
    url: str,
    step: Callable[[psycopg.Connection[Any]], float],
    *,
    stop: threading.Event,
    what: str,
    log: logging.Logger,
    max_backoff_s: float = 15.0,
) -> None:
    """Call `step(conn)` until `stop` is set, waiting the seconds it returns between calls.

    A long-running service must outlive its database: when the server restarts, fails over or
    the network drops the connection, the connection is thrown away and a new one opened with
    backoff (0.5 s doubling to `max_backoff_s`), and `step` runs again on it. Wrong credentials
    are not retried (DatabaseAuthError): an operator has to act."""
    backoff = Backoff(initial=0.5, maximum=max_backoff_s)
    conn: psycopg.Connection[Any] | None = None
    lost_since = False
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(url)
                    if lost_since:
                        log.warning("%s: database back at %s", what, where(url))
                        lost_since = False
                wait = step(conn)
                backoff.reset()
            except CONNECTION_LOST as exc:
                wait = backoff.delay()
                text = str(exc).strip()
                first = text.splitlines()[0] if text else type(exc).__name__
                log.error("%s: database connection lost (%s); retry in %.1f s", what, first, wait)
                lost_since = True
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                    conn = None
            stop.wait(wait)
    finally:
        if conn is not None and not conn.closed:
            conn.close()
