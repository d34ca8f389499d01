"""The plan KPI scorecard: values per period from recorded series and ponding events, against
the plan's targets, with the previous period, the trend and the compliance history."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from rules.runner import run_pass
from urbanpulse.contract import default_registry
from urbanpulse.db.scorecard import scorecard
from urbanpulse.rulefmt.kpis import Kpi, Target, period_bounds
from urbanpulse.rulefmt.model import RuleSet, catalogue_files, load_rules
from urbanpulse.rulefmt.records import CITY

TZ = ZoneInfo("Asia/Shanghai")
REGISTRY = default_registry()
KPIS = {k.id: k for k in load_rules(catalogue_files(), REGISTRY).kpis}
Conn = psycopg.Connection[Any]


def local(y: int, m: int, d: int, h: int = 0, minute: int = 0) -> datetime:
    return datetime(y, m, d, h, minute, tzinfo=TZ)


def put(
    conn: Conn,
    series: str,
    entity: str,
    start: datetime,
    end: datetime,
    value: float,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO recorded (series, entity, period_start, period_end, value, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (series, entity, start, end, value, Jsonb(detail or {})),
    )


def score(
    conn: Conn, kpis: list[Kpi], now: datetime, since: datetime, covered: bool = True
) -> None:
    """Score the KPIs, their records having been computed up to `now` (unless not covered)."""
    if covered:
        for kpi in kpis:
            conn.execute(
                "INSERT INTO rule_health (rule_id, watermark) VALUES (%s, %s) "
                "ON CONFLICT (rule_id) DO UPDATE SET watermark = EXCLUDED.watermark",
                (kpi.source, now),
            )
    conn.commit()
    report = run_pass(
        conn, RuleSet([], [], kpis), REGISTRY, now=now, lateness_s=0, since=since, tz=TZ.key
    )
    assert not report.failed, report.failed


def values(conn: Conn, kpi: str) -> dict[tuple[str, date], tuple[float, bool | None]]:
    rows = conn.execute(
        "SELECT entity, period_start, value, compliant FROM kpi_values WHERE kpi_id = %s",
        (kpi,),
    ).fetchall()
    return {(e, d): (v, c) for e, d, v, c in rows}


def test_targets_and_periods() -> None:
    assert Target(better="lower", op="<", value=10).met(9.9) is True
    assert Target(better="lower", op="<", value=10).met(10) is False
    assert Target(better="higher").met(50) is None  # a direction, not a number
    kpi = KPIS["water.leakage_month"]
    first, start, end = period_bounds(kpi, date(2026, 12, 15), TZ)
    assert first == date(2026, 12, 1)
    assert (end - start) / 86400 == 31 and datetime.fromtimestamp(end, TZ) == local(2027, 1, 1)


def test_air_days_counted_per_station_and_for_the_city(conn: Conn) -> None:
    # two stations and the city (recorded from the stations' mean concentrations) over 4 days
    daily = {"aq-a": [80, 250, 210, 90], "aq-b": [60, 190, 230, 100], CITY: [70, 220, 205, 95]}
    first = local(2026, 11, 1)
    for station, seq in daily.items():
        for i, v in enumerate(seq):
            day = first + timedelta(days=i)
            put(conn, "air.aqi_daily", station, day, day + timedelta(days=1), v)
    kpis = [KPIS["air.heavy_pollution_days_year"], KPIS["air.good_days_share_year"]]
    score(conn, kpis, local(2026, 11, 5), since=first)
    year = date(2026, 1, 1)
    heavy = values(conn, "air.heavy_pollution_days_year")
    assert heavy == {
        ("aq-a", year): (2.0, False),
        ("aq-b", year): (1.0, False),
        (CITY, year): (2.0, False),
    }
    good = values(conn, "air.good_days_share_year")
    assert good[("aq-b", year)] == (50.0, None)  # 60 and 100 of four days; no numeric target
    assert good[(CITY, year)] == (50.0, None)


def test_leakage_month_history_previous_and_trend(conn: Conn) -> None:
    kpi = KPIS["water.leakage_month"]
    for month, value in ((10, 12.5), (11, 8.0)):
        start = local(2026, month, 1)
        put(conn, "water.rbl_month", "中心城区", start, start + timedelta(days=20), value)
    # nothing is scored beyond what its record covers (here: not computed at all yet)
    score(conn, [kpi], local(2026, 11, 25), since=local(2026, 10, 1), covered=False)
    assert scorecard(conn, [kpi]) == []
    score(conn, [kpi], local(2026, 11, 25), since=local(2026, 10, 1))
    [line] = scorecard(conn, [kpi])
    assert (line.entity, line.period_start, line.value) == ("中心城区", date(2026, 11, 1), 8.0)
    assert (line.compliant, line.previous, line.trend) == (True, 12.5, "better")
    assert line.history == [(date(2026, 11, 1), 8.0, True), (date(2026, 10, 1), 12.5, False)]
    assert line.detail["complete"] is False  # November is still running


def test_a_count_to_date_is_not_compared_with_a_whole_period(conn: Conn) -> None:
    kpi = KPIS["parking.hours_above_85_month"]
    for day, hours in ((local(2026, 10, 3), 40), (local(2026, 11, 2), 3)):
        for h in range(hours):
            t = day + timedelta(hours=h)
            put(conn, "parking.occupancy", "pk-a", t, t + timedelta(hours=1), 90.0)
    score(conn, [kpi], local(2026, 11, 4), since=local(2026, 10, 1))
    line = next(ln for ln in scorecard(conn, [kpi]) if ln.entity == "pk-a")
    assert (line.value, line.previous, line.trend) == (3.0, 40.0, "running")


def test_ponding_points_and_parking_hours(conn: Conn) -> None:
    # fl-c ponded over new year's night: it counts for the year it ran into
    for device, start in (
        ("fl-a", local(2026, 6, 1, 16)),
        ("fl-a", local(2026, 7, 2, 9)),
        ("fl-b", local(2026, 7, 2, 10)),
        ("fl-c", local(2025, 12, 31, 23, 30)),
    ):
        conn.execute(
            "INSERT INTO ponding_events (device_id, started_at, ended_at, last_at, peak_cm, "
            "peak_at, threshold_cm, carriageway) VALUES (%s, %s, %s, %s, 20, %s, 15, true)",
            (device, start, start + timedelta(hours=1), start, start),
        )
    hours = [90.0, 86.0, 85.0, 40.0]  # 85 is not above 85
    for i, v in enumerate(hours):
        t = local(2026, 7, 3, 10 + i)
        put(conn, "parking.occupancy", "pk-a", t, t + timedelta(hours=1), v)
    kpis = [KPIS["flood.ponding_points_year"], KPIS["parking.hours_above_85_month"]]
    score(conn, kpis, local(2026, 8, 1), since=local(2026, 1, 1))
    assert values(conn, "flood.ponding_points_year") == {(CITY, date(2026, 1, 1)): (3.0, False)}
    parking = values(conn, "parking.hours_above_85_month")
    assert parking[("pk-a", date(2026, 7, 1))] == (2.0, None)
    assert parking[(CITY, date(2026, 7, 1))] == (2.0, None)
