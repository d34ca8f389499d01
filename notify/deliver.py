"""Deliver: due notifications are claimed for a lease and sent, each channel on its own thread
(a slow or failing channel holds up no other), and the result of every attempt recorded; a
failure is retried with doubling backoff up to `max_attempts`, then marked dead. A notifier
killed mid-send leaves its claim to expire and the message is sent again, with the same
idempotency key."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta

from notify.channels import DeliveryError, redact, send
from notify.context import (
    DEAD,
    FAILED,
    SENT,
    Conn,
    Context,
)
from notify.core import (
    backoff,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    channel: str
    title: str
    body: str
    key: str
    attempts: int
    until: datetime  # our claim: the row is ours to record while it still says this
    attachment: tuple[str, bytes] | None = None


PER_CHANNEL = 5  # messages a channel sends per pass: well inside one lease even when it times out


def _claim(conn: Conn, ctx: Context, now: datetime) -> list[Claimed]:
    """Claim the due messages, a few per channel, for a lease. Escalations of alerts
    acknowledged since they were planned are dropped (kept as dead, saying why)."""
    until = now + timedelta(seconds=ctx.config.lease)
    conn.commit()
    with conn.transaction():
        conn.execute(
            """
            UPDATE notifications n
               SET state = 'dead', last_error = 'acknowledged before it was sent'
             WHERE n.kind = 'escalation' AND n.state = 'pending'
               AND EXISTS (SELECT 1 FROM alert_acks k WHERE k.alert_id = ANY(n.alert_ids))
            """
        )
        rows = conn.execute(
            """
            UPDATE notifications SET state = 'sending', claimed_until = %(until)s
             WHERE id IN (
                SELECT id FROM notifications
                 WHERE id IN (
                    SELECT id FROM (
                        SELECT id, row_number() OVER (PARTITION BY channel ORDER BY id) AS k
                          FROM notifications
                         WHERE (state = 'pending' AND next_attempt_at <= %(now)s)
                            OR (state = 'sending' AND claimed_until <= %(now)s)) due
                     WHERE k <= %(per)s)
                 FOR UPDATE SKIP LOCKED)
            RETURNING id, channel, title, body, idempotency_key, attempts, attachment_name,
                      attachment
            """,
            {"now": now, "until": until, "per": PER_CHANNEL},
        ).fetchall()
    out = [
        Claimed(
            int(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            str(r[4]),
            int(r[5]),
            until,
            (str(r[6]), bytes(r[7])) if r[6] and r[7] is not None else None,
        )
        for r in rows
    ]
    return sorted(out, key=lambda c: c.id)


def _record(
    conn: Conn, ctx: Context, item: Claimed, *, error: str | None, took_ms: float, now: datetime
) -> bool:
    """Record an attempt and its outcome, if the claim is still ours (a claim that expired
    was taken over by another notifier, whose outcome stands); returns whether it was."""
    attempts = item.attempts + 1
    with conn.transaction():
        conn.execute(
            "INSERT INTO notification_attempts (notification_id, ok, error, duration_ms) "
            "VALUES (%s, %s, %s, %s)",
            (item.id, error is None, error, took_ms),
        )
        dead = error is not None and attempts >= ctx.config.max_attempts
        ended = now + timedelta(milliseconds=took_ms)  # backoff counts from the attempt's end
        cur = conn.execute(
            """
            UPDATE notifications
               SET state = %(state)s, attempts = %(attempts)s, last_error = %(error)s,
                   sent_at = CASE WHEN %(ok)s THEN now() END, next_attempt_at = %(next)s,
                   claimed_until = NULL
             WHERE id = %(id)s AND state = 'sending' AND claimed_until = %(until)s
            """,
            {
                "state": "sent" if error is None else "dead" if dead else "pending",
                "attempts": attempts,
                "error": error,
                "ok": error is None,
                "next": ended + timedelta(seconds=backoff(ctx.config, attempts)),
                "id": item.id,
                "until": item.until,
            },
        )
        if cur.rowcount != 1:
            log.warning("notification %d: claim expired before the outcome was known", item.id)
            return False
    if error is None:
        SENT.labels(item.channel).inc()
        return True
    FAILED.labels(item.channel).inc()
    if dead:
        DEAD.labels(item.channel).inc()
        log.error("notification %d to %s given up: %s", item.id, item.channel, error)
    return True


def deliver(conn: Conn, ctx: Context, now: datetime) -> tuple[int, int]:
    """Send what is due; returns (sent, failed). Each channel sends on a thread of its own."""
    claimed = _claim(conn, ctx, now)
    if not claimed:
        return 0, 0
    pools: dict[str, ThreadPoolExecutor] = {}
    futures: dict[Future[tuple[str | None, float]], Claimed] = {}
    for item in claimed:
        pool = pools.setdefault(item.channel, ThreadPoolExecutor(max_workers=1))
        futures[pool.submit(_send_one, ctx, item)] = item
    sent = failed = 0
    try:
        for fut in as_completed(futures):
            item = futures[fut]
            error, took_ms = fut.result()
            _record(conn, ctx, item, error=error, took_ms=took_ms, now=now)
            sent += error is None
            failed += error is not None
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    return sent, failed


def _send_one(ctx: Context, item: Claimed) -> tuple[str | None, float]:
    """Send one message; never raises: any failure is the attempt's error (secrets masked)."""
    started = time.monotonic()
    channel = ctx.config.channels.get(item.channel)
    error: str | None = None
    try:
        if channel is None:
            raise DeliveryError(f"no channel {item.channel!r} in the notify file")
        send(channel, title=item.title, body=item.body, key=item.key, attachment=item.attachment)
    except DeliveryError as exc:
        error = str(exc)
    except Exception as exc:
        url = (channel.resolved_url() if channel else None) or ""
        error = redact(f"{type(exc).__name__}: {exc}", url)[:500]
    if error is not None:
        log.warning("notification %d to %s failed: %s", item.id, item.channel, error)
    return error, (time.monotonic() - started) * 1000


def backlog(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM notifications WHERE state IN ('pending', 'sending')"
    ).fetchone()
    conn.commit()
    return int(row[0]) if row else 0
