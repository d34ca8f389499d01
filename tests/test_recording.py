"""Recording rules against PostgreSQL with hand-made readings whose results are worked out by
hand: HJ 633 AQI, CJJ 92 water balance, minimum night flow, occupancy, ponding events and the
heavy-pollution warning levels."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

from rules.runner import run_pass
from urbanpulse.contract import default_registry
from urbanpulse.rulefmt.model import RuleSet, catalogue_files, load_rules
from urbanpulse.rulefmt.records import Corrections, Record, WaterBalanceRecord

TZ = ZoneInfo("Asia/Shanghai")
DAY0 = datetime(2026, 11, 1, tzinfo=TZ)  # local midnight, the first of a month
REGISTRY = default_registry()
CATALOGUE = load_rules(catalogue_files(), REGISTRY)
Conn = psycopg.Connection[Any]


def record(record_id: str) -> Record:
    return next(r for r in CATALOGUE.records if r.id == record_id)


def add_device(
    conn: Conn,
    device_id: str,
    kind: str,
    zone: str | None,
    *,
    interval: int = 300,
    capacity: float | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    domain = {"aq_station": "air", "car_park": "parking", "depth_gauge": "flood"}.get(kind, "water")
    conn.execute(
        "INSERT INTO devices (device_id, domain, kind, name, zone, capacity, report_interval_s, "
        "attributes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (device_id, domain, kind, device_id, zone, capacity, interval, Jsonb(attributes or {})),
    )


def add_readings(conn: Conn, rows: Iterable[tuple[str, str, datetime, float]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (device_id, metric, ts, value) VALUES (%s, %s, %s, %s)",
            list(rows),
        )
    conn.commit()


def run(conn: Conn, records: list[Record], now: datetime, since: datetime = DAY0) -> None:
    report = run_pass(
        conn, RuleSet(records, []), REGISTRY, now=now, lateness_s=0, since=since, tz=TZ.key
    )
    assert not report.failed, report.failed


def recorded(conn: Conn, series: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT entity, period_start, period_end, value, detail FROM recorded WHERE series = %s "
        "ORDER BY entity, period_start",
        (series,),
    ).fetchall()


def test_hourly_aqi_is_the_largest_iaqi_with_its_pollutant_category_and_colour(
    conn: Conn,
) -> None:
    add_device(conn, "aq-t", "aq_station", "Z", interval=3600)
    at = DAY0 + timedelta(hours=10)
    hour = {"pm25": 160, "pm10": 100, "o3": 100, "no2": 50, "co": 1.2, "so2": 10}
    add_readings(conn, [("aq-t", m, at, v) for m, v in hour.items()])
    run(conn, [record("air.aqi_hourly")], DAY0 + timedelta(hours=12))
    [(entity, start, end, value, detail)] = recorded(conn, "air.aqi_hourly")
    assert (entity, start, end) == ("aq-t", at, at + timedelta(hours=1))
    # PM2.5 160 lies in 150..250 → 200 + (160 − 150) / 100 × 100 = 210; PM10 (24 h table)
    # 100 → 75; O3 1 h 100 → 31.25 → 32; NO2 1 h 50 → 25; CO 1 h 1.2 → 12; SO2 1 h 10 → 4
    assert value == 210
    assert detail["iaqi"] == {"pm25": 210, "pm10": 75, "o3": 32, "no2": 25, "co": 12, "so2": 4}
    assert (detail["primary"], detail["exceeding"]) == (["pm25"], ["pm25"])
    assert (detail["category"], detail["colour"]) == ("重度污染", "#99004C")


def test_daily_and_rolling_aqi_need_20_hours_of_data(conn: Conn) -> None:
    add_device(conn, "aq-full", "aq_station", "Z", interval=3600)
    add_device(conn, "aq-gaps", "aq_station", "Z", interval=3600)
    rows = [("aq-full", "pm25", DAY0 + timedelta(hours=h), 80.0) for h in range(24)]
    rows += [("aq-gaps", "pm25", DAY0 + timedelta(hours=h), 80.0) for h in range(19)]
    add_readings(conn, rows)
    records = [record("air.aqi_daily"), record("air.aqi_24h")]
    run(conn, records, DAY0 + timedelta(days=1))
    # 24 h mean 80 lies in 75..115 → 100 + 5 / 40 × 50 = 106.25 → 107; 19 hours: no value
    [daily, city] = recorded(conn, "air.aqi_daily")
    assert city[0] == "全区" and city[3] == 107  # the stations' mean: aq-full's alone
    assert daily[:4] == ("aq-full", DAY0, DAY0 + timedelta(days=1), 107)
    assert daily[4]["category"] == "轻度污染"
    rolling = recorded(conn, "air.aqi_24h")
    # windows ending at 20:00 .. 24:00 hold 20 .. 24 hours of aq-full; aq-gaps never 20
    assert [(e, end.astimezone(TZ).hour, v) for e, _, end, v, _ in rolling] == [
        ("aq-full", h % 24, 107) for h in range(20, 25)
    ]


def test_the_city_aqi_comes_from_the_stations_mean_concentrations(conn: Conn) -> None:
    add_device(conn, "aq-a", "aq_station", "Z", interval=3600)
    add_device(conn, "aq-b", "aq_station", "Z", interval=3600)
    day = {"aq-a": {"pm25": 250.0, "pm10": 50.0}, "aq-b": {"pm25": 50.0, "pm10": 420.0}}
    add_readings(
        conn,
        [
            (st, m, DAY0 + timedelta(hours=h), v)
            for st, values in day.items()
            for m, v in values.items()
            for h in range(24)
        ],
    )
    run(conn, [record("air.aqi_daily")], DAY0 + timedelta(days=1))
    got = {e: (v, d["primary"]) for e, _, _, v, d in recorded(conn, "air.aqi_daily")}
    # each station is at 300 (PM2.5 250; PM10 420); the city's means are PM2.5 150 (200) and
    # PM10 235 (IAQI 142.5 → 143): 200, not the 300 a mean of AQIs would give
    assert got == {"aq-a": (300, ["pm25"]), "aq-b": (300, ["pm10"]), "全区": (200, ["pm25"])}


def _water_city(conn: Conn, days: int) -> None:
    """DMA-A: 10 m³/h in, customers 100 + 116 m³/day (R_WL 10 %); DMA-B: 20 m³/h in, one
    customer 456 m³/day (R_WL 5 %); both in district D. Customers read at :07, :22, :37, :52."""
    add_device(conn, "in-a", "inlet_meter", "DMA-A", interval=900, attributes={"district": "D"})
    add_device(conn, "in-b", "inlet_meter", "DMA-B", interval=900, attributes={"district": "D"})
    customers = {("c-a1", "DMA-A"): 100.0, ("c-a2", "DMA-A"): 116.0, ("c-b1", "DMA-B"): 456.0}
    for device, zone in customers:
        add_device(conn, device, "customer_meter", zone, interval=900)
    rows = []
    steps = days * 96
    for k in range(steps):
        t = DAY0 + timedelta(minutes=15 * k)
        rows += [("in-a", "flow", t, 10.0), ("in-b", "flow", t, 20.0)]
    for k in range(-1, steps + 1):
        t = DAY0 + timedelta(minutes=15 * k + 7)
        for (device, _), per_day in customers.items():
            rows.append((device, "volume", t, 5000 + per_day * (15 * k + 7) / 1440))
    add_readings(conn, rows)


def test_water_balance_per_dma_and_district_with_cjj92_corrections(conn: Conn) -> None:
    _water_city(conn, days=2)
    rbl = record("water.rbl_day")
    assert isinstance(rbl, WaterBalanceRecord)
    # DMA-A: half of its supply is household-metered residential use: R1 = 0.08 × 0.5 = 4 %
    rbl = rbl.model_copy(update={"zones": {"DMA-A": Corrections(residential_share=0.5)}})
    records = [record("water.rwl_day"), rbl, record("water.rbl_month")]
    run(conn, records, DAY0 + timedelta(days=2))
    # the second day waits an hour after midnight for late customer meters
    assert {s for _, s, *_ in recorded(conn, "water.rwl_day")} == {DAY0}
    run(conn, records, DAY0 + timedelta(days=2, hours=1))
    gross = {(e, s): round(v, 6) for e, s, _, v, _ in recorded(conn, "water.rwl_day")}
    day1 = DAY0 + timedelta(days=1)
    assert gross == {
        ("D", DAY0): round(48 / 720 * 100, 6),  # (720 − 672) / 720
        ("D", day1): round(48 / 720 * 100, 6),
        ("DMA-A", DAY0): 10.0,
        ("DMA-A", day1): 10.0,
        ("DMA-B", DAY0): 5.0,
        ("DMA-B", day1): 5.0,
    }
    assessed = {
        e: (round(v, 6), d) for e, s, _, v, d in recorded(conn, "water.rbl_day") if s == day1
    }
    assert assessed["DMA-A"][0] == 6.0 and assessed["DMA-A"][1]["r1"] == 4.0
    assert assessed["DMA-B"][0] == 5.0
    # the district's assessed rate is supply-weighted: (6 × 240 + 5 × 480) / 720
    assert assessed["D"][0] == round((6 * 240 + 5 * 480) / 720, 6)
    assert assessed["DMA-A"][1]["inflow_m3"] == 240 and assessed["DMA-A"][1]["customers"] == 2
    # month to date: one row per entity, updated each day, over both days
    month = {e: (s, end, d["inflow_m3"]) for e, s, end, _, d in recorded(conn, "water.rbl_month")}
    assert month["DMA-B"] == (DAY0, DAY0 + timedelta(days=2), 960)


def test_a_dma_with_a_silent_customer_meter_gets_no_rate(conn: Conn) -> None:
    _water_city(conn, days=1)
    conn.execute(
        "DELETE FROM readings WHERE device_id = 'c-a2' AND ts > %s", (DAY0 + timedelta(hours=12),)
    )
    conn.commit()
    run(conn, [record("water.rwl_day")], DAY0 + timedelta(days=1, hours=1))
    # half of DMA-A's customers are unknown: no rate for DMA-A, nor for district D
    assert [e for e, *_ in recorded(conn, "water.rwl_day")] == ["DMA-B"]


def test_corrections_follow_cjj92() -> None:
    supply = 1_000_000.0  # m³ a year = 100 × 10⁴ m³
    assert Corrections(pipe_length_km=8).terms(supply)["r2"] == pytest.approx(
        0.99 * (0.08 - 0.0693) * 100
    )
    assert Corrections(pipe_length_km=100).terms(supply)["r2"] == 3.0  # clamped
    assert Corrections(pipe_length_km=1).terms(supply)["r2"] == -3.0
    r3 = [Corrections(outlet_pressure_mpa=p).terms(supply)["r3"] for p in (0.35, 0.36, 0.6, 0.8)]
    assert r3 == [0.0, 0.5, 1.0, 2.0]
    assert Corrections(frost_depth_m=1.5).terms(supply)["r4"] == 1.0
    assert Corrections(residential_share=1).terms(supply)["r1"] == 8.0


def test_minimum_night_flow_and_its_step_against_the_nights_before(conn: Conn) -> None:
    add_device(conn, "in-n", "inlet_meter", "DMA-N", interval=900)
    rows = []
    for k in range(3 * 96):
        t = DAY0 + timedelta(minutes=15 * k)
        night = 2 <= t.hour < 5
        rows.append(("in-n", "flow", t, (9.0 if t.day == 3 else 6.0) if night else 20.0))
    add_readings(conn, rows)
    run(conn, [record("water.mnf"), record("water.mnf_change")], DAY0 + timedelta(days=3))
    mnf = [
        (end.astimezone(TZ).strftime("%d %H:%M"), v)
        for _, _, end, v, _ in recorded(conn, "water.mnf")
    ]
    assert mnf == [("01 05:00", 6.0), ("02 05:00", 6.0), ("03 05:00", 9.0)]
    change = [
        (end.astimezone(TZ).day, round(v, 6))
        for _, _, end, v, _ in recorded(conn, "water.mnf_change")
    ]
    assert change == [(2, 0.0), (3, 50.0)]  # the first night has no nights before it


def test_occupancy_per_car_park_and_per_zone(conn: Conn) -> None:
    add_device(conn, "pk-a", "car_park", "Z", capacity=100)
    add_device(conn, "pk-b", "car_park", "Z", capacity=300)
    at = DAY0 + timedelta(hours=10)
    rows = []
    for k in range(12):
        t = at + timedelta(minutes=5 * k)
        rows += [("pk-a", "occupied", t, 90.0), ("pk-b", "occupied", t, 150.0)]
    add_readings(conn, rows)
    run(
        conn,
        [record("parking.occupancy"), record("parking.occupancy_zone")],
        at + timedelta(hours=1),
    )
    assert [(e, v) for e, _, _, v, _ in recorded(conn, "parking.occupancy")] == [
        ("pk-a", 90.0),
        ("pk-b", 50.0),
    ]
    [(zone, start, end, value, detail)] = recorded(conn, "parking.occupancy_zone")
    assert (zone, start, end, value) == ("Z", at, at + timedelta(hours=1), 60.0)  # 240 / 400
    assert detail["car_parks"] == 2


def _events(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT device_id, started_at, ended_at, peak_cm, peak_at, carriageway "
        "FROM ponding_events ORDER BY 1, 2"
    ).fetchall()


@pytest.mark.parametrize("steps", [[30], [2.5, 3.5, 11, 30]])
def test_ponding_events_have_start_end_and_peak_however_the_passes_fall(
    conn: Conn, steps: list[float]
) -> None:
    add_device(conn, "fl-p", "depth_gauge", "Z", interval=60, attributes={"carriageway": True})
    t0 = DAY0 + timedelta(hours=16)
    depths = [0, 10, 16, 20, 14, 0, 0, 0, 0, 0, 15, 18]
    add_readings(
        conn, [("fl-p", "depth", t0 + timedelta(minutes=i), float(v)) for i, v in enumerate(depths)]
    )
    for minutes in steps:
        run(conn, [record("flood.ponding_events")], t0 + timedelta(minutes=minutes), since=t0)

    def m(i: float) -> datetime:
        return t0 + timedelta(minutes=i)

    assert _events(conn) == [
        ("fl-p", m(2), m(4), 20.0, m(3), True),
        ("fl-p", m(10), None, 18.0, m(11), True),  # still ponding
    ]


def test_warning_levels_follow_how_long_the_rolling_aqi_stays_above_200(conn: Conn) -> None:
    hours = [250.0] * 50 + [150.0]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO recorded (series, entity, period_start, period_end, value) "
            "VALUES ('air.aqi_24h', 'aq-w', %s, %s, %s)",
            [
                (DAY0 + timedelta(hours=h - 24), DAY0 + timedelta(hours=h), v)
                for h, v in enumerate(hours, start=1)
            ],
        )
    conn.commit()
    warning = record("air.pollution_warning")
    # computed no further than the rolling AQI it reads: not at all before that has run
    run(conn, [warning], DAY0 + timedelta(hours=len(hours)))
    assert recorded(conn, "air.pollution_warning") == []
    conn.execute(
        "INSERT INTO rule_health (rule_id, watermark) VALUES ('air.aqi_24h', %s)",
        (DAY0 + timedelta(hours=len(hours)),),
    )
    conn.commit()
    run(conn, [warning], DAY0 + timedelta(hours=len(hours)))
    levels = {end: (v, d["en"]) for _, _, end, v, d in recorded(conn, "air.pollution_warning")}
    assert levels[DAY0 + timedelta(hours=23)] == (0.0, "none")
    assert levels[DAY0 + timedelta(hours=24)] == (1.0, "blue")
    assert levels[DAY0 + timedelta(hours=48)] == (2.0, "yellow (III)")
    assert levels[DAY0 + timedelta(hours=51)] == (0.0, "none")


def test_a_record_computes_each_period_once_and_keeps_its_watermark(conn: Conn) -> None:
    add_device(conn, "pk-a", "car_park", "Z", capacity=100)
    at = DAY0 + timedelta(hours=10)
    add_readings(conn, [("pk-a", "occupied", at, 50.0)])
    rec = record("parking.occupancy")
    run(conn, [rec], at + timedelta(hours=1))
    # a reading later than the allowed lateness does not rewrite an hour already recorded
    add_readings(conn, [("pk-a", "occupied", at + timedelta(minutes=30), 100.0)])
    run(conn, [rec], at + timedelta(hours=2))
    assert [v for *_, v, _ in recorded(conn, "parking.occupancy")] == [50.0]
    health = conn.execute(
        "SELECT watermark, evaluations FROM rule_health WHERE rule_id = 'parking.occupancy'"
    ).fetchone()
    assert health == (at + timedelta(hours=2), 1)
