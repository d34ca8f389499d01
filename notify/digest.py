"""The daily digest of each department: the KPIs it owns against the plan's targets, its
alerts of the day before, and a small bar chart (PNG) of its KPI's latest value per place
against the target line (e.g. the leakage rate of each DMA against 10 %)."""

from __future__ import annotations

import logging
import struct
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from notify.context import (
    Conn,
    Context,
    load_alerts,
    to_level,
)
from notify.core import (
    AlertInfo,
    Message,
    dept_tag,
    route,
)
from urbanpulse.db.scorecard import ScoreLine, scorecard
from urbanpulse.rulefmt.kpis import Kpi
from urbanpulse.rulefmt.records import CITY

log = logging.getLogger(__name__)

GREEN, RED, GREY, WHITE = (0, 160, 80), (220, 40, 40), (90, 90, 90), (255, 255, 255)


def png_bar_chart(
    bars: list[float], line: float | None, *, width: int = 480, height: int = 200
) -> bytes:
    """Bars left to right (red above the line, green at or below it), the line dashed across,
    on white: a PNG of `width` × `height`. Labels go in the message, not the picture."""
    top = max([*bars, line or 0.0, 1e-9]) * 1.15
    px = [[WHITE] * width for _ in range(height)]
    margin, base = 10, height - 10
    slot = (width - 2 * margin) / max(1, len(bars))
    for i, value in enumerate(bars):
        h = round(max(0.0, value) / top * (base - margin))
        x0 = round(margin + i * slot + slot * 0.15)
        x1 = round(margin + (i + 1) * slot - slot * 0.15)
        colour = RED if line is not None and value > line else GREEN
        for y in range(base - h, base):
            for x in range(x0, max(x0 + 1, x1)):
                px[y][x] = colour
    for x in range(margin, width - margin):
        px[base][x] = GREY
    if line is not None:
        y = base - round(line / top * (base - margin))
        for x in range(margin, width - margin):
            if (x // 6) % 2 == 0:
                px[y][x] = RED
    raw = b"".join(b"\x00" + bytes(c for p in row for c in p) for row in px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True, slots=True)
class Digest:
    department: str
    title: str
    body: str
    chart: bytes | None


def _line(s: ScoreLine) -> str:
    t = s.kpi.target
    target = f"{t.op} {t.value:g}" if t.op and t.value is not None else f"{t.better} is better"
    value = "-" if s.value is None else f"{s.value:.2f}"
    verdict = {True: "达标 met", False: "未达标 NOT MET", None: ""}[s.compliant]
    return f"- {s.kpi.title.zh}（{s.entity}）：{value} {s.kpi.unit}，目标 {target} {verdict}"


def build(
    conn: Conn, department: str, kpis: list[Kpi], day: date, *, tz: ZoneInfo, alerts: list[Any]
) -> Digest | None:
    """The department's digest for the local `day`: its KPIs and the alerts routed to it that
    were firing that day (None: it owns no KPI and had no alert)."""
    owned = [k for k in kpis if k.owner == department]
    lines = scorecard(conn, owned, history=1) if owned else []
    if not lines and not alerts:
        return None
    zh = [f"### {department} 每日简报 {day.isoformat()}", "**规划指标 Plan KPIs**"]
    zh += [_line(s) for s in lines if s.entity == CITY or s.compliant is False] or ["- （无）"]
    zh.append(f"**当日告警 Alerts of the day（{len(alerts)}）**")
    for a in alerts[:30]:
        until = (
            a.ended_at.astimezone(tz).strftime("%H:%M") if a.ended_at else "仍在告警 still firing"
        )
        since = a.started_at.astimezone(tz).strftime("%m-%d %H:%M") if a.started_at else "-"
        zh.append(f"- {a.rule_id} {a.entity} {since} → {until}")
    if len(alerts) > 30:
        zh.append(f"- ……另有 {len(alerts) - 30} 条 / and {len(alerts) - 30} more")
    chart = None
    for kpi in owned:  # the first KPI measured per place gets the chart
        per_place = [s for s in lines if s.kpi.id == kpi.id and s.entity != CITY and s.value]
        if len(per_place) > 1:
            chart = png_bar_chart([s.value or 0.0 for s in per_place], kpi.target.value)
            names = "、".join(s.entity for s in per_place)
            zh.append(f"图：{kpi.title.zh}，从左到右 {names}；红虚线为目标 {kpi.target.value}")
            break
    title = f"【每日简报】{department} {day.isoformat()} / Daily digest"
    return Digest(department, title, "\n".join(zh), chart)


def digest_key(channel: str, department: str, day: date) -> str:
    return f"digest:{channel}:{dept_tag(department)}:{day.isoformat()}"


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
            created += to_level(
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


def digest_day(ctx: Context, now: datetime) -> date | None:
    """The day whose digest is due (the day before, once `digest.at` has passed)."""
    if not ctx.config.digest.enabled:
        return None
    local = now.astimezone(ctx.tz)
    hour, minute = map(int, ctx.config.digest.at.split(":"))
    if (local.hour, local.minute) < (hour, minute):
        return None
    return local.date() - timedelta(days=1)
