"""Grafana dashboards generated from the rule files, the metric registry and the AQI standard.

`urbanpulse grafana build` writes deploy/grafana/dashboards/*.json: the thresholds, colour
bands and target lines of every panel come from the rules that raise the alerts (the 15 cm of
flood.ponding_15cm, the 10 % of water.leakage_daily, the HJ 633 colours…), so a rule change
shows on the dashboards after a rebuild, and nobody edits a threshold by hand.

Queries use Grafana's PostgreSQL macros ($__timeFilter, $__timeGroupAlias, $__interval) and
template variables, so they run on TimescaleDB and on plain PostgreSQL alike; `expand()` does
what Grafana does to them, for tests and for operators checking a query in psql.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from urbanpulse.rulefmt import aqi as hj633
from urbanpulse.rulefmt.model import Rule, RuleSet

DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "urbanpulse-postgres"}
SCHEMA_VERSION = 39
FOLDER = "UrbanPulse"


@dataclass(frozen=True)
class Panel:
    title: str
    sql: str
    kind: str = "timeseries"  # timeseries | table | stat | geomap | barchart
    fmt: str = "time_series"  # time_series | table
    unit: str = ""
    steps: list[tuple[float | None, str]] = field(default_factory=list)  # thresholds
    description: str = ""
    expect_rows: bool = True  # a seeded demo database shows something here
    width: int = 12
    height: int = 8


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    sql: str


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    panels: list[Panel]
    variables: list[Variable] = field(default_factory=list)
    domain: str | None = None  # alerts of this domain become annotations
    tags: list[str] = field(default_factory=list)


def _rule(rules: dict[str, Rule], rule_id: str) -> Rule:
    if rule_id not in rules:
        raise KeyError(f"the dashboards read rule {rule_id!r}: it is not in the rule files")
    return rules[rule_id]


def _line(rule: Rule) -> list[tuple[float | None, str]]:
    """Green below the rule's threshold, orange from its clear level, red from the threshold."""
    cond = rule.condition
    assert cond is not None
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if cond.clear is not None and cond.clear != cond.value:
        steps.append((cond.clear, "orange"))
    steps.append((cond.value, "red"))
    return steps


def _aqi_bands(std: hj633.AqiStandard) -> list[tuple[float | None, str]]:
    steps: list[tuple[float | None, str]] = []
    low: float | None = None
    for level in std.levels:
        steps.append((low, level.colour))
        low = float(level.max) + 1 if level.max is not None else None
    return steps


INGEST_TS_BOUND = (
    "AND ts > $__timeFrom()::timestamptz - interval '2 days' AND ts <= $__timeTo()::timestamptz"
)
RAW_RANGE = "3 days"  # up to this range panels read raw readings; beyond, the hourly rollup
_SHORT = f"$__timeTo()::timestamptz - $__timeFrom()::timestamptz <= interval '{RAW_RANGE}'"
_LONG = f"$__timeTo()::timestamptz - $__timeFrom()::timestamptz > interval '{RAW_RANGE}'"


def _ranged(
    metric: str,
    agg: str,
    rollup_agg: str,
    where: str = "",
    by: str = "device_id",
    *,
    ordered: bool = True,
) -> str:
    """A time series of one metric per `by`: from raw readings over short ranges, from the
    hourly rollup (a continuous aggregate on TimescaleDB) over long ones, so a month stays
    fast. `agg` aggregates `value`; `rollup_agg` the rollup's columns (avg, max, sum, n…)."""
    extra = f" AND {where}" if where else ""
    return (
        f"SELECT $__timeGroupAlias(ts, $__interval), {by} AS metric, {agg} AS value "
        f"FROM readings WHERE metric = '{metric}'{extra} AND $__timeFilter(ts) AND {_SHORT} "
        "GROUP BY 1, 2 "
        # the rollup's buckets are hours: never group them finer (a sum would jump)
        f"UNION ALL SELECT $__timeGroupAlias(bucket, '1h'), {by}, {rollup_agg} "
        f"FROM readings_hourly WHERE metric = '{metric}'{extra} AND $__timeFilter(bucket) "
        f"AND {_LONG} GROUP BY 1, 2{' ORDER BY 1' if ordered else ''}"
    )


