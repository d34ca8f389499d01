"""Air records: HJ 633-2012 AQI (hourly, rolling 24 h, daily; stations and the city) and the
heavy-pollution warning level reached."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from rules.recording.common import Conn, Row, devices_of, utc
from urbanpulse.rulefmt import aqi as hj633
from urbanpulse.rulefmt import periods
from urbanpulse.rulefmt.records import CITY, HOUR, AqiRecord, WarningLevel, WarningRecord

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
        (stations, list(hj633.POLLUTANTS), utc(lo), utc(hi)),
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
    stations = [d for d, _, _ in devices_of(conn, rec.kinds)]
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
        (rec.aqi, utc(lo), utc(max(ends))),
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
