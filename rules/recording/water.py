"""Water records: the CJJ 92-2016 water balance per DMA and district (R_WL, R_BL with the
corrections, day and month to date) and the minimum night flow with its change."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from rules.recording.common import Conn, Row, utc
from urbanpulse.rulefmt import periods
from urbanpulse.rulefmt.records import HOUR, NightFlowRecord, WaterBalanceRecord


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
        (utc(start), utc(end), rec.inlet_kinds),
    ).fetchall()


def _volume_at(conn: Conn, kinds: list[str], at: float) -> dict[str, tuple[str, float | None]]:
    """Each customer meter's volume index interpolated at `at` (None when not bracketed)."""
    rows = conn.execute(
        """
        SELECT d.device_id, d.zone, extract(epoch FROM b.ts)::float8, b.value,
               extract(epoch FROM a.ts)::float8, a.value
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
        {"at": utc(at), "kinds": kinds},
    ).fetchall()
    out: dict[str, tuple[str, float | None]] = {}
    for device, zone, t0, v0, t1, v1 in rows:
        value: float | None = None
        if t0 is not None and t1 is not None:
            if t1 == t0:
                value = float(v0)
            else:
                value = float(v0) + (float(v1) - float(v0)) * (at - float(t0)) / (
                    float(t1) - float(t0)
                )
        out[str(device)] = (str(zone), value)
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
    for device, (zone, v1) in after.items():
        b = out[zone]
        v0 = before.get(device, (zone, None))[1]
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
        (rec.days, utc(start), utc(end)),
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
        {"kinds": rec.inlet_kinds, "bin": rec.bin, "lo": utc(lo), "hi": utc(hi)},
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
            detail: dict[str, Any] = {"mnf_m3h": round(mnf, 4), "hour_start": utc(at).isoformat()}
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
