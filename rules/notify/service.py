"""The notifier, `urbanpulse notify`: outbox → notifications → deliveries, and escalation.

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
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from rules.kpi import Kpi
from rules.model import Rule, catalogue_files, load_rules
from rules.notify.channels import DeliveryError, redact, send
from rules.notify.config import NotifyConfig, load_config
from rules.notify.core import (
    AlertInfo,
    Message,
    Silence,
    backoff,
    clause_text,
    condition_text,
    dept_tag,
    group_key,
    render,
    route,
    silenced_by,
)
from rules.notify.digest import build, digest_key
from urbanpulse import links
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.connect import CONNECTION_LOST, connect, keep_connected
from urbanpulse.settings import Settings

log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]

registry = CollectorRegistry()
SENT = Counter("urbanpulse_notify_sent", "Messages delivered", ["channel"], registry=registry)
FAILED = Counter(
    "urbanpulse_notify_failed", "Delivery attempts that failed", ["channel"], registry=registry
)
DEAD = Counter(
    "urbanpulse_notify_dead", "Messages given up after max attempts", ["channel"], registry=registry
)
BACKLOG = Gauge("urbanpulse_notify_backlog", "Messages waiting to be sent", registry=registry)


@dataclass(frozen=True)
class Context:
    config: NotifyConfig
    rules: dict[str, Rule]
    tz: ZoneInfo
    kpis: tuple[Kpi, ...] = ()
    link_key: bytes | None = None  # signs acknowledgement links (urbanpulse.links)
    link_ttl_s: int = 7 * 86400


def load_context(settings: Settings, rule_files: list[Path] | None = None) -> Context:
    """The notifier's context from the settings: the notify file, the rules and KPIs of
    `rule_files` (default: the packaged catalogue) and the key signing acknowledgement links."""
    found = load_rules(rule_files or catalogue_files(), default_registry())
    with connect(settings.database_url) as conn:
        key = links.link_key(conn, settings.link_secret)
    return Context(
        load_config(settings.notify_config),
        {r.id: r for r in found.rules},
        ZoneInfo(settings.timezone),
        tuple(found.kpis),
        link_key=key,
        link_ttl_s=settings.link_ttl_s,
    )


def load_alerts(conn: Conn, ctx: Context, ids: list[int]) -> dict[int, AlertInfo]:
    rows = conn.execute(
        """
        SELECT a.id, a.rule_id, a.entity, a.status, a.severity, a.owner, a.labels, a.value,
               a.started_at, a.ended_at, d.name, coalesce(d.zone, a.entity),
               coalesce(d.attributes ->> 'district', z.district)
          FROM alerts a LEFT JOIN devices d ON d.device_id = a.entity
          LEFT JOIN LATERAL (  -- an alert about a zone (a DMA): the district of its devices
                SELECT attributes ->> 'district' AS district FROM devices
                 WHERE zone = a.entity AND attributes ? 'district' LIMIT 1) z ON d.device_id IS NULL
         WHERE a.id = ANY(%s)
        """,
        (ids,),
    ).fetchall()
    out: dict[int, AlertInfo] = {}
    for r in rows:
        rule = ctx.rules.get(str(r[1]))
        out[int(r[0])] = AlertInfo(
            id=int(r[0]),
            rule_id=str(r[1]),
            entity=str(r[2]),
            status=str(r[3]),
            severity=str(r[4]),
            owner=str(r[5]),
            labels=dict(r[6]),
            value=r[7],
            started_at=r[8],
            ended_at=r[9],
            title_zh=rule.title.zh if rule else str(r[1]),
            title_en=rule.title.en if rule else str(r[1]),
            clause=clause_text(rule),
            condition=condition_text(rule),
            place=str(r[10]) if r[10] else "",
            zone=str(r[11]) if r[11] else None,
            district=str(r[12]) if r[12] else None,
        )
    return out


def active_silences(conn: Conn, now: datetime) -> list[Silence]:
    rows = conn.execute(
        """
        SELECT id, matchers, starts_at, ends_at, author, reason FROM silences
         WHERE expired_at IS NULL AND starts_at <= %s AND ends_at > %s ORDER BY id
        """,
        (now, now),
    ).fetchall()
    return [Silence(int(i), dict(m), s, e, str(a), str(r)) for i, m, s, e, a, r in rows]


def _insert(
    conn: Conn,
    ctx: Context,
    *,
    key: str,
    department: str,
    level: int,
    channel: str,
    kind: str,
    msg: Message,
    due: datetime,
    attachment: tuple[str, bytes] | None = None,
) -> int:
    """Plan one message to one channel (once per key), due at `due` (the caller's clock, not
    the database's: the two may differ, and planning and delivery must agree on which is
    meant). A channel whose URL variable is not set gets its message recorded as dead, with
    the variable to set, rather than retried."""
    cfg = ctx.config.channels[channel]
    off = None if cfg.resolved_url() else f"channel not configured: set {cfg.url_env}"
    cur = conn.execute(
        """
        INSERT INTO notifications (idempotency_key, department, level, channel, kind, alert_ids,
                                   title, body, state, last_error, attachment_name, attachment,
                                   next_attempt_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (idempotency_key) DO NOTHING
        """,
        (
            key,
            department,
            level,
            channel,
            kind,
            msg.alert_ids,
            msg.title,
            msg.body,
            "dead" if off else "pending",
            off,
            attachment[0] if attachment else None,
            attachment[1] if attachment else None,
            due,
        ),
    )
    return max(cur.rowcount, 0)


def _render(ctx: Context, kind: str, dept: str, level: int, alerts: list[AlertInfo]) -> Message:
    """The message for the people on call at a department's level."""
    people = ctx.config.departments[dept].on_call[level].people
    key = ctx.link_key
    expires = int(time.time()) + ctx.link_ttl_s

    def token(alert_id: int) -> str:
        return links.sign(key, alert_id, dept, expires) if key else ""

    return render(kind, dept, alerts, ctx.config, ctx.tz, level=level, people=people, token=token)


def _to_level(
    conn: Conn,
    ctx: Context,
    dept: str,
    level: int,
    *,
    kind: str,
    msg: Message,
    key: Callable[[str], str],
    due: datetime,
    attachment: tuple[str, bytes] | None = None,
) -> int:
    """Plan `msg` to every channel of a department's on-call level, `key(channel)` being each
    one's idempotency key; returns the notifications created."""
    return sum(
        _insert(
            conn,
            ctx,
            key=key(channel),
            department=dept,
            level=level,
            channel=channel,
            kind=kind,
            msg=msg,
            due=due,
            attachment=attachment,
        )
        for channel in ctx.config.departments[dept].levels[level]
    )


def plan(conn: Conn, ctx: Context, now: datetime) -> int:
    """Turn the outbox into notifications once its oldest row has waited `group_wait`;
    returns the notifications created."""
    conn.commit()
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, alert_id, kind, created_at FROM notify_outbox "
            "WHERE processed_at IS NULL ORDER BY id FOR UPDATE SKIP LOCKED"
        ).fetchall()
        if not rows or now - min(r[3] for r in rows) < timedelta(seconds=ctx.config.group_wait):
            return 0
        infos = load_alerts(conn, ctx, sorted({int(r[1]) for r in rows}))
        silences = active_silences(conn, now)
        groups: dict[tuple[str, str], list[tuple[int, AlertInfo]]] = defaultdict(list)
        for outbox_id, alert_id, kind, _ in rows:
            info = infos.get(int(alert_id))
            if info is None:
                continue
            silence = silenced_by(info, silences, now)
            departments = _departments(conn, ctx, info, f"{kind}:{outbox_id}")
            if kind == "firing" and departments:
                _start_escalation(conn, ctx, info, departments[0], now=now, silence=silence)
            elif kind == "resolved" and not _announced(conn, info.id):
                continue  # silenced all along: it was never announced, nor is its end
            if silence is not None:
                log.info("alert %s %s silenced by silence %d", info.id, kind, silence.id)
                continue
            for dept in departments:
                groups[(dept, str(kind))].append((int(outbox_id), info))
        created = 0
        for (dept, kind), items in sorted(groups.items()):
            ids = [o for o, _ in items]
            created += _to_level(
                conn,
                ctx,
                dept,
                0,
                kind=kind,
                msg=_render(ctx, kind, dept, 0, [i for _, i in items]),
                key=partial(group_key, kind, dept, outbox_ids=ids),
                due=now,
            )
        conn.execute(
            "UPDATE notify_outbox SET processed_at = now() WHERE id = ANY(%s)",
            ([int(r[0]) for r in rows],),
        )
    return created