def boards(ruleset: RuleSet, std: hj633.AqiStandard | None = None) -> list[Board]:
    """Every dashboard, its thresholds taken from the rules."""
    rules = {r.id: r for r in ruleset.rules}
    std = std or hj633.load_standard()
    ponding = _line(_rule(rules, "flood.ponding_15cm"))
    leakage = _line(_rule(rules, "water.leakage_daily"))
    night = _line(_rule(rules, "water.night_flow_step"))
    pm25 = _line(_rule(rules, "air.pm25_24h_75"))
    occupancy = _line(_rule(rules, "parking.occupancy_85"))
    full = _rule(rules, "parking.occupancy_85").condition
    assert full is not None
    bands = _aqi_bands(std)
    recorded = (
        "SELECT period_end AS time, entity AS metric, value FROM recorded "
        "WHERE series = '{series}' AND $__timeFilter(period_end){extra} ORDER BY 1"
    )
    overview = Board(
        "up-overview",
        "UrbanPulse · 城市总览 City overview",
        [
            Panel(
                "在办告警 Active alerts by department and severity",
                "SELECT owner AS department, severity, count(*) AS alerts FROM alerts "
                "WHERE status IN ('pending', 'firing') GROUP BY 1, 2 ORDER BY 1, 2",
                kind="table",
                fmt="table",
            ),
            Panel(
                "告警趋势 Alerts raised",
                "SELECT $__timeGroupAlias(started_at, $__interval), rule_id AS metric, "
                "count(*) AS alerts FROM alerts WHERE $__timeFilter(started_at) "
                "GROUP BY 1, 2 ORDER BY 1",
            ),
            Panel(
                "规划指标 Plan KPI scorecard",
                "SELECT DISTINCT ON (kpi_id, entity) kpi_id, entity, period_start, value, target, "
                "compliant FROM kpi_values ORDER BY kpi_id, entity, period_start DESC",
                kind="table",
                fmt="table",
                width=24,
            ),
            Panel(
                "设备状态 Devices by state",
                "SELECT d.device_id, d.name, d.domain, d.lat AS latitude, d.lon AS longitude, "
                "CASE WHEN EXISTS (SELECT 1 FROM alerts a WHERE a.entity = d.device_id "
                "AND a.status = 'firing') THEN 'alert' ELSE 'ok' END AS state FROM devices d "
                "WHERE d.lat IS NOT NULL ORDER BY 1",
                kind="geomap",
                fmt="table",
            ),
            Panel(
                "入库速率 Readings stored per interval",
                # ts bounds the scan (readings arrive within 2 days of being measured)
                "SELECT $__timeGroupAlias(ingested_at, $__interval), count(*) AS readings "
                "FROM readings WHERE $__timeFilter(ingested_at) "
                f"{INGEST_TS_BOUND} GROUP BY 1 ORDER BY 1",
            ),
        ],
        tags=["overview"],
    )
    water = Board(
        "up-water",
        "UrbanPulse · 供水管网 Water network",
        [
            Panel(
                "分区进水流量 DMA inflow (m³/h)",
                # the sum of the DMA's inlets, each averaged over the interval
                "SELECT per_inlet.time, d.zone AS metric, sum(per_inlet.value) AS value FROM ("
                + _ranged(
                    "flow",
                    "avg(value)",
                    "sum(sum) / sum(n)",
                    "device_id IN (SELECT device_id FROM devices WHERE kind = 'inlet_meter' "
                    "AND zone IN ($dma))",
                    by="device_id",
                    ordered=False,
                )
                + ") AS per_inlet JOIN devices d ON d.device_id = per_inlet.metric "
                "GROUP BY 1, d.zone ORDER BY 1",
                unit="suffix: m³/h",
            ),
            Panel(
                "日进水量与用户用水量 Daily inflow and customer use (m³)",
                "SELECT period_end AS time, entity || ' inflow' AS metric, "
                "(detail ->> 'inflow_m3')::float8 AS value FROM recorded "
                "WHERE series = 'water.rwl_day' AND entity IN ($dma) AND $__timeFilter(period_end) "
                "UNION ALL SELECT period_end, entity || ' use', "
                "(detail ->> 'consumption_m3')::float8 FROM recorded "
                "WHERE series = 'water.rwl_day' AND entity IN ($dma) AND $__timeFilter(period_end) "
                "ORDER BY 1",
                unit="suffix: m³",
            ),
            Panel(
                "漏损率 Leakage rate R_BL per DMA and district (%)",
                recorded.format(series="water.rbl_day", extra=""),
                unit="percent",
                steps=leakage,
                description="CJJ 92 assessed rate per day; the red line is water.leakage_daily.",
            ),
            Panel(
                "夜间最小流量 Minimum night flow (m³/h)",
                recorded.format(series="water.mnf", extra=" AND entity IN ($dma)"),
                unit="suffix: m³/h",
            ),
            Panel(
                "夜间最小流量变化 Night flow change against the nights before (%)",
                recorded.format(series="water.mnf_change", extra=" AND entity IN ($dma)"),
                unit="percent",
                steps=night,
            ),
        ],
        [
            Variable(
                "dma",
                "DMA",
                "SELECT DISTINCT zone FROM devices WHERE kind = 'inlet_meter' "
                "AND zone IS NOT NULL ORDER BY 1",
            )
        ],
        domain="water",
        tags=["water"],
    )
    flood = Board(
        "up-flood",
        "UrbanPulse · 城市内涝 Flooding",
        [
            Panel(
                "积水深度 Ponding depth (cm)",
                _ranged("depth", "max(value)", "max(max)", "device_id IN ($point)"),
                unit="suffix: cm",
                steps=ponding,
                description="The red line is flood.ponding_15cm (GB 51222); orange, its clear.",
            ),
            Panel(
                "降雨 Rainfall (mm)",
                _ranged(
                    "rainfall",
                    "sum(value)",
                    "sum(sum)",
                    "device_id IN (SELECT device_id FROM devices WHERE kind = 'rain_gauge')",
                ),
                unit="lengthmm",
            ),
            Panel(
                "积水事件 Ponding events",
                "SELECT device_id, zone, started_at, ended_at, peak_cm, peak_at, carriageway, "
                "coalesce(ended_at, last_at) - started_at AS duration FROM ponding_events "
                "WHERE $__timeFilter(started_at) ORDER BY started_at DESC",
                kind="table",
                fmt="table",
                width=24,
            ),
        ],
        [
            Variable(
                "point",
                "Flood point",
                "SELECT device_id FROM devices WHERE kind = 'depth_gauge' ORDER BY 1",
            )
        ],
        domain="flood",
        tags=["flood"],
    )
    air = Board(
        "up-air",
        "UrbanPulse · 空气质量 Air quality",
        [
            Panel(
                "小时AQI Hourly AQI (HJ 633 colours)",
                recorded.format(series="air.aqi_hourly", extra=" AND entity IN ($station)"),
                steps=bands,
            ),
            Panel(
                "日AQI Daily AQI, category and primary pollutant",
                "SELECT period_start AS day, entity, value AS aqi, detail ->> 'category' AS "
                "category, detail -> 'primary' AS primary_pollutant FROM recorded "
                "WHERE series = 'air.aqi_daily' AND $__timeFilter(period_end) ORDER BY 1, 2",
                kind="table",
                fmt="table",
                steps=bands,
            ),
            Panel(
                "PM2.5 (µg/m³)",
                _ranged("pm25", "avg(value)", "sum(sum) / sum(n)", "device_id IN ($station)"),
                unit="conμgm3",
                steps=pm25,
            ),
            Panel(
                "污染物 Pollutants per station (HJ 633 units: µg/m³, CO mg/m³)",
                _ranged(
                    "no2",
                    "avg(value)",
                    "sum(sum) / sum(n)",
                    "device_id IN ($station)",
                    by="device_id || ' NO2'",
                    ordered=False,
                )
                + " UNION ALL "
                + _ranged(
                    "o3",
                    "avg(value)",
                    "sum(sum) / sum(n)",
                    "device_id IN ($station)",
                    by="device_id || ' O3'",
                    ordered=False,
                )
                + " UNION ALL "
                + _ranged(
                    "pm10",
                    "avg(value)",
                    "sum(sum) / sum(n)",
                    "device_id IN ($station)",
                    by="device_id || ' PM10'",
                ),
            ),
            Panel(
                "本年重污染天数 Heavy-pollution days this year",
                "SELECT DISTINCT ON (entity) entity, value FROM kpi_values "
                "WHERE kpi_id = 'air.heavy_pollution_days_year' ORDER BY entity, period_start DESC",
                kind="stat",
                fmt="table",
                steps=[(None, "green"), (1.0, "red")],
            ),
        ],
        [
            Variable(
                "station",
                "Station",
                "SELECT device_id FROM devices WHERE kind = 'aq_station' ORDER BY 1",
            )
        ],
        domain="air",
        tags=["air"],
    )
    parking = Board(
        "up-parking",
        "UrbanPulse · 停车 Parking",
        [
            Panel(
                "停车场占用率 Occupancy per car park (%)",
                recorded.format(series="parking.occupancy", extra=""),
                unit="percent",
                steps=occupancy,
                description=f"The red line is parking.occupancy_85 ({full.value:g} %).",
            ),
            Panel(
                "片区占用率 Occupancy per zone (%)",
                recorded.format(series="parking.occupancy_zone", extra=""),
                unit="percent",
                steps=occupancy,
            ),
            Panel(
                f"本月超过{full.value:g}%的小时数 Hours above {full.value:g} % this month",
                "SELECT DISTINCT ON (entity) entity, value AS hours FROM kpi_values "
                "WHERE kpi_id = 'parking.hours_above_85_month' AND entity <> '全区' "
                "ORDER BY entity, period_start DESC",
                kind="barchart",
                fmt="table",
                width=24,
            ),
        ],
        domain="parking",
        tags=["parking"],
    )
    platform = Board(
        "up-platform",
        "UrbanPulse · 平台运行 Platform",
        [
            Panel(
                "入库速率 Readings stored per interval",
                "SELECT $__timeGroupAlias(ingested_at, $__interval), metric, count(*) AS "
                "readings FROM readings WHERE $__timeFilter(ingested_at) "
                f"{INGEST_TS_BOUND} GROUP BY 1, 2 ORDER BY 1",
            ),
            Panel(
                "隔离消息 Quarantine by reason",
                "SELECT reason, state, count(*) AS messages, max(last_received_at) AS latest "
                "FROM quarantine GROUP BY 1, 2 ORDER BY 3 DESC",
                kind="table",
                fmt="table",
            ),
            Panel(
                "规则健康 Rule, record and KPI health",
                "SELECT rule_id, watermark, last_eval_at, last_duration_ms, failures, last_error "
                "FROM rule_health ORDER BY failures DESC, rule_id",
                kind="table",
                fmt="table",
                width=24,
            ),
            Panel(
                "通知投递 Notification delivery",
                "SELECT channel, state, count(*) AS messages, max(attempts) AS max_attempts, "
                "max(last_error) AS last_error FROM notifications GROUP BY 1, 2 ORDER BY 1, 2",
                kind="table",
                fmt="table",
                width=24,
            ),
        ],
        tags=["platform"],
    )
    return [overview, water, flood, air, parking, platform]


