"""Parking occupancy per car park and zone, and ponding events per flood point."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rules.recording.common import Conn, Row, devices_of, utc
from urbanpulse.rulefmt.records import OccupancyRecord, PondingRecord


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
            "lo": utc(min(ends) - rec.period),
            "hi": utc(max(ends)),
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
    gauges = devices_of(conn, rec.kinds)
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
        ([g for g, _, _ in gauges], utc(after), utc(upto)),
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
            utc(started),
            utc(ended) if ended is not None else None,
            utc(last),
            peak,
            utc(peak_at),
            rec.threshold_cm,
            info[0],
            info[1],
        ),
    )
    return 1