def _departments(conn: Conn, ctx: Context, info: AlertInfo, tag: str) -> list[str]:
    """The configured departments that hear of the alert; one the notify file lacks is
    recorded as a dead notification saying so, never dropped in silence."""
    out = []
    for dept in route(info, ctx.config):
        if dept in ctx.config.departments:
            out.append(dept)
            continue
        error = f"no department {dept!r} in the notify file: add it, or a route"
        log.error("alert %s (%s): %s", info.id, info.rule_id, error)
        conn.execute(
            """
            INSERT INTO notifications (idempotency_key, department, channel, kind, alert_ids,
                                       title, body, state, last_error)
            VALUES (%s, %s, '-', %s, %s, %s, '', 'dead', %s) ON CONFLICT DO NOTHING
            """,
            (
                f"unroutable:{tag}:{dept_tag(dept)}",
                dept,
                tag.split(":", maxsplit=1)[0],
                [info.id],
                info.title_zh,
                error,
            ),
        )
    return out


def _announced(conn: Conn, alert_id: int) -> bool:
    """Was the alert's firing ever announced (not silenced all along)? Stops its escalation."""
    row = conn.execute(
        "UPDATE alert_notify_state SET escalate_at = NULL, silenced_by = NULL "
        "WHERE alert_id = %s RETURNING notified_at",
        (alert_id,),
    ).fetchone()
    return row is None or row[0] is not None


