"""`urbanpulse quarantine replay`: re-validate quarantined messages once their cause is fixed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from urbanpulse.contract import InboundMessage, Limits, Registry, parse_message
from urbanpulse.db import quarantine as q
from urbanpulse.db.connect import connect
from urbanpulse.db.devices import device_refs
from urbanpulse.db.store import store_batch

PAGE = 500


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: int  # messages now fully stored
    still_failing: int  # messages that still have a rejection (state 'failed')
    readings_stored: int
    duplicates: int


def replay(
    database_url: str,
    *,
    registry: Registry,
    prefix: str,
    limits: Limits,
    reason: str | None = None,
    device_id: str | None = None,
    include_failed: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[ReplayResult], None] | None = None,
) -> ReplayResult:
    """Replay pending (and optionally failed) messages, a page per transaction."""
    replayed = failing = stored = dups = 0
    after = 0
    with connect(database_url) as conn:
        devices = device_refs(conn)
        while True:
            page = q.pending(
                conn,
                reason=reason,
                device_id=device_id,
                include_failed=include_failed,
                after_id=after,
                limit=PAGE,
            )
            conn.commit()
            if not page:
                break
            after = page[-1].id
            now = clock()
            with conn.transaction():
                ok_ids = []
                for item in page:
                    msg = InboundMessage(item.topic, item.payload, item.received_at)
                    outcome = parse_message(
                        msg,
                        registry=registry,
                        devices=devices,
                        prefix=prefix,
                        now=now,
                        limits=limits,
                    )
                    res = store_batch(conn, outcome.readings, [])
                    stored += res.inserted
                    dups += res.duplicates
                    if outcome.rejections:
                        q.mark_failed(conn, item.id, outcome.rejections, len(outcome.readings))
                        failing += 1
                    else:
                        ok_ids.append(item.id)
                q.mark_replayed(conn, ok_ids)
                replayed += len(ok_ids)
            if progress:
                progress(ReplayResult(replayed, failing, stored, dups))
    return ReplayResult(replayed, failing, stored, dups)
