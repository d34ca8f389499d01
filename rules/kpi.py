"""Measuring the plan KPIs (`urbanpulse.rulefmt.kpis`) from recorded series and ponding events.

Each entity of the record is scored (the daily AQI record has the whole city 「全区」 from its
stations' mean concentrations); hours are also summed for 全区, and ponding points are counted
for 全区. The runner refreshes the current (and any unfinished) period into `kpi_values` on each
pass; `urbanpulse.db.scorecard` reads it back with the previous period, the trend and the
compliance history.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from urbanpulse.rulefmt import periods
from urbanpulse.rulefmt.kpis import DaysWhere, HoursAbove, Kpi, Latest, PondingPoints, period_bounds
from urbanpulse.rulefmt.records import CITY

Conn = psycopg.Connection[Any]


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


Scores = dict[str, tuple[float, dict[str, Any]]]  # entity → (value, detail)


def _latest(conn: Conn, m: Latest, lo: datetime, hi: datetime) -> Scores:
    rows = conn.execute(
        """
        SELECT DISTINCT ON (entity) entity, value, period_end FROM recorded
         WHERE series = %s AND period_end > %s AND period_end <= %s
           AND (%s::text[] IS NULL OR entity = ANY(%s::text[]))
         ORDER BY entity, period_end DESC
        """,
        (m.recorded, lo, hi, m.entities, m.entities),
    ).fetchall()
    return {
        str(entity): (float(value), {"as_of": until.isoformat()}) for entity, value, until in rows
    }


def _days_where(conn: Conn, m: DaysWhere, lo: datetime, hi: datetime) -> Scores:
    rows = conn.execute(
        """
        SELECT entity, count(*) FILTER (WHERE CASE %(op)s WHEN '<' THEN value < %(v)s
                                               WHEN '<=' THEN value <= %(v)s
                                               WHEN '>' THEN value > %(v)s
                                               ELSE value >= %(v)s END), count(*)
          FROM recorded
         WHERE series = %(s)s AND period_start >= %(lo)s AND period_end <= %(hi)s
         GROUP BY entity
        """,
        {"s": m.recorded, "lo": lo, "hi": hi, "v": m.value, "op": m.op},
    ).fetchall()
    out: Scores = {}
    for entity, hits, days in rows:
        if m.kind == "days_where":
            out[str(entity)] = (float(hits), {"days": int(days)})
        elif days:  # share_days
            out[str(entity)] = (float(hits) / float(days) * 100, {"days": int(days)})
    return out


def _hours_above(conn: Conn, m: HoursAbove, lo: datetime, hi: datetime) -> Scores:
    rows = conn.execute(
        """
        SELECT entity, count(*) FILTER (WHERE value > %s), count(*) FROM recorded
         WHERE series = %s AND period_start >= %s AND period_end <= %s GROUP BY entity
        """,
        (m.value, m.recorded, lo, hi),
    ).fetchall()
    out: Scores = {
        str(entity): (float(hits), {"hours": int(hours)}) for entity, hits, hours in rows
    }
    if rows:
        out[CITY] = (sum(float(hits) for _, hits, _ in rows), {"car_parks": len(rows)})
    return out


def _ponding_points(conn: Conn, m: PondingPoints, lo: datetime, hi: datetime) -> Scores:
    row = conn.execute(
        """
        SELECT count(DISTINCT device_id), coalesce(array_agg(DISTINCT device_id), '{}'),
               count(*) FROM ponding_events
         WHERE started_at < %s AND (ended_at IS NULL OR ended_at >= %s)
           AND (NOT %s OR carriageway)
        """,
        (hi, lo, m.carriageway_only),
    ).fetchone()
    assert row is not None
    return {CITY: (float(row[0]), {"points": sorted(row[1]), "events": int(row[2])})}


# one measurer per kind of the rule files' `measure:`; a new kind is one entry here
MEASURERS: dict[str, Callable[[Conn, Any, datetime, datetime], Scores]] = {
    "latest": _latest,
    "days_where": _days_where,
    "share_days": _days_where,
    "hours_above": _hours_above,
    "ponding_points": _ponding_points,
}


def measure(conn: Conn, kpi: Kpi, start: float, end: float, upto: float) -> Scores:
    """entity → (value, detail) of the KPI over [start, min(end, upto))."""
    return MEASURERS[kpi.measure.kind](conn, kpi.measure, _ts(start), _ts(min(end, upto)))


def refresh(conn: Conn, kpi: Kpi, *, after: float, upto: float, tz: ZoneInfo) -> int:
    """Recompute the KPI for every period from the one holding `after` to the one holding
    `upto` (a period still running is scored up to `upto`); returns the rows written."""
    day = periods.local_date(after, tz)
    last = periods.local_date(max(after, upto - 1), tz)
    written = 0
    while day <= last:
        first, start, end = period_bounds(kpi, day, tz)
        for entity, (value, detail) in measure(conn, kpi, start, end, upto).items():
            complete = upto >= end
            conn.execute(
                """
                INSERT INTO kpi_values (kpi_id, entity, period, period_start, value, target,
                                        compliant, detail)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (kpi_id, entity, period, period_start) DO UPDATE
                   SET value = EXCLUDED.value, target = EXCLUDED.target,
                       compliant = EXCLUDED.compliant, detail = EXCLUDED.detail,
                       computed_at = now()
                """,
                (
                    kpi.id,
                    entity,
                    kpi.period,
                    first,
                    value,
                    kpi.target.value,
                    kpi.target.met(value),
                    Jsonb({**detail, "complete": complete}),
                ),
            )
            written += 1
        day = periods.local_date(end, tz)
    return written
