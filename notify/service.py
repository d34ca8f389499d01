"""The notifier, `urbanpulse notify`: one pass over its stages, and the loop.

The stages are modules of their own: `plan` (outbox → notifications), `escalate`, `deliver`,
`digest`; `silences` keeps the silences. What they share is in `context`.

Each step is its own short transaction and takes its rows with SKIP LOCKED, so notifiers can
run side by side and any of them can die at any moment:

1. plan: once the oldest unplanned outbox row is `group_wait` old, every unplanned row is
   routed (silenced alerts are recorded, not notified), grouped per department and kind, and
   rendered into one notification per channel of the department's first level, each with an
   idempotency key; the outbox rows are marked planned in the same transaction.
2. escalate: a firing alert nobody acknowledged within its severity's delay goes to the
   department's next level.
3. deliver: due notifications are claimed for a lease, sent (each channel on its own thread,
   so a slow or failing channel holds up no other), and the result of every attempt recorded;
   a failure is retried with doubling backoff, up to `max_attempts`, then marked dead. A
   notifier killed mid-send leaves its claim to expire and the message is sent again, with the
   same idempotency key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from notify.context import (
    BACKLOG,
    Conn,
    Context,
)
from notify.deliver import backlog, deliver
from notify.digest import digest_day, plan_digests
from notify.escalate import escalate
from notify.plan import plan, unsilence
from urbanpulse.db.connect import CONNECTION_LOST, keep_connected

log = logging.getLogger(__name__)


def cleanup(conn: Conn, ctx: Context, now: datetime) -> int:
    """Forget what is older than `retention`: planned outbox rows, sent and dead messages
    (with their attempts). Returns the rows removed."""
    before = now - timedelta(seconds=ctx.config.retention)
    with conn.transaction():
        a = conn.execute("DELETE FROM notify_outbox WHERE processed_at < %s", (before,)).rowcount
        b = conn.execute(
            "DELETE FROM notifications WHERE state IN ('sent', 'dead') AND created_at < %s",
            (before,),
        ).rowcount
    return max(a, 0) + max(b, 0)


_last_cleanup: list[datetime] = []


def run_once(conn: Conn, ctx: Context, now: datetime) -> dict[str, int]:
    planned = plan(conn, ctx, now)
    announced = unsilence(conn, ctx, now)
    escalated = escalate(conn, ctx, now)
    day = digest_day(ctx, now)
    digests = plan_digests(conn, ctx, day, now) if day is not None else 0
    sent, failed = deliver(conn, ctx, now)
    if not _last_cleanup or now - _last_cleanup[0] >= timedelta(hours=1):
        cleanup(conn, ctx, now)
        _last_cleanup[:] = [now]
    BACKLOG.set(backlog(conn))
    return {
        "planned": planned + announced,
        "escalated": escalated,
        "digests": digests,
        "sent": sent,
        "failed": failed,
    }


def run_forever(
    database_url: str,
    ctx: Context,
    *,
    stop: threading.Event,
    interval_s: float = 2.0,
    clock: Callable[[], datetime],
) -> None:
    """A pass every `interval_s`, reconnecting whenever the database goes away (a message whose
    sending was cut off is sent again after its lease, under the same idempotency key)."""

    def one_pass(conn: Conn) -> float:
        try:
            got = run_once(conn, ctx, clock())
        except CONNECTION_LOST:
            raise
        except Exception:  # a bug in one pass must not end delivery: log it and go on
            log.exception("notifier: pass failed; retrying")
            conn.rollback()
            return min(30.0, interval_s * 5)
        if any(got.values()):
            log.info("notifier: %s", ", ".join(f"{k} {v}" for k, v in got.items()))
        return interval_s

    keep_connected(database_url, one_pass, stop=stop, what="notifier", log=log)
