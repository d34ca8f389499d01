"""HJ 633-2012 AQI: the worked boundary cases of its tables, from the versioned data file."""

from __future__ import annotations

import pytest

from urbanpulse.rulefmt.aqi import compute, iaqi, load_standard

STD = load_standard()


@pytest.mark.parametrize(
    ("table", "concentration", "expected"),
    [
        # every breakpoint of PM2.5 maps exactly onto its index value
        ("pm25_24h", 0, 0),
        ("pm25_24h", 35, 50),
        ("pm25_24h", 75, 100),
        ("pm25_24h", 115, 150),
        ("pm25_24h", 150, 200),
        ("pm25_24h", 250, 300),
        ("pm25_24h", 350, 400),
        ("pm25_24h", 500, 500),
        # just above a breakpoint, IAQI is rounded up: 75.1 → 100.25 → 101
        ("pm25_24h", 75.1, 101),
        ("pm25_24h", 150.5, 201),
        # linear inside a segment: (150-100)/(115-75) × (95-75) + 100 = 125
        ("pm25_24h", 95, 125),
        ("pm10_24h", 150, 100),
        ("pm10_24h", 151, 101),
        ("pm10_24h", 350, 200),
        ("so2_24h", 50, 50),  # not 52 (a known transcription error)
        ("so2_1h", 150, 50),
        ("no2_1h", 200, 100),
        ("no2_24h", 80, 100),
        ("co_1h", 10, 100),  # mg/m³
        ("co_24h", 4, 100),
        ("co_24h", 24, 200),
        ("o3_1h", 200, 100),
        ("o3_8h", 160, 100),
        ("o3_8h", 265, 200),
        # beyond the top of a full table: capped at 500
        ("pm25_24h", 900, 500),
    ],
)
def test_iaqi_breakpoints(table: str, concentration: float, expected: int) -> None:
    assert iaqi(STD, table, concentration) == expected


def test_tables_that_stop_early_defer_as_the_standard_says() -> None:
    # SO2 1 h above 800 µg/m³: the IAQI comes from the 24 h mean
    assert iaqi(STD, "so2_1h", 800) == 200
    assert iaqi(STD, "so2_1h", 801, fallback=150) == 100
    assert iaqi(STD, "so2_1h", 801) is None  # no 24 h mean given: unknown, not a guess
    # O3 8 h above 800 µg/m³: from the 1 h concentration
    assert iaqi(STD, "o3_8h", 800) == 300
    assert iaqi(STD, "o3_8h", 850, fallback=1000) == 400


def test_bad_concentrations_have_no_index() -> None:
    assert iaqi(STD, "pm25_24h", -1) is None
    assert iaqi(STD, "pm25_24h", float("nan")) is None


@pytest.mark.parametrize(
    ("aqi", "level", "category", "colour"),
    [
        (0, "一级", "优", "#00E400"),
        (50, "一级", "优", "#00E400"),
        (51, "二级", "良", "#FFFF00"),
        (100, "二级", "良", "#FFFF00"),
        (101, "三级", "轻度污染", "#FF7E00"),
        (150, "三级", "轻度污染", "#FF7E00"),
        (151, "四级", "中度污染", "#FF0000"),
        (200, "四级", "中度污染", "#FF0000"),
        (201, "五级", "重度污染", "#99004C"),
        (300, "五级", "重度污染", "#99004C"),
        (301, "六级", "严重污染", "#7E0023"),
        (500, "六级", "严重污染", "#7E0023"),
    ],
)
def test_levels_categories_and_colours(aqi: int, level: str, category: str, colour: str) -> None:
    lv = STD.level_of(aqi)
    assert (lv.level, lv.category, lv.colour) == (level, category, colour)


def test_hourly_aqi_primary_and_exceeding_pollutants() -> None:
    # CO in mg/m³, the others in µg/m³ — what ingest stores
    got = compute(STD, {"pm25": 180, "pm10": 260, "so2": 10, "no2": 60, "co": 1.2, "o3": 40})
    assert got.iaqi == {"pm25": 230, "pm10": 155, "so2": 4, "no2": 30, "co": 12, "o3": 13}
    assert got.aqi == 230 and got.primary == ("pm25",) and got.exceeding == ("pm10", "pm25")
    assert got.level is not None and got.level.category == "重度污染"
    # a tie names both; at AQI ≤ 50 there is no primary pollutant
    tie = compute(STD, {"pm25": 75, "pm10": 150})
    assert tie.aqi == 100 and tie.primary == ("pm10", "pm25") and tie.exceeding == ()
    clean = compute(STD, {"pm25": 20, "o3": 80})
    assert clean.aqi == 29 and clean.primary == ()


def test_daily_report_uses_24h_tables_and_o3_8h() -> None:
    hourly = compute(STD, {"so2": 400}, "hourly")
    daily = compute(STD, {"so2": 400}, "daily")
    # 1 h table: 50 + (100 - 50) / (500 - 150) × (400 - 150) = 85.7 → 86; 24 h: 138.5 → 139
    assert hourly.iaqi["so2"] == 86 and daily.iaqi["so2"] == 139
    assert compute(STD, {"o3": 180}, "daily").iaqi["o3"] == 119  # 8 h table
    assert compute(STD, {}).aqi is None
