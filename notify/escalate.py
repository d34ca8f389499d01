"""Escalate: a firing alert nobody acknowledged within its severity's delay goes to the
department's next level."""

from __future__ import annotations

import logging
from datetime import datetime

from notify.context import (
    Conn,
    Context,
    active_silences,
    load_alerts,
    next_escalation,
    render_for,
    to_level,
)
from notify.core import (
    dept_tag,
    silenced_by,
)

log = logging.getLogger(__name__)


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
                (nxt, next_escalation(ctx, info, dept, nxt, now), alert_id),
            )
            step = f"r{was_due.timestamp():.0f}" if reminder else str(nxt)
            tag = f"escalation:{alert_id}:{step}:{dept_tag(dept)}"
            created += to_level(
                conn,
                ctx,
                dept,
                nxt,
                kind="escalation",
                msg=render_for(ctx, "escalation", dept, nxt, [info]),
                key=(tag + ":{}").format,
                due=now,
            )
    return created
