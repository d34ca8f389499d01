"""Opening PostgreSQL connections with errors that tell an operator what to do."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

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