ANNOTATION_SQL = (
    "SELECT started_at AS time, ended_at AS timeend, rule_id || ' ' || entity AS text, "
    "severity AS tags FROM alerts WHERE labels ->> 'domain' = '{domain}' "
    "AND status IN ('firing', 'resolved') AND $__timeFilter(started_at)"
)


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit} if p.unit else {}
    if p.steps:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for v, c in p.steps],
        }
        if p.kind == "timeseries":
            defaults["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    options: dict[str, Any] = {}
    overrides: list[dict[str, Any]] = []
    if p.kind == "stat":  # one value per row (per station), not the last row only
        options = {"reduceOptions": {"values": True, "calcs": [], "fields": ""}}
    if p.kind == "geomap":  # markers at the devices, coloured by their `state` column
        options = {
            "view": {"id": "coords", "lat": 29.355, "lon": 105.92, "zoom": 12},
            "layers": [
                {
                    "type": "markers",
                    "name": "devices",
                    "location": {
                        "mode": "coords",
                        "latitude": "latitude",
                        "longitude": "longitude",
                    },
                    "config": {"style": {"color": {"field": "state", "fixed": "green"}}},
                }
            ],
        }
        overrides.append(
            {
                "matcher": {"id": "byName", "options": "state"},
                "properties": [
                    {
                        "id": "mappings",
                        "value": [
                            {
                                "type": "value",
                                "options": {
                                    "alert": {"color": "red", "index": 0},
                                    "ok": {"color": "green", "index": 1},
                                },
                            }
                        ],
                    },
                    {"id": "color", "value": {"mode": "thresholds"}},
                ],
            }
        )
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorMode": "code",
                "rawQuery": True,
                "format": p.fmt,
                "rawSql": p.sql,
            }
        ],
    }


