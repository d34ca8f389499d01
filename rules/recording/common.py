"""What the recorders share: a computed row, the time conversion and the devices of a kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class Row:
    series: str
    entity: str
    start: float
    end: float
    value: float
    detail: dict[str, Any] = field(default_factory=dict)


Conn = psycopg.Connection[Any]


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def devices_of(conn: Conn, kinds: list[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT device_id, zone, attributes FROM devices WHERE kind = ANY(%s) ORDER BY device_id",
        (kinds,),
    ).fetchall()
    return [(str(d), z, dict(a)) for d, z, a in rows]
