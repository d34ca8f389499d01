"""The plan KPI scorecard as the rule runner left it in `kpi_values`: each KPI and entity's
latest period against its target, the period before, the trend and the compliance history.
A read: the API, the notifier's digest and the command line share it; a count to date (days,
hours, points) is compared with the period before only once its period is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import psycopg

from urbanpulse.rulefmt.kpis import Kpi
from urbanpulse.rulefmt.records import CITY

Conn = psycopg.Connection[Any]

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