def dashboard_json(board: Board) -> dict[str, Any]:
    panels = []
    x = y = 0
    for i, p in enumerate(board.panels, start=1):
        if x + p.width > 24:
            x, y = 0, y + 8
        panels.append(_panel_json(p, i, x, y))
        x += p.width
    annotations: list[dict[str, Any]] = []
    if board.domain is not None:
        annotations.append(
            {
                "name": "告警 Alerts",
                "datasource": DATASOURCE,
                "enable": True,
                "iconColor": "red",
                "target": {
                    "refId": "Anno",
                    "rawQuery": True,
                    "format": "table",
                    "rawSql": ANNOTATION_SQL.format(domain=board.domain),
                },
            }
        )
    variables = [
        {
            "name": v.name,
            "label": v.label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": v.sql,
            "definition": v.sql,
            "multi": True,
            "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 1,
        }
        for v in board.variables
    ]
    return {
        "uid": board.uid,
        "title": board.title,
        "tags": ["urbanpulse", *board.tags],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "time": {"from": "now-3d", "to": "now"},
        "refresh": "1m",
        "templating": {"list": variables},
        "annotations": {"list": annotations},
        "panels": panels,
    }


def write(ruleset: RuleSet, folder: Path) -> list[Path]:
    """Write every dashboard as <uid>.json into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for board in boards(ruleset):
        path = folder / f"{board.uid}.json"
        path.write_text(json.dumps(dashboard_json(board), ensure_ascii=False, indent=2) + "\n")
        out.append(path)
    return out


def dashboards_folder() -> Path:
    return Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"


_GROUP = re.compile(r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)")
_FILTER = re.compile(r"\$__timeFilter\(([^)]+)\)")


def _seconds(text: str, interval_s: int) -> int:
    text = text.strip().strip("'\"")
    if text == "$__interval":
        return interval_s
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        raise ValueError(f"cannot read the interval {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _grafana_interval(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def expand(
    sql: str,
    *,
    start: datetime,
    end: datetime,
    interval_s: int,
    variables: dict[str, list[str]],
    timescaledb: bool = False,
) -> str:
    """The query as Grafana's PostgreSQL data source sends it: $__timeGroupAlias as epoch
    seconds (or time_bucket when the data source has TimescaleDB on), $__timeFilter as a
    BETWEEN, $__timeFrom()/$__timeTo() as timestamps, $__interval as e.g. 5m, multi-value
    variables as quoted lists."""

    def group(m: re.Match[str]) -> str:
        n = _seconds(m.group(2), interval_s)
        if timescaledb:
            return f"time_bucket('{n}s', {m.group(1)}) AS \"time\""
        return f'floor(extract(epoch from {m.group(1)})/{n})*{n} AS "time"'

    out = _GROUP.sub(group, sql)
    out = out.replace("$__timeFrom()", f"'{start.isoformat()}'")
    out = out.replace("$__timeTo()", f"'{end.isoformat()}'")
    out = _FILTER.sub(
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", out
    )
    out = out.replace("$__interval", _grafana_interval(interval_s))
    for name, values in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"
        out = out.replace(f"${name}", quoted)
    return out
