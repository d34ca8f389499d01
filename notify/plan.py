"""Plan: outbox rows become notifications.

Once the oldest unplanned outbox row is `group_wait` old, every unplanned row is routed
(silenced alerts are recorded, not notified), grouped per department and kind, and rendered
into one notification per channel of the department's first level, each with an idempotency
key; the outbox rows are marked planned in the same transaction. When a silence ends, the
alerts it held back that are still firing are planned then (`unsilence`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from functools import partial

from notify.context import (
    Conn,
    Context,
    active_silences,
    departments_of,
    load_alerts,
    next_escalation,
    render_for,
    to_level,
)
from notify.core import (
    AlertInfo,
    Silence,
    dept_tag,
    group_key,
    silenced_by,
)

log = logging.getLogger(__name__)


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
            departments = departments_of(conn, ctx, info, f"{kind}:{outbox_id}")
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
            created += to_level(
                conn,
                ctx,
                dept,
                0,
                kind=kind,
                msg=render_for(ctx, kind, dept, 0, [i for _, i in items]),
                key=partial(group_key, kind, dept, outbox_ids=ids),
                due=now,
            )
        conn.execute(
            "UPDATE notify_outbox SET processed_at = now() WHERE id = ANY(%s)",
            ([int(r[0]) for r in rows],),
        )
    return created


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
    escalate_at = None if silence is not None else next_escalation(ctx, info, department, 0, now)
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
                departments_of(conn, ctx, info, f"firing:after-{silence_id}") if live else []
            )
            escalate_at = (
                next_escalation(ctx, info, departments[0], 0, now) if departments else None
            )
            conn.execute(
                "UPDATE alert_notify_state SET silenced_by = NULL, level = 0, notified_at = %s, "
                "escalate_at = %s WHERE alert_id = %s",
                (now if departments else None, escalate_at, alert_id),
            )
            for dept in departments:
                tag = f"firing:{alert_id}:after-silence-{silence_id}:{dept_tag(dept)}"
                created += to_level(
                    conn,
                    ctx,
                    dept,
                    0,
                    kind="firing",
                    msg=render_for(ctx, "firing", dept, 0, [info]),
                    key=(tag + ":{}").format,
                    due=now,
                )
    return created