def _start_escalation(
    conn: Conn,
    ctx: Context,
    info: AlertInfo,
    department: str,
    *,
    now: datetime,
    silence: Silence | None,
) -> None:
    """Level 0 is told now (unless silenced: then when the silence ends); the next level
    after the alert's escalation delay."""
    escalate_at = None if silence is not None else _next_escalation(ctx, info, department, 0, now)
    conn.execute(
        """
        INSERT INTO alert_notify_state (alert_id, department, level, notified_at, escalate_at,
                                        silenced_by)
        VALUES (%s, %s, 0, %s, %s, %s)
        ON CONFLICT (alert_id) DO UPDATE SET department = EXCLUDED.department, level = 0,
            notified_at = EXCLUDED.notified_at, escalate_at = EXCLUDED.escalate_at,
            silenced_by = EXCLUDED.silenced_by
        """,
        (
            info.id,
            department,
            None if silence is not None else now,
            escalate_at,
            None if silence is None else silence.id,
        ),
    )


def _next_escalation(
    ctx: Context, info: AlertInfo, department: str, level: int, now: datetime
) -> datetime | None:
    """When the level after `level` hears of the alert: its delay, or past the last level a
    reminder every `repeat_interval` (None: nobody more)."""
    levels = ctx.config.departments[department].levels
    delay = ctx.config.escalation_after(info.severity, info.rule_id)
    if delay is None:
        return None
    if level + 1 < len(levels):
        return now + timedelta(seconds=delay)
    repeat = ctx.config.repeat_interval
    return None if repeat is None else now + timedelta(seconds=repeat)


def unsilence(conn: Conn, ctx: Context, now: datetime) -> int:
    """Announce the firing, unacknowledged alerts whose silence has ended (they were never
    told); returns the notifications created."""
    conn.commit()
    created = 0
    with conn.transaction():
        rows = conn.execute(
            """
            SELECT s.alert_id, s.silenced_by, a.status = 'firing' AND k.alert_id IS NULL
              FROM alert_notify_state s JOIN alerts a ON a.id = s.alert_id
              LEFT JOIN alert_acks k ON k.alert_id = s.alert_id
             WHERE s.silenced_by IS NOT NULL FOR UPDATE OF s SKIP LOCKED
            """
        ).fetchall()
        if not rows:
            return 0
        infos = load_alerts(conn, ctx, [int(r[0]) for r in rows])
        silences = active_silences(conn, now)
        for alert_id, silence_id, live in rows:
            info = infos[int(alert_id)]
            if live and silenced_by(info, silences, now) is not None:
                continue  # still silenced
            departments = (
                _departments(conn, ctx, info, f"firing:after-{silence_id}") if live else []
            )
            escalate_at = (
                _next_escalation(ctx, info, departments[0], 0, now) if departments else None
            )
            conn.execute(
                "UPDATE alert_notify_state SET silenced_by = NULL, level = 0, notified_at = %s, "
                "escalate_at = %s WHERE alert_id = %s",
                (now if departments else None, escalate_at, alert_id),
            )
            for dept in departments:
                tag = f"firing:{alert_id}:after-silence-{silence_id}:{dept_tag(dept)}"
                created += _to_level(
                    conn,
                    ctx,
                    dept,
                    0,
                    kind="firing",
                    msg=_render(ctx, "firing", dept, 0, [info]),
                    key=(tag + ":{}").format,
                    due=now,
                )
    return created


