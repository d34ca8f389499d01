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

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rules import aqi as hj633
from rules import periods
from urbanpulse.durations import Duration

HOUR = 3600.0
CITY = "全区"  # the whole district, beside each station, DMA or car park
ID_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecordTitle(_Strict):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class _Record(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    title: RecordTitle
    unit: str = ""
    source: str = Field("", description="the clause or standard the computation follows")
    # how long after a period ends to wait for slow meters before computing it once
    delay: Duration = Field(0.0, ge=0)


class AqiRecord(_Record):
    kind: Literal["aqi"]
    report: Literal["hourly", "rolling_24h", "daily"]
    standard: str = "hj633-2012"
    kinds: list[str] = Field(default_factory=lambda: ["aq_station"])
    # also the whole city (全区), from the stations' mean concentrations
    city: bool = False
    # GB 3095-2012 §7 data validity: a 24 h mean needs 20 hourly means, an 8 h mean 6
    min_hours_24h: int = Field(20, ge=1, le=24)
    min_hours_8h: int = Field(6, ge=1, le=8)

    @field_validator("standard")
    @classmethod
    def _known_standard(cls, value: str) -> str:
        known = hj633.standards()
        if value not in known:
            raise ValueError(f"no AQI standard {value!r} in rules/standards ({', '.join(known)})")
        return value


class WarningLevel(_Strict):
    value: int = Field(ge=1)
    zh: str
    en: str
    above_200_h: float = Field(0, ge=0)  # hours in a row of rolling 24 h AQI > 200
    above_300_h: float = Field(0, ge=0)  # of which with AQI > 300
    reaches: float | None = None  # or: AQI at or above this, at once


class WarningRecord(_Record):
    kind: Literal["pollution_warning"]
    aqi: str = Field(pattern=ID_PATTERN)  # the rolling 24 h AQI record it reads
    levels: list[WarningLevel] = Field(min_length=1)


class Corrections(_Strict):
    """CJJ 92-2016 (2018 revision) §5.3 corrections of the leakage rate, in the DMA's terms."""

    residential_share: float = Field(0.0, ge=0, le=1)  # r: household-metered residential share
    pipe_length_km: float | None = Field(None, ge=0)  # L: pipes DN75 and larger (None: no R2)
    outlet_pressure_mpa: float | None = Field(None, ge=0)  # annual mean (None: no R3)
    frost_depth_m: float = Field(0.0, ge=0)

    def terms(self, supply_m3_per_year: float) -> dict[str, float]:
        """R1..R4 in percentage points."""
        r1 = 0.08 * self.residential_share * 100
        r2 = 0.0
        if self.pipe_length_km is not None and supply_m3_per_year > 0:
            a = self.pipe_length_km / (supply_m3_per_year / 10000)  # km per 10⁴ m³
            r2 = min(3.0, max(-3.0, 0.99 * (a - 0.0693) * 100))
        p = self.outlet_pressure_mpa
        r3 = 0.0 if p is None or p <= 0.35 else 0.5 if p <= 0.55 else 1.0 if p <= 0.75 else 2.0
        r4 = 1.0 if self.frost_depth_m > 1.4 else 0.0
        return {"r1": r1, "r2": r2, "r3": r3, "r4": r4}


class WaterBalanceRecord(_Record):
    kind: Literal["water_balance"]
    period: Literal["day", "month"]
    value: Literal["gross", "assessed"]  # R_WL or R_BL
    inlet_kinds: list[str] = Field(default_factory=lambda: ["inlet_meter"])
    customer_kinds: list[str] = Field(default_factory=lambda: ["customer_meter"])
    district_attribute: str | None = "district"
    corrections: Corrections = Corrections()
    zones: dict[str, Corrections] = Field(default_factory=dict)  # per-DMA corrections
    min_coverage: float = Field(0.9, gt=0, le=1)
    days: str | None = Field(None, pattern=ID_PATTERN)  # month: the day record it sums

    @model_validator(mode="after")
    def _month_sums_days(self) -> WaterBalanceRecord:
        if (self.period == "month") != (self.days is not None):
            raise ValueError("a month record sums a day record: give `days` for months only")
        return self

    def corrections_of(self, zone: str) -> Corrections:
        return self.zones.get(zone, self.corrections)


class NightFlowRecord(_Record):
    kind: Literal["night_flow"]
    value: Literal["mnf", "change_pct"]
    start: time = time(2, 0)
    end: time = time(5, 0)
    bin: Duration = Field(900.0, gt=0)
    moving: Duration = Field(3600.0, gt=0)
    baseline_days: int = Field(7, ge=1, le=60)
    min_baseline_days: int = Field(1, ge=1)
    inlet_kinds: list[str] = Field(default_factory=lambda: ["inlet_meter"])

    @model_validator(mode="after")
    def _window(self) -> NightFlowRecord:
        if self.end <= self.start:
            raise ValueError("end must be after start (the night window lies within one day)")
        if self.moving < self.bin or self.moving % self.bin:
            raise ValueError("moving must be a whole number of bins")
        if HOUR % self.bin or (self.start.minute * 60) % self.bin:
            raise ValueError("bin must divide an hour and start must fall on a bin")
        if self.min_baseline_days > self.baseline_days:
            raise ValueError("min_baseline_days must not exceed baseline_days")
        return self

    @property
    def window_s(self) -> float:
        return float(
            (self.end.hour - self.start.hour) * 3600 + (self.end.minute - self.start.minute) * 60
        )


class OccupancyRecord(_Record):
    kind: Literal["occupancy"]
    by: Literal["car_park", "zone"]
    period: Duration = Field(3600.0, gt=0)
    kinds: list[str] = Field(default_factory=lambda: ["car_park"])

    @field_validator("period")
    @classmethod
    def _divides_an_hour(cls, value: float) -> float:
        if value > HOUR or HOUR % value:
            raise ValueError("period must divide an hour (e.g. 15m, 30m, 1h)")
        return value


class PondingRecord(_Record):
    """Not a series: writes the table ponding_events."""

    kind: Literal["ponding_events"]
    threshold_cm: float = Field(15.0, gt=0)
    kinds: list[str] = Field(default_factory=lambda: ["depth_gauge"])


Record = Annotated[
    AqiRecord
    | WarningRecord
    | WaterBalanceRecord
    | NightFlowRecord
    | OccupancyRecord
    | PondingRecord,
    Field(discriminator="kind"),
]


@dataclass(frozen=True, slots=True)
class Row:
    series: str
    entity: str
    start: float
    end: float
    value: float
    detail: dict[str, Any] = field(default_factory=dict)


Conn = psycopg.Connection[Any]


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _devices(conn: Conn, kinds: list[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT device_id, zone, attributes FROM devices WHERE kind = ANY(%s) ORDER BY device_id",
        (kinds,),
    ).fetchall()
    return [(str(d), z, dict(a)) for d, z, a in rows]


# --- AQI -----------------------------------------------------------------------------------

Hourly = dict[tuple[str, str], dict[float, float]]  # (station, pollutant) → hour start → mean


def _hourly_means(conn: Conn, stations: list[str], lo: float, hi: float) -> Hourly:
    rows = conn.execute(
        """
        SELECT device_id, metric,
               extract(epoch FROM date_bin('1 hour', ts, timestamptz 'epoch'))::float8, avg(value)
          FROM readings
         WHERE device_id = ANY(%s) AND metric = ANY(%s) AND ts >= %s AND ts < %s
         GROUP BY 1, 2, 3
        """,
        (stations, list(hj633.POLLUTANTS), _ts(lo), _ts(hi)),
    ).fetchall()
    out: Hourly = defaultdict(dict)
    for device, metric, hour, mean in rows:
        out[(str(device), str(metric))][float(hour)] = float(mean)
    return out


def _mean_over(values: dict[float, float], lo: float, hi: float, need: int) -> float | None:
    got = [v for h, v in values.items() if lo <= h < hi]
    return sum(got) / len(got) if len(got) >= need else None


def _max_8h(values: dict[float, float], lo: float, hi: float, need: int) -> float | None:
    """The largest 8 h moving mean whose hours all lie in [lo, hi)."""
    best: float | None = None
    end = lo + 8 * HOUR
    while end <= hi:
        m = _mean_over(values, end - 8 * HOUR, end, need)
        if m is not None and (best is None or m > best):
            best = m
        end += HOUR
    return best


@dataclass(frozen=True, slots=True)
class _AqiInputs:
    conc: dict[str, float]
    fallbacks: dict[str, float]
    report: hj633.Report
    hours: int


def _aqi_inputs(
    rec: AqiRecord, series: dict[str, dict[float, float]], start: float, end: float
) -> _AqiInputs:
    """The concentrations (and fallback concentrations) a report of [start, end) is made of."""
    if rec.report == "hourly":
        conc = {p: v[start] for p, v in series.items() if start in v}
        so2_24h = _mean_over(series["so2"], end - 24 * HOUR, end, rec.min_hours_24h)
        return _AqiInputs(conc, {} if so2_24h is None else {"so2": so2_24h}, "hourly", 1)
    conc = {}
    for p in ("so2", "no2", "pm10", "co", "pm25"):
        m = _mean_over(series[p], start, end, rec.min_hours_24h)
        if m is not None:
            conc[p] = m
    o3_8h = _max_8h(series["o3"], start, end, rec.min_hours_8h)
    if o3_8h is not None:
        conc["o3"] = o3_8h
    o3_1h = [v for h, v in series["o3"].items() if start <= h < end]
    hours = len([h for h in series["pm25"] if start <= h < end])
    return _AqiInputs(conc, {"o3": max(o3_1h)} if o3_1h else {}, "daily", hours)


def _aqi_row(
    rec: AqiRecord,
    std: hj633.AqiStandard,
    station: str,
    span: tuple[float, float],
    inputs: _AqiInputs,
) -> Row | None:
    result = hj633.compute(std, inputs.conc, inputs.report, inputs.fallbacks)
    if result.aqi is None or result.level is None:
        return None
    detail = {
        "iaqi": result.iaqi,
        "primary": list(result.primary),
        "exceeding": list(result.exceeding),
        "level": result.level.level,
        "category": result.level.category,
        "category_en": result.level.en,
        "colour": result.level.colour,
        "concentrations": {p: round(c, 3) for p, c in inputs.conc.items()},
        "standard": f"{std.standard} v{std.version}",
        "hours": inputs.hours,
    }
    return Row(rec.id, station, span[0], span[1], float(result.aqi), detail)


def record_aqi(conn: Conn, rec: AqiRecord, ends: list[float], tz: ZoneInfo) -> list[Row]:
    std = hj633.load_standard(rec.standard)
    stations = [d for d, _, _ in _devices(conn, rec.kinds)]
    if not stations or not ends:
        return []
    spans = [_span(rec, e, tz) for e in ends]
    hourly = _hourly_means(conn, stations, min(s for s, _ in spans) - 24 * HOUR, max(ends))
    rows: list[Row] = []
    for span in spans:
        inputs = []
        for st in stations:
            series = {p: hourly.get((st, p), {}) for p in hj633.POLLUTANTS}
            got = _aqi_inputs(rec, series, *span)
            inputs.append(got)
            row = _aqi_row(rec, std, st, span, got)
            if row is not None:
                rows.append(row)
        if rec.city:
            row = _aqi_row(rec, std, CITY, span, _city_inputs(inputs))
            if row is not None:
                rows.append(row)
    return rows


def _city_inputs(stations: list[_AqiInputs]) -> _AqiInputs:
    """The city's concentrations: each pollutant's mean over the stations that measured it
    (HJ 633 assesses a city by its stations' mean concentrations, not by their mean AQI)."""

    def mean(values: list[dict[str, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in hj633.POLLUTANTS:
            got = [v[p] for v in values if p in v]
            if got:
                out[p] = sum(got) / len(got)
        return out

    report = stations[0].report if stations else "daily"
    return _AqiInputs(
        mean([s.conc for s in stations]),
        mean([s.fallbacks for s in stations]),
        report,
        max((s.hours for s in stations), default=0),
    )


def _span(rec: AqiRecord, end: float, tz: ZoneInfo) -> tuple[float, float]:
    if rec.report == "hourly":
        return end - HOUR, end
    if rec.report == "rolling_24h":
        return end - 24 * HOUR, end
    return periods.previous_midnight(end, tz), end


def _reached(lv: WarningLevel, above_200: int, above_300: int, aqi: float) -> bool:
    if lv.reaches is not None and aqi >= lv.reaches:
        return True
    timed = lv.above_200_h > 0 or lv.above_300_h > 0
    return timed and above_200 >= lv.above_200_h and above_300 >= lv.above_300_h


def record_warning(conn: Conn, rec: WarningRecord, ends: list[float]) -> list[Row]:
    if not ends:
        return []
    longest = max(max(lv.above_200_h, lv.above_300_h) for lv in rec.levels)
    lo = min(ends) - (longest + 2) * HOUR
    rows = conn.execute(
        """
        SELECT entity, extract(epoch FROM period_end)::float8, value FROM recorded
         WHERE series = %s AND period_end > %s AND period_end <= %s ORDER BY entity, period_end
        """,
        (rec.aqi, _ts(lo), _ts(max(ends))),
    ).fetchall()
    by_station: dict[str, dict[float, float]] = defaultdict(dict)
    for entity, end, value in rows:
        by_station[str(entity)][float(end)] = float(value)
    out: list[Row] = []
    for station, values in sorted(by_station.items()):
        for end in ends:
            if end not in values:
                continue
            above_200 = above_300 = 0
            t = end
            while values.get(t, 0.0) > 200:  # hours in a row up to `end`
                above_200 += 1
                above_300 += values[t] > 300
                t -= HOUR
            reached = [lv for lv in rec.levels if _reached(lv, above_200, above_300, values[end])]
            top = max(reached, key=lambda lv: lv.value) if reached else None
            detail = {
                "above_200_h": above_200,
                "above_300_h": above_300,
                "aqi": values[end],
                "zh": top.zh if top else "无预警",
                "en": top.en if top else "none",
            }
            out.append(
                Row(rec.id, station, end - HOUR, end, float(top.value if top else 0), detail)
            )
    return out


# --- Water balance (CJJ 92) ------------------------------------------------------------------


@dataclass
class _Balance:
    inflow: float = 0.0
    consumption: float = 0.0
    inlet_coverage: float = 1.0
    customers: int = 0
    customers_missing: int = 0
    inlets: int = 0

    @property
    def complete(self) -> bool:
        return self.inlets > 0 and self.customers > 0


def _inflows(
    conn: Conn, rec: WaterBalanceRecord, start: float, end: float
) -> list[tuple[Any, ...]]:
    """Each inlet's zone, reporting interval, mean flow (m³/h) and readings over [start, end)."""
    return conn.execute(
        """
        SELECT d.zone, d.report_interval_s, avg(r.value), count(r.value)
          FROM devices d
          LEFT JOIN readings r ON r.device_id = d.device_id AND r.metric = 'flow'
                              AND r.ts >= %s AND r.ts < %s
         WHERE d.kind = ANY(%s) AND d.zone IS NOT NULL
         GROUP BY d.device_id, d.zone, d.report_interval_s
        """,
        (_ts(start), _ts(end), rec.inlet_kinds),
    ).fetchall()


def _volume_at(
    conn: Conn, kinds: list[str], at: float
) -> dict[str, tuple[str, str | None, float | None]]:
    """Each customer meter's volume index interpolated at `at` (None when not bracketed)."""
    rows = conn.execute(
        """
        SELECT d.device_id, d.zone, d.attributes ->> 'district',
               extract(epoch FROM b.ts)::float8, b.value, extract(epoch FROM a.ts)::float8, a.value
          FROM devices d
          LEFT JOIN LATERAL (
                SELECT ts, value FROM readings r
                 WHERE r.device_id = d.device_id AND r.metric = 'volume'
                   AND r.ts <= %(at)s AND r.ts > %(at)s - interval '2 days'
                 ORDER BY ts DESC LIMIT 1) b ON true
          LEFT JOIN LATERAL (
                SELECT ts, value FROM readings r
                 WHERE r.device_id = d.device_id AND r.metric = 'volume'
                   AND r.ts >= %(at)s AND r.ts < %(at)s + interval '2 days'
                 ORDER BY ts LIMIT 1) a ON true
         WHERE d.kind = ANY(%(kinds)s) AND d.zone IS NOT NULL
        """,
        {"at": _ts(at), "kinds": kinds},
    ).fetchall()
    out: dict[str, tuple[str, str | None, float | None]] = {}
    for device, zone, _district, t0, v0, t1, v1 in rows:
        value: float | None = None
        if t0 is not None and t1 is not None:
            if t1 == t0:
                value = float(v0)
            else:
                value = float(v0) + (float(v1) - float(v0)) * (at - float(t0)) / (
                    float(t1) - float(t0)
                )
        out[str(device)] = (str(zone), _district, value)
    return out


def _districts(conn: Conn, rec: WaterBalanceRecord) -> dict[str, str]:
    """DMA zone → district (from its inlets' attributes)."""
    if rec.district_attribute is None:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT zone, attributes ->> %s FROM devices "
        "WHERE kind = ANY(%s) AND zone IS NOT NULL AND attributes ? %s",
        (rec.district_attribute, rec.inlet_kinds, rec.district_attribute),
    ).fetchall()
    return {str(z): str(d) for z, d in rows}


def water_balance(
    conn: Conn, rec: WaterBalanceRecord, start: float, end: float
) -> dict[str, _Balance]:
    """Each DMA's inflow and customer consumption (m³) over [start, end)."""
    out: dict[str, _Balance] = defaultdict(_Balance)
    hours = (end - start) / HOUR
    for zone, interval, mean, n in _inflows(conn, rec, start, end):
        b = out[str(zone)]
        b.inlets += 1
        expected = (end - start) / float(interval)
        b.inlet_coverage = min(b.inlet_coverage, float(n) / expected if expected else 0.0)
        if mean is not None:
            b.inflow += float(mean) * hours
    before = _volume_at(conn, rec.customer_kinds, start)
    after = _volume_at(conn, rec.customer_kinds, end)
    for device, (zone, _district, v1) in after.items():
        b = out[zone]
        v0 = before.get(device, (zone, None, None))[2]
        if v0 is None or v1 is None or v1 < v0:  # not bracketed, or a replaced/rolled meter
            b.customers_missing += 1
            continue
        b.customers += 1
        b.consumption += v1 - v0
    return out


def _daily_sums(
    conn: Conn, rec: WaterBalanceRecord, start: float, end: float
) -> dict[str, tuple[float, float, int]]:
    """DMA zone → (Σ inflow, Σ consumption, days) over the days of `rec.days` in [start, end)."""
    rows = conn.execute(
        """
        SELECT entity, sum((detail ->> 'inflow_m3')::float8),
               sum((detail ->> 'consumption_m3')::float8), count(*)
          FROM recorded
         WHERE series = %s AND detail ->> 'level' = 'dma'
           AND period_start >= %s AND period_end <= %s
         GROUP BY entity
        """,
        (rec.days, _ts(start), _ts(end)),
    ).fetchall()
    return {str(z): (float(qs), float(qa), int(n)) for z, qs, qa, n in rows}


def record_water_balance(
    conn: Conn, rec: WaterBalanceRecord, ends: list[float], tz: ZoneInfo
) -> list[Row]:
    """A day's balance from the meters; a month's (to date) as the sum of its recorded days,
    so that a month with missing days still compares inflow and use over the same days."""
    rows: list[Row] = []
    districts = _districts(conn, rec)
    for end in ends:
        day = periods.previous_midnight(end, tz)
        start = day if rec.period == "day" else periods.month_start(day, tz)
        sums: dict[str, tuple[float, float, dict[str, Any]]] = {}  # zone → Q_s, Q_a, detail
        if rec.period == "month":
            for zone, (q_s, q_a, days) in _daily_sums(conn, rec, start, end).items():
                sums[zone] = (q_s, q_a, {"days": days})
        else:
            for zone, b in sorted(water_balance(conn, rec, start, end).items()):
                coverage = b.customers / max(1, b.customers + b.customers_missing)
                if not b.complete or b.inflow <= 0:
                    continue
                if b.inlet_coverage < rec.min_coverage or coverage < rec.min_coverage:
                    continue
                sums[zone] = (
                    b.inflow,
                    b.consumption,
                    {
                        "customers": b.customers,
                        "customers_missing": b.customers_missing,
                        "inlet_coverage": round(b.inlet_coverage, 3),
                    },
                )
        rows.extend(_rates(rec, sums, districts, start, end))
    return rows


def _rates(
    rec: WaterBalanceRecord,
    sums: dict[str, tuple[float, float, dict[str, Any]]],
    districts: dict[str, str],
    start: float,
    end: float,
) -> list[Row]:
    """R_WL and R_BL per DMA, and per district (the supply-weighted R_BL of CJJ 92 5.3.3)."""
    rows: list[Row] = []
    ok: dict[str, tuple[float, float, float]] = {}  # zone → (Q_s, Q_a, R_BL)
    for zone, (q_s, q_a, extra) in sorted(sums.items()):
        if q_s <= 0:
            continue
        days = float(extra.get("days", 1)) if rec.period == "month" else 1.0
        r_wl = (q_s - q_a) / q_s * 100
        terms = rec.corrections_of(zone).terms(q_s * 365 / days)
        r_bl = r_wl - sum(terms.values())
        ok[zone] = (q_s, q_a, r_bl)
        detail = {
            "level": "dma",
            "inflow_m3": round(q_s, 3),
            "consumption_m3": round(q_a, 3),
            "loss_m3": round(q_s - q_a, 3),
            "r_wl": round(r_wl, 3),
            "r_bl": round(r_bl, 3),
            **{k: round(v, 3) for k, v in terms.items()},
            **extra,
        }
        rows.append(Row(rec.id, zone, start, end, r_wl if rec.value == "gross" else r_bl, detail))
    by_district: dict[str, list[str]] = defaultdict(list)
    for zone, district in districts.items():
        by_district[district].append(zone)
    for district, zones in sorted(by_district.items()):
        if not all(z in ok for z in zones):
            continue  # a district's rate needs every one of its DMAs
        q_s = sum(ok[z][0] for z in zones)
        q_a = sum(ok[z][1] for z in zones)
        r_wl = (q_s - q_a) / q_s * 100
        r_bl = sum(ok[z][2] * ok[z][0] for z in zones) / q_s
        detail = {
            "level": "district",
            "dmas": sorted(zones),
            "inflow_m3": round(q_s, 3),
            "consumption_m3": round(q_a, 3),
            "loss_m3": round(q_s - q_a, 3),
            "r_wl": round(r_wl, 3),
            "r_bl": round(r_bl, 3),
        }
        value = r_wl if rec.value == "gross" else r_bl
        rows.append(Row(rec.id, district, start, end, value, detail))
    return rows


# --- Minimum night flow --------------------------------------------------------------------


def _night_flows(
    conn: Conn, rec: NightFlowRecord, lo: float, hi: float
) -> dict[str, dict[float, float]]:
    """DMA zone → bin start → sum of the DMA's inlets' mean flow (m³/h), bins where every inlet
    of the DMA reported."""
    rows = conn.execute(
        """
        WITH inlets AS (SELECT device_id, zone FROM devices WHERE kind = ANY(%(kinds)s)
                                                             AND zone IS NOT NULL),
        bins AS (
            SELECT i.zone, r.device_id,
                   extract(epoch FROM date_bin(make_interval(secs => %(bin)s), r.ts,
                                               timestamptz 'epoch'))::float8 AS b,
                   avg(r.value) AS q
              FROM readings r JOIN inlets i USING (device_id)
             WHERE r.metric = 'flow' AND r.ts >= %(lo)s AND r.ts < %(hi)s
             GROUP BY 1, 2, 3)
        SELECT b.zone, b.b, sum(b.q), count(*),
               (SELECT count(*) FROM inlets i WHERE i.zone = b.zone)
          FROM bins b GROUP BY 1, 2
        """,
        {"kinds": rec.inlet_kinds, "bin": rec.bin, "lo": _ts(lo), "hi": _ts(hi)},
    ).fetchall()
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for zone, b, total, n, inlets in rows:
        if int(n) == int(inlets):
            out[str(zone)][float(b)] = float(total)
    return out


def _mnf(
    bins: dict[float, float], rec: NightFlowRecord, start: float, end: float
) -> tuple[float, float] | None:
    """(minimum night flow, start of its hour) from the bins in [start, end)."""
    width = round(rec.moving / rec.bin)
    best: tuple[float, float] | None = None
    t = start
    while t + rec.moving <= end:
        window = [bins.get(t + k * rec.bin) for k in range(width)]
        if all(v is not None for v in window):
            mean = sum(v for v in window if v is not None) / width
            if best is None or mean < best[0]:
                best = (mean, t)
        t += rec.bin
    return best


def record_night_flow(
    conn: Conn, rec: NightFlowRecord, ends: list[float], tz: ZoneInfo
) -> list[Row]:
    if not ends:
        return []
    lo = min(ends) - rec.baseline_days * periods.DAY - rec.window_s
    flows = _night_flows(conn, rec, lo, max(ends))
    rows: list[Row] = []
    for end in ends:
        start = end - rec.window_s
        for zone, bins in sorted(flows.items()):
            got = _mnf(bins, rec, start, end)
            if got is None:
                continue
            mnf, at = got
            before = [
                m[0]
                for k in range(1, rec.baseline_days + 1)
                if (m := _mnf(bins, rec, start - k * periods.DAY, end - k * periods.DAY))
            ]
            detail: dict[str, Any] = {"mnf_m3h": round(mnf, 4), "hour_start": _ts(at).isoformat()}
            baseline = statistics.median(before) if len(before) >= rec.min_baseline_days else None
            if baseline is not None:
                detail.update(
                    baseline_m3h=round(baseline, 4),
                    baseline_nights=len(before),
                    change_m3h=round(mnf - baseline, 4),
                    change_pct=round((mnf - baseline) / baseline * 100, 2) if baseline else None,
                )
            if rec.value == "mnf":
                rows.append(Row(rec.id, zone, start, end, mnf, detail))
            elif baseline:
                rows.append(
                    Row(rec.id, zone, start, end, (mnf - baseline) / baseline * 100, detail)
                )
    return rows


# --- Parking occupancy ---------------------------------------------------------------------


def record_occupancy(conn: Conn, rec: OccupancyRecord, ends: list[float]) -> list[Row]:
    if not ends:
        return []
    rows = conn.execute(
        """
        SELECT d.device_id, d.zone, d.capacity,
               extract(epoch FROM date_bin(make_interval(secs => %(p)s), r.ts,
                                           timestamptz 'epoch'))::float8 AS b,
               avg(r.value) FILTER (WHERE r.metric = 'occupied'),
               max(r.value) FILTER (WHERE r.metric = 'occupied'),
               count(r.value) FILTER (WHERE r.metric = 'occupied'),
               avg(r.value) FILTER (WHERE r.metric = 'capacity')
          FROM devices d JOIN readings r ON r.device_id = d.device_id
         WHERE d.kind = ANY(%(kinds)s) AND r.metric IN ('occupied', 'capacity')
           AND r.ts >= %(lo)s AND r.ts < %(hi)s
         GROUP BY 1, 2, 3, 4
        """,
        {
            "p": rec.period,
            "kinds": rec.kinds,
            "lo": _ts(min(ends) - rec.period),
            "hi": _ts(max(ends)),
        },
    ).fetchall()
    wanted = set(ends)
    zones: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    out: list[Row] = []
    for device, zone, declared, b, occ, peak, n, cap_reading in rows:
        end = float(b) + rec.period
        # the counted capacity when the car park reports it (closures), else the declared one
        capacity = float(cap_reading) if cap_reading else (float(declared) if declared else 0.0)
        if end not in wanted or occ is None or capacity <= 0:
            continue
        if rec.by == "car_park":
            detail = {
                "occupied_mean": round(float(occ), 2),
                "occupied_max": float(peak),
                "capacity": capacity,
                "samples": int(n),
                "zone": zone,
            }
            out.append(Row(rec.id, str(device), float(b), end, float(occ) / capacity * 100, detail))
        elif zone is not None:
            acc = zones[(str(zone), end)]
            acc[0] += float(occ)
            acc[1] += capacity
            acc[2] += 1
    for (zone, end), (occ, cap, n) in sorted(zones.items()):
        detail = {"occupied_mean": round(occ, 2), "capacity": cap, "car_parks": int(n)}
        out.append(Row(rec.id, zone, end - rec.period, end, occ / cap * 100, detail))
    return out


# --- Ponding events ------------------------------------------------------------------------


def record_ponding(conn: Conn, rec: PondingRecord, after: float, upto: float) -> int:
    """Extend, close and open ponding events with the readings in (after, upto]; returns the
    number of events touched. An ongoing event carries on from its last reading."""
    gauges = _devices(conn, rec.kinds)
    if not gauges or upto <= after:
        return 0
    open_events = {
        str(d): (s, float(last), float(peak), p)
        for d, s, last, peak, p in conn.execute(
            "SELECT device_id, started_at, extract(epoch FROM last_at)::float8, peak_cm, peak_at "
            "FROM ponding_events WHERE ended_at IS NULL AND device_id = ANY(%s)",
            ([g for g, _, _ in gauges],),
        ).fetchall()
    }
    readings = conn.execute(
        """
        SELECT device_id, extract(epoch FROM ts)::float8, value FROM readings
         WHERE metric = 'depth' AND device_id = ANY(%s) AND ts > %s AND ts <= %s
         ORDER BY device_id, ts
        """,
        ([g for g, _, _ in gauges], _ts(after), _ts(upto)),
    ).fetchall()
    by_device: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for device, t, v in readings:
        by_device[str(device)].append((float(t), float(v)))
    info = {g: (z, bool(a.get("carriageway", False))) for g, z, a in gauges}
    touched = 0
    for device, points in by_device.items():
        current = open_events.get(device)
        event: list[Any] | None = None  # [started, last, peak, peak_at, ended]
        if current is not None:
            started, last, peak, peak_at = current
            event = [started.timestamp(), last, peak, peak_at.timestamp(), None]
        for t, v in points:
            if event is not None and event[4] is None and t <= event[1]:
                continue  # already folded into the ongoing event
            if v >= rec.threshold_cm:
                if event is None or event[4] is not None:
                    if event is not None:
                        touched += _save_event(conn, rec, device, event, info[device])
                    event = [t, t, v, t, None]
                else:
                    event[1] = t
                    if v > event[2]:
                        event[2], event[3] = v, t
            elif event is not None and event[4] is None:
                event[4] = t
        if event is not None:
            touched += _save_event(conn, rec, device, event, info[device])
    return touched


def _save_event(
    conn: Conn, rec: PondingRecord, device: str, event: list[Any], info: tuple[str | None, bool]
) -> int:
    started, last, peak, peak_at, ended = event
    conn.execute(
        """
        INSERT INTO ponding_events (device_id, started_at, ended_at, last_at, peak_cm, peak_at,
                                    threshold_cm, zone, carriageway)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (device_id, started_at) DO UPDATE
           SET ended_at = EXCLUDED.ended_at, last_at = EXCLUDED.last_at,
               peak_cm = EXCLUDED.peak_cm, peak_at = EXCLUDED.peak_at
        """,
        (
            device,
            _ts(started),
            _ts(ended) if ended is not None else None,
            _ts(last),
            peak,
            _ts(peak_at),
            rec.threshold_cm,
            info[0],
            info[1],
        ),
    )
    return 1


# --- Dispatch ------------------------------------------------------------------------------


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
            (r.series, r.entity, _ts(r.start), _ts(r.end), r.value, Jsonb(r.detail)) for r in rows
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
