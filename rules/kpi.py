"""The plan KPI scorecard: each sensor-measurable target of the plan, per period and entity.

A KPI (in a rule file's `kpis:` section) names its plan clause, owner, period (month or year)
and target, and how it is measured from recorded series or ponding events:

- `latest`: the latest value of a recorded series in the period (e.g. the month-to-date
  leakage rate R_BL per DMA and district);
- `days_where`: the number of local days whose daily value passes a test (heavy-pollution
  days: daily AQI > 200);
- `share_days`: the share (%) of days with a value that passes a test (good-air days: daily
  AQI ≤ 100);
- `hours_above`: the number of hourly values above a level (car-park hours above 85 %);
- `ponding_points`: the number of distinct flood points that ponded in the period.

Each entity of the record is scored (the daily AQI record has the whole city 「全区」 from its
stations' mean concentrations); hours are also summed for 全区, and ponding points are counted
for 全区. The trend compares with the period just before; a count to date (days, hours,
points) is compared only once its period is complete.
The runner refreshes the current (and any unfinished) period into `kpi_values` on each pass;
`scorecard()` reads it back with the previous period, the trend and the compliance history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rules import periods
from rules.recording import CITY, ID_PATTERN, Title

Op = Literal["<", "<=", ">", ">="]
Conn = psycopg.Connection[Any]

_PY_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    better: Literal["lower", "higher"]
    op: Op | None = None  # None: the plan sets a direction only (e.g. 「逐步缓解」)
    value: float | None = None

    @model_validator(mode="after")
    def _both(self) -> Target:
        if (self.op is None) != (self.value is None):
            raise ValueError("give both op and value, or neither (a direction only)")
        return self

    def met(self, value: float | None) -> bool | None:
        if value is None or self.op is None or self.value is None:
            return None
        return bool(_PY_OPS[self.op](value, self.value))


class Latest(_Strict):
    kind: Literal["latest"]
    recorded: str = Field(pattern=ID_PATTERN)
    entities: list[str] | None = None  # None: every entity of the series


class DaysWhere(_Strict):
    kind: Literal["days_where", "share_days"]
    recorded: str = Field(pattern=ID_PATTERN)  # a daily series
    op: Op
    value: float


class HoursAbove(_Strict):
    kind: Literal["hours_above"]
    recorded: str = Field(pattern=ID_PATTERN)  # an hourly series
    value: float


class PondingPoints(_Strict):
    kind: Literal["ponding_points"]
    carriageway_only: bool = False
    record: str = Field("flood.ponding_events", pattern=ID_PATTERN)  # the events' record


Measure = Annotated[Latest | DaysWhere | HoursAbove | PondingPoints, Field(discriminator="kind")]


class Kpi(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    title: Title
    unit: str
    period: Literal["month", "year"]
    target: Target
    measure: Measure
    owner: str
    clause: str = Field(min_length=1)
    standard: str | None = None

    @property
    def recorded(self) -> str | None:
        return None if isinstance(self.measure, PondingPoints) else self.measure.recorded

    @property
    def source(self) -> str:
        """The record the KPI is scored from (it is scored as far as that record covers)."""
        m = self.measure
        return m.record if isinstance(m, PondingPoints) else m.recorded


def period_bounds(kpi: Kpi, day: date, tz: ZoneInfo) -> tuple[date, float, float]:
    """(first day, start, end) of the KPI's period that holds the local `day`."""
    first = day.replace(day=1) if kpi.period == "month" else day.replace(month=1, day=1)
    if kpi.period == "month":
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    else:
        nxt = date(first.year + 1, 1, 1)
    start = datetime.combine(first, time(0), tz).timestamp()
    end = datetime.combine(nxt, time(0), tz).timestamp()
    return first, start, end


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def measure(conn: Conn, kpi: Kpi, start: float, end: float, upto: float) -> dict[str, Any]:
    """entity → (value, detail) of the KPI over [start, min(end, upto))."""
    m = kpi.measure
    stop = min(end, upto)
    lo, hi = _ts(start), _ts(stop)
    out: dict[str, Any] = {}
    if isinstance(m, Latest):
        rows = conn.execute(
            """
            SELECT DISTINCT ON (entity) entity, value, period_end FROM recorded
             WHERE series = %s AND period_end > %s AND period_end <= %s
               AND (%s::text[] IS NULL OR entity = ANY(%s::text[]))
             ORDER BY entity, period_end DESC
            """,
            (m.recorded, lo, hi, m.entities, m.entities),
        ).fetchall()
        for entity, value, until in rows:
            out[str(entity)] = (float(value), {"as_of": until.isoformat()})
        return out
    if isinstance(m, DaysWhere):
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
        for entity, hits, days in rows:
            if m.kind == "days_where":
                out[str(entity)] = (float(hits), {"days": int(days)})
            elif days:
                out[str(entity)] = (float(hits) / float(days) * 100, {"days": int(days)})
        return out
    if isinstance(m, HoursAbove):
        rows = conn.execute(
            """
            SELECT entity, count(*) FILTER (WHERE value > %s), count(*) FROM recorded
             WHERE series = %s AND period_start >= %s AND period_end <= %s GROUP BY entity
            """,
            (m.value, m.recorded, lo, hi),
        ).fetchall()
        total = 0.0
        for entity, hits, hours in rows:
            out[str(entity)] = (float(hits), {"hours": int(hours)})
            total += float(hits)
        if rows:
            out[CITY] = (total, {"car_parks": len(rows)})
        return out
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
    out[CITY] = (float(row[0]), {"points": sorted(row[1]), "events": int(row[2])})
    return out


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


