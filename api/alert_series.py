"""The series behind an alert, for the small chart beside it: the readings (or recorded values)
the rule read, around the breach, in at most `POINTS` buckets; with the rule's threshold and,
for air alerts, the HJ 633 AQI level of the alert's value (its colour is the standard's).

The window follows the alert, not the clock: it runs from before the breach began to the alert's
final value (resolved) or its latest value (still open), however long ago that was. An alert that
has been firing for weeks, or whose devices fell silent, still shows the data that raised it."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from api.deps import AConn, ApiState, not_found
from api.schemas import AlertSeries, AqiBand, SeriesValue
from urbanpulse.contract.registry import default_registry
from urbanpulse.rulefmt.aqi import iaqi, load_standard
from urbanpulse.rulefmt.model import Rule

POINTS = 60  # a sparkline wider than this shows nothing more on a phone
LEAD = timedelta(hours=6)  # at least this is shown before the breach began, so the rise shows
TAIL = timedelta(hours=1)  # shown after it ended, or after its latest value
# an alert open for longer shows its most recent part: a half-year of one device's readings is
# still one index range scan, and 60 points of 3 days each are still a readable trend
MAX_SPAN = timedelta(days=183)
MIN_STEP = timedelta(minutes=1)
LONGEST_PERIOD = timedelta(days=366)  # of a recorded value: bounds the primary-key scan below

_READINGS = """
    SELECT date_bin(%(step)s, ts, %(origin)s) AS ts, avg(value) AS value FROM readings
     WHERE device_id = %(entity)s AND metric = %(name)s AND ts >= %(lo)s AND ts < %(hi)s
     GROUP BY 1 ORDER BY 1
"""
_RECORDED = """
    SELECT date_bin(%(step)s, period_end, %(origin)s) AS ts, avg(value) AS value FROM recorded
     WHERE series = %(name)s AND entity = %(entity)s AND period_end > %(lo)s
       AND period_end <= %(hi)s AND period_start > %(lo)s - %(longest)s AND period_start < %(hi)s
     GROUP BY 1 ORDER BY 1
"""
# the latest value before the alert's horizon: a backward walk of the primary key, one row
_LATEST_READING = """
    SELECT ts FROM readings WHERE device_id = %(entity)s AND metric = %(name)s AND ts < %(hi)s
     ORDER BY ts DESC LIMIT 1
"""
_LATEST_RECORDED = """
    SELECT period_end AS ts FROM recorded
     WHERE series = %(name)s AND entity = %(entity)s AND period_start < %(hi)s
       AND period_end <= %(hi)s
     ORDER BY period_start DESC LIMIT 1
"""


def horizon(ended_at: datetime | None, now: datetime) -> datetime:
    """The latest instant that belongs to an alert: shortly after it ended, or now if open."""
    return min(ended_at + TAIL, now) if ended_at else now


def window(
    pending_at: datetime,
    ended_at: datetime | None,
    now: datetime,
    lead: timedelta = LEAD,
    latest: datetime | None = None,
) -> tuple[datetime, datetime, timedelta]:
    """[start, end) and the bucket width. `latest` is the time of the series' latest value
    before the alert's `horizon` (None when it has none): the window ends shortly after it,
    so an alert whose data stopped long ago still draws that data. It starts `lead` before
    the breach, spans at most `MAX_SPAN` (its most recent part) in `POINTS` buckets of whole
    minutes."""
    last = max(latest, pending_at) if latest is not None else pending_at
    end = min(horizon(ended_at, now), last + TAIL)
    start = max(min(pending_at - lead, end - lead), end - MAX_SPAN)
    minutes = max(1, math.ceil((end - start).total_seconds() / (60 * POINTS)))
    return start, end, max(MIN_STEP, timedelta(minutes=minutes))


def aqi_band(rule: Rule, value: float | None) -> AqiBand | None:
    """The AQI level of an air threshold alert's value: the value itself for an AQI series; for
    a pollutant's concentration, its IAQI by the daily table when the rule averages a day or
    more, by the hourly table otherwise (None where the standard gives none, e.g. O3 1 h above
    its last breakpoint)."""
    if value is None or rule.type != "threshold" or rule.labels.get("domain") != "air":
        return None
    std = load_standard()
    if rule.series.recorded is not None:
        if not rule.series.recorded.startswith("air.aqi"):
            return None
        index: int | None = int(value)
    else:
        tables = std.daily if rule.window >= 86400 else std.hourly
        if rule.series.metric not in tables:
            return None
        index = iaqi(std, tables[rule.series.metric], value)
    if index is None:
        return None
    level = std.level_of(index)
    return AqiBand(
        aqi=index, level=level.level, category=level.category, en=level.en, colour=level.colour
    )


def _unit(state: ApiState, rule: Rule) -> str:
    if rule.series.metric is not None:
        metric = default_registry().metrics.get(rule.series.metric)
        return metric.unit if metric else ""
    record = next((r for r in state.catalogue.records if r.id == rule.series.recorded), None)
    return record.unit if record is not None else ""


async def alert_series(conn: AConn, state: ApiState, alert_id: int) -> AlertSeries:
    row = await (
        await conn.execute(
            "SELECT rule_id, entity, value, pending_at, ended_at, now() AS now FROM alerts "
            "WHERE id = %s",
            (alert_id,),
        )
    ).fetchone()
    if row is None:
        raise not_found(f"alert {alert_id}")
    rule = state.rules.get(row["rule_id"])
    # a daily series needs days of lead to show more than a point
    lead = max(LEAD, timedelta(seconds=3 * rule.window)) if rule else LEAD
    name = (rule.series.metric or rule.series.recorded) if rule else None
    latest: datetime | None = None
    if rule is not None and name is not None:
        found = await (
            await conn.execute(
                _LATEST_READING if rule.series.metric is not None else _LATEST_RECORDED,
                {
                    "entity": row["entity"],
                    "name": name,
                    "hi": horizon(row["ended_at"], row["now"]),
                },
            )
        ).fetchone()
        latest = found["ts"] if found else None
    start, end, step = window(row["pending_at"], row["ended_at"], row["now"], lead, latest)
    out: dict[str, Any] = {
        "alert_id": alert_id,
        "start": start,
        "end": end,
        "step_s": int(step.total_seconds()),
        "points": [],
    }
    if rule is None:  # a rule since removed from the catalogue: its alerts stay readable
        return AlertSeries(kind="none", name=None, unit="", value_unit="", **out)
    # the chart draws the series itself: a threshold rule's limit is on its scale; a rate's,
    # a flat line's or a silence's is not
    condition = rule.condition if rule.type == "threshold" else None
    out["threshold"] = condition.value if condition else None
    out["clear"] = condition.clear if condition else None
    out["aqi"] = aqi_band(rule, row["value"])
    if name is None:  # quarantine rules count rejected messages: no series to draw
        return AlertSeries(kind="none", name=None, unit="", value_unit="", **out)
    unit = _unit(state, rule)
    out["value_unit"] = {"threshold": unit, "rate": f"{unit}/h" if unit else ""}.get(rule.type, "")
    query = _READINGS if rule.series.metric is not None else _RECORDED
    rows = await (
        await conn.execute(
            query,
            {
                "step": step,
                "origin": start,
                "entity": row["entity"],
                "name": name,
                "lo": start,
                "hi": end,
                "longest": LONGEST_PERIOD,
            },
        )
    ).fetchall()
    out["points"] = [SeriesValue(ts=r["ts"], value=r["value"]) for r in rows]
    kind = "metric" if rule.series.metric is not None else "recorded"
    return AlertSeries(kind=kind, name=name, unit=unit, **out)
