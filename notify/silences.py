"""Silences and maintenance windows: matching alerts still fire and are recorded, they just do
not notify (nor escalate) while the silence holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from notify.config import MATCH_KEYS
from urbanpulse.errors import ConfigError


def parse_matchers(items: list[str]) -> dict[str, str]:
    """`key=value` pairs (keys: rule_id, entity, severity, owner, zone, district, domain or
    labels.<name>; a value ending in * matches by prefix)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"matcher {item!r}: expected key=value, e.g. zone=DMA-XLH")
        if key not in MATCH_KEYS and not key.startswith("labels."):
            raise ConfigError(f"matcher {item!r}: unknown key; use {', '.join(MATCH_KEYS)}")
        out[key] = value
    if not out:
        raise ConfigError("a silence needs at least one matcher")
    return out


def add_silence(
    conn: psycopg.Connection[Any],
    matchers: dict[str, str],
    *,
    starts_at: datetime,
    ends_at: datetime,
    author: str,
    reason: str,
) -> int:
    if ends_at <= starts_at:
        raise ConfigError("a silence must end after it starts")
    if not author.strip() or not reason.strip():
        raise ConfigError("a silence needs an author and a reason")
    row = conn.execute(
        "INSERT INTO silences (matchers, starts_at, ends_at, author, reason) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (Jsonb(matchers), starts_at, ends_at, author, reason),
    ).fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def expire_silence(conn: psycopg.Connection[Any], silence_id: int) -> bool:
    cur = conn.execute(
        "UPDATE silences SET expired_at = now() WHERE id = %s AND expired_at IS NULL",
        (silence_id,),
    )
    conn.commit()
    return cur.rowcount == 1


def list_silences(
    conn: psycopg.Connection[Any], *, include_ended: bool = False, now: datetime
) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        """
        SELECT id, matchers, starts_at, ends_at, author, reason, expired_at FROM silences
         WHERE %s OR (expired_at IS NULL AND ends_at > %s) ORDER BY starts_at, id
        """,
        (include_ended, now),
    ).fetchall()
    conn.commit()
    return rows