def escalate(conn: Conn, ctx: Context, now: datetime) -> int:
    """Notify the next level of every firing alert left unacknowledged past its delay (past the
    last level, remind it every repeat_interval); returns the notifications created.
    Acknowledged or resolved alerts stop; a silenced one waits for its silence to end."""
    conn.commit()
    created = 0
    with conn.transaction():
        due = conn.execute(
            """
            SELECT s.alert_id, s.department, s.level, s.escalate_at, a.status,
                   k.alert_id IS NOT NULL
              FROM alert_notify_state s JOIN alerts a ON a.id = s.alert_id
              LEFT JOIN alert_acks k ON k.alert_id = s.alert_id
             WHERE s.escalate_at <= %s FOR UPDATE OF s SKIP LOCKED
            """,
            (now,),
        ).fetchall()
        if not due:
            return 0
        infos = load_alerts(conn, ctx, [int(r[0]) for r in due])
        silences = active_silences(conn, now)
        for alert_id, dept, level, was_due, status, acked in due:
            info = infos[int(alert_id)]
            if status != "firing" or acked or dept not in ctx.config.departments:
                conn.execute(
                    "UPDATE alert_notify_state SET escalate_at = NULL WHERE alert_id = %s",
                    (alert_id,),
                )
                continue
            silence = silenced_by(info, silences, now)
            if silence is not None:  # no level is skipped while silenced: wait for its end
                conn.execute(
                    "UPDATE alert_notify_state SET escalate_at = %s WHERE alert_id = %s",
                    (silence.ends_at, alert_id),
                )
                continue
            levels = ctx.config.departments[dept].levels
            nxt = min(int(level) + 1, len(levels) - 1)  # past the last level: remind it
            reminder = int(level) + 1 >= len(levels)
            conn.execute(
                "UPDATE alert_notify_state SET level = %s, escalate_at = %s WHERE alert_id = %s",
                (nxt, _next_escalation(ctx, info, dept, nxt, now), alert_id),
            )
            step = f"r{was_due.timestamp():.0f}" if reminder else str(nxt)
            tag = f"escalation:{alert_id}:{step}:{dept_tag(dept)}"
            created += _to_level(
                conn,
                ctx,
                dept,
                nxt,
                kind="escalation",
                msg=_render(ctx, "escalation", dept, nxt, [info]),
                key=(tag + ":{}").format,
                due=now,
            )
    return created


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


def plan_digests(conn: Conn, ctx: Context, day: date, now: datetime) -> int:
    """Each department's digest of the local `day` to the channels of its first level, once
    per day, department and channel, due at `now`; returns the notifications created. A
    department hears of the alerts routed to it, as it did when they fired."""
    keys = {
        (dept, ch): digest_key(ch, dept, day)
        for dept, spec in ctx.config.departments.items()
        for ch in spec.levels[0]
    }
    done = {
        str(k)
        for (k,) in conn.execute(
            "SELECT idempotency_key FROM notifications WHERE idempotency_key = ANY(%s)",
            (list(keys.values()),),
        ).fetchall()
    }
    conn.commit()
    missing = {dept for (dept, _), key in keys.items() if key not in done}
    if not missing:
        return 0
    start = datetime.combine(day, datetime.min.time(), ctx.tz)
    ids = [
        int(i)
        for (i,) in conn.execute(
            "SELECT id FROM alerts WHERE status IN ('firing', 'resolved') AND started_at < %s "
            "AND (ended_at IS NULL OR ended_at >= %s) ORDER BY started_at",
            (start + timedelta(days=1), start),
        ).fetchall()
    ]
    routed: dict[str, list[AlertInfo]] = defaultdict(list)
    for info in load_alerts(conn, ctx, ids).values():
        for dept in route(info, ctx.config):
            routed[dept].append(info)
    created = 0
    for dept in sorted(missing):
        alerts = sorted(routed.get(dept, []), key=lambda a: (a.started_at or start, a.id))
        got = build(conn, dept, list(ctx.kpis), day, tz=ctx.tz, alerts=alerts)
        if got is None:
            continue
        msg = Message(got.title, got.body)
        chart = (f"digest-{day.isoformat()}.png", got.chart) if got.chart else None
        with conn.transaction():
            created += _to_level(
                conn,
                ctx,
                dept,
                0,
                kind="digest",
                msg=msg,
                key=partial(digest_key, department=dept, day=day),
                due=now,
                attachment=chart,
            )
    return created


def _digest_day(ctx: Context, now: datetime) -> date | None:
    """The day whose digest is due (the day before, once `digest.at` has passed)."""
    if not ctx.config.digest.enabled:
        return None
    local = now.astimezone(ctx.tz)
    hour, minute = map(int, ctx.config.digest.at.split(":"))
    if (local.hour, local.minute) < (hour, minute):
        return None
    return local.date() - timedelta(days=1)


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
    day = _digest_day(ctx, now)
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
