"""What every stage of the notifier shares: its context (the notify file, the rules, the city's
time zone), the alerts and silences as the stages read them, and the writing of a
notification for a department's escalation level."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge

from notify.config import NotifyConfig, load_config
from notify.core import (
    AlertInfo,
    Message,
    Silence,
    dept_tag,
    render,
    route,
)
from urbanpulse import links
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.connect import connect
from urbanpulse.rulefmt.describe import clause_text, condition_text
from urbanpulse.rulefmt.kpis import Kpi
from urbanpulse.rulefmt.model import Rule, catalogue_files, load_rules
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


def insert_notification(
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


def render_for(ctx: Context, kind: str, dept: str, level: int, alerts: list[AlertInfo]) -> Message:
    """The message for the people on call at a department's level."""
    people = ctx.config.departments[dept].on_call[level].people
    key = ctx.link_key
    expires = int(time.time()) + ctx.link_ttl_s

    def token(alert_id: int) -> str:
        return links.sign(key, alert_id, dept, expires) if key else ""

    return render(kind, dept, alerts, ctx.config, ctx.tz, level=level, people=people, token=token)


def to_level(
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
        insert_notification(
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


def departments_of(conn: Conn, ctx: Context, info: AlertInfo, tag: str) -> list[str]:
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


def next_escalation(
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