Trend = Literal["better", "worse", "steady", "new", "running"]


@dataclass(frozen=True, slots=True)
class ScoreLine:
    """One KPI for one entity: the latest period against the target, and its history."""

    kpi: Kpi
    entity: str
    period_start: date
    value: float | None
    compliant: bool | None
    previous: float | None
    trend: Trend
    history: list[tuple[date, float | None, bool | None]]
    detail: dict[str, Any]


CUMULATIVE = ("days_where", "hours_above", "ponding_points")


def _trend(kpi: Kpi, value: float | None, previous: float | None, complete: bool) -> Trend:
    if value is None or previous is None:
        return "new"
    if kpi.measure.kind in CUMULATIVE and not complete:
        return "running"  # a count to date against a whole period says nothing
    if abs(value - previous) < 1e-9:
        return "steady"
    lower = value < previous
    return "better" if lower == (kpi.target.better == "lower") else "worse"


def _previous_period(kpi: Kpi, first: date) -> date:
    if kpi.period == "year":
        return first.replace(year=first.year - 1)
    return date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)


def scorecard(conn: Conn, kpis: list[Kpi], *, history: int = 12) -> list[ScoreLine]:
    """Every KPI and entity: the latest period's value against the target, the previous
    period, the trend and up to `history` periods of compliance."""
    out: list[ScoreLine] = []
    for kpi in kpis:
        rows = conn.execute(
            """
            SELECT entity, period_start, value, compliant, detail FROM kpi_values
             WHERE kpi_id = %s ORDER BY entity = %s DESC, entity, period_start DESC
            """,
            (kpi.id, CITY),
        ).fetchall()
        by_entity: dict[str, list[tuple[Any, ...]]] = {}
        for entity, first, value, compliant, detail in rows:
            by_entity.setdefault(str(entity), []).append((first, value, compliant, detail))
        for entity, seq in by_entity.items():
            first, value, compliant, detail = seq[0]
            before = _previous_period(kpi, first)
            previous = seq[1][1] if len(seq) > 1 and seq[1][0] == before else None
            out.append(
                ScoreLine(
                    kpi,
                    entity,
                    first,
                    value,
                    compliant,
                    previous,
                    _trend(kpi, value, previous, bool(detail.get("complete"))),
                    [(f, v, c) for f, v, c, _ in seq[:history]],
                    dict(detail),
                )
            )
    conn.commit()
    return out
