"""Recording rules: series derived from readings, stored in `recorded` like readings.

Each record computes one value per entity per period once the period has ended (its end at
or before the runner's watermark, so the allowed lateness is already behind it):

- `aqi`: HJ 633-2012 AQI per station, as an hourly (real-time) report, a rolling 24 h report
  every hour, or a daily report per local day; the breakpoint tables are versioned data
  (urbanpulse/rulefmt/standards). The detail holds IAQI per pollutant, primary and exceeding
  pollutants, level, category and colour.
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

The record specifications are the rule-file schema (`urbanpulse.rulefmt.records`); this package
computes them. Each kind has one `Recorder` in `RECORDERS`, so a new kind is one entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.types.json import Jsonb

from rules.recording.air import record_aqi, record_warning
from rules.recording.common import Conn, Row, utc
from rules.recording.places import record_occupancy, record_ponding
from rules.recording.water import record_night_flow, record_water_balance
from urbanpulse.rulefmt import periods
from urbanpulse.rulefmt.records import (
    HOUR,
    AqiRecord,
    NightFlowRecord,
    OccupancyRecord,
    Record,
    WarningRecord,
)

__all__ = ["RECORDERS", "Recorder", "compute", "covered", "period_ends", "run_record", "save_rows"]

Ends = Callable[[Any, float, float, ZoneInfo], list[float]]


@dataclass(frozen=True, slots=True)
class Recorder:
    """How one kind of record is computed.

    A periodic record has `ends` (the ends of its periods that ended in (after, upto]) and
    `compute` (one row per entity and ended period). An event record has `events` instead:
    it writes its own table and covers everything up to the watermark."""

    ends: Ends | None = None
    compute: Callable[[Conn, Any, list[float], ZoneInfo], list[Row]] | None = None
    events: Callable[[Conn, Any, float, float], int] | None = None


def _hourly(_rec: Any, after: float, upto: float, _tz: ZoneInfo) -> list[float]:
    return periods.every(HOUR, after, upto)


def _local_midnights(_rec: Any, after: float, upto: float, tz: ZoneInfo) -> list[float]:
    return periods.daily_at(tz, time(0), after, upto)


def _aqi_ends(rec: AqiRecord, after: float, upto: float, tz: ZoneInfo) -> list[float]:
    if rec.report == "daily":
        return _local_midnights(rec, after, upto, tz)
    return _hourly(rec, after, upto, tz)


def _night_ends(rec: NightFlowRecord, after: float, upto: float, tz: ZoneInfo) -> list[float]:
    return periods.daily_at(tz, rec.end, after, upto)


def _occupancy_ends(rec: OccupancyRecord, after: float, upto: float, _tz: ZoneInfo) -> list[float]:
    return periods.every(rec.period, after, upto)


def _warning(conn: Conn, rec: WarningRecord, ends: list[float], _tz: ZoneInfo) -> list[Row]:
    return record_warning(conn, rec, ends)


def _occupancy(conn: Conn, rec: OccupancyRecord, ends: list[float], _tz: ZoneInfo) -> list[Row]:
    return record_occupancy(conn, rec, ends)


RECORDERS: dict[str, Recorder] = {
    "aqi": Recorder(ends=_aqi_ends, compute=record_aqi),
    "pollution_warning": Recorder(ends=_hourly, compute=_warning),
    "water_balance": Recorder(ends=_local_midnights, compute=record_water_balance),
    "night_flow": Recorder(ends=_night_ends, compute=record_night_flow),
    "occupancy": Recorder(ends=_occupancy_ends, compute=_occupancy),
    "ponding_events": Recorder(events=record_ponding),
}


def period_ends(rec: Record, after: float, upto: float, tz: ZoneInfo) -> list[float]:
    """The ends of the record's periods that have ended in (after, upto]."""
    ends = RECORDERS[rec.kind].ends
    return [] if ends is None else ends(rec, after, upto, tz)


def covered(rec: Record, after: float, upto: float, tz: ZoneInfo) -> float:
    """How far the record covers once its periods ended in (after, upto] are computed: the end
    of the last of them (nothing more can be known before the next one ends); events, upto."""
    if RECORDERS[rec.kind].events is not None:
        return max(after, upto)
    ends = period_ends(rec, after, upto, tz)
    return ends[-1] if ends else after


def compute(conn: Conn, rec: Record, after: float, upto: float, tz: ZoneInfo) -> list[Row]:
    recorder = RECORDERS[rec.kind]
    if recorder.compute is None:
        return []
    return recorder.compute(conn, rec, period_ends(rec, after, upto, tz), tz)


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
    events = RECORDERS[rec.kind].events
    if events is not None:
        return events(conn, rec, after, upto)
    return save_rows(conn, compute(conn, rec, after, upto, tz))
