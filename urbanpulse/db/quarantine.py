"""Reading and updating quarantined messages (listing, replay bookkeeping)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from urbanpulse.contract.model import Rejection
from urbanpulse.db.store import rejections_json


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    topic: str
    payload: bytes
    reason: str
    received_at: datetime


def pending(
    conn: psycopg.Connection[Any],
    *,
    reason: str | None = None,
    device_id: str | None = None,
    include_failed: bool = False,
    after_id: int = 0,
    limit: int = 500,
) -> list[Quarantined]:
    """Messages waiting for replay, oldest first, in pages (keyset on id)."""
    states = ["pending", "failed"] if include_failed else ["pending"]
    rows = conn.execute(
        """
        SELECT id, topic, payload, reason, received_at FROM quarantine
         WHERE state = ANY(%(states)s) AND id > %(after)s
           AND (%(reason)s::text IS NULL OR reason = %(reason)s)
           AND (%(device)s::text IS NULL OR device_id = %(device)s)
         ORDER BY id LIMIT %(limit)s
        """,
        {
            "states": states,
            "after": after_id,
            "reason": reason,
            "device": device_id,
            "limit": limit,
        },
    ).fetchall()
    return [Quarantined(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), r[4]) for r in rows]


def mark_replayed(conn: psycopg.Connection[Any], ids: Sequence[int]) -> None:
    conn.execute(
        "UPDATE quarantine SET state = 'replayed', replayed_at = now(), "
        "replay_attempts = replay_attempts + 1 WHERE id = ANY(%s)",
        (list(ids),),
    )


def mark_failed(
    conn: psycopg.Connection[Any], qid: int, rejections: Sequence[Rejection], stored: int
) -> None:
    conn.execute(
        "UPDATE quarantine SET state = 'failed', reason = %s, detail = %s, "
        "stored_readings = %s, replay_attempts = replay_attempts + 1, "
        "replayed_at = now() WHERE id = %s",
        (rejections[0].reason.value, rejections_json(rejections), stored, qid),
    )


def summary(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int, int]]:
    """(reason, state, rows, occurrences) for `urbanpulse quarantine list`."""
    rows = conn.execute(
        "SELECT reason, state, count(*), sum(occurrences) FROM quarantine "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    return [(str(a), str(b), int(c), int(d)) for a, b, c, d in rows]
