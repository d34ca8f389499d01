"""Recording rules: series derived from readings, stored in `recorded` like readings.

Each record computes one value per entity per period once the period has ended (its end at
or before the runner's watermark, so the allowed lateness is already behind it):

- `aqi`: HJ 633-2012 AQI per station, as an hourly (real-time) report, a rolling 24 h report
  every hour, or a daily report per local day; the breakpoint tables are versioned data
  (rules/standards). The detail holds IAQI per pollutant, primary and exceeding pollutants,
  level, category and colour.
- `pollution_warning`: the heavy-pollution warning level a station has reached, from how long
  its rolling 24 h AQI has stayed above 200 (and 300); levels are data in the rule file.
- `water_balance`: per DMA and per district, CJJ 92-2016 gross leakage rate
  R_WL = (inflow − customer consumption) / inflow and the assessed rate R_BL = R_WL − R_n with
  the corrections R1..R4 configured, over a local day or the month to date.
- `night_flow`: per DMA, the minimum night flow (min of the 1 h moving average of the sum of
  the DMA's inlets between 02:00 and 05:00 local) or its change against the preceding nights.
- `occupancy`: parking occupancy (%) per car park or per zone over each period.
- `ponding_events`: per flood point, each run of depth at or above a threshold, with start,
  end, peak and duration (table `ponding_events`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import time
from zoneinfo import ZoneInfo

from psycopg.types.json import Jsonb

from rules import periods
from rules.recording.air import record_aqi, record_warning
from rules.recording.model import (
    CITY,
    HOUR,
    ID_PATTERN,
    AqiRecord,
    Conn,
    Corrections,
    NightFlowRecord,
    OccupancyRecord,
    PondingRecord,
    Record,
    Row,
    Title,
    WarningLevel,
    WarningRecord,
    WaterBalanceRecord,
    utc,
)
from rules.recording.places import record_occupancy, record_ponding
from rules.recording.water import record_night_flow, record_water_balance

__all__ = [
    "CITY",
    "ID_PATTERN",
    "AqiRecord",
    "Corrections",
    "NightFlowRecord",
    "OccupancyRecord",
    "PondingRecord",
    "Record",
    "Row",
    "Title",
    "WarningLevel",
    "WarningRecord",
    "WaterBalanceRecord",
    "compute",
    "covered",
    "period_ends",
    "run_record",
    "save_rows",
    "source_of",
]


def period_ends(rec: Record, after: float, upto: float, tz: ZoneInfo) -> list[float]:
    """The ends of the record's periods that have ended in (after, upto]."""
    if isinstance(rec, AqiRecord):
        if rec.report == "daily":
            return periods.daily_at(tz, time(0), after, upto)
        return periods.every(HOUR, after, upto)
    if isinstance(rec, WarningRecord):
        return periods.every(HOUR, after, upto)
    if isinstance(rec, WaterBalanceRecord):
        return periods.daily_at(tz, time(0), after, upto)
    if isinstance(rec, NightFlowRecord):
        return periods.daily_at(tz, rec.end, after, upto)
    if isinstance(rec, OccupancyRecord):
        return periods.every(rec.period, after, upto)
    return []


def source_of(rec: Record) -> str | None:
    """The record this one is computed from, if any: it is computed no further than that."""
    if isinstance(rec, WarningRecord):
        return rec.aqi
    if isinstance(rec, WaterBalanceRecord):
        return rec.days
    return None


def covered(rec: Record, after: float, upto: float, tz: ZoneInfo) -> float:
    """How far the record covers once its periods ended in (after, upto] are computed: the end
    of the last of them (nothing more can be known before the next one ends); events, upto."""
    if isinstance(rec, PondingRecord):
        return max(after, upto)
    ends = period_ends(rec, after, upto, tz)
    return ends[-1] if ends else after


def compute(conn: Conn, rec: Record, after: float, upto: float, tz: ZoneInfo) -> list[Row]:
    ends = period_ends(rec, after, upto, tz)
    if isinstance(rec, AqiRecord):
        return record_aqi(conn, rec, ends, tz)
    if isinstance(rec, WarningRecord):
        return record_warning(conn, rec, ends)
    if isinstance(rec, WaterBalanceRecord):
        return record_water_balance(conn, rec, ends, tz)
    if isinstance(rec, NightFlowRecord):
        return record_night_flow(conn, rec, ends, tz)
    if isinstance(rec, OccupancyRecord):
        return record_occupancy(conn, rec, ends)
    return []


def save_rows(conn: Conn, rows: Iterable[Row]) -> int:
    n = 0
    with conn.cursor() as cur:
        data = [
            (r.series, r.entity, utc(r.start), utc(r.end), r.value, Jsonb(r.detail)) for r in rows
        ]
        if data:
            cur.executemany(
                """
                INSERT INTO recorded (series, entity, period_start, period_end, value, detail)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (series, entity, period_start) DO UPDATE
                   SET period_end = EXCLUDED.period_end, value = EXCLUDED.value,
                       detail = EXCLUDED.detail, computed_at = now()
                """,
                data,
            )
            n = len(data)
    return n


def run_record(conn: Conn, rec: Record, after: float, upto: float, tz: ZoneInfo) -> int:
    """Compute and store the record's periods that ended in (after, upto]; returns the number of
    rows (or events) written. The caller owns the transaction."""
    if isinstance(rec, PondingRecord):
        return record_ponding(conn, rec, after, upto)
    return save_rows(conn, compute(conn, rec, after, upto, tz))
