"""Early firing: a breach the stored readings cannot take back becomes an alert on the next
pass, not after the allowed lateness; everything else still waits for the watermark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from rules.runner import fires_early, run_pass
from urbanpulse.contract import Reading, default_registry
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.db.store import store_batch
from urbanpulse.rulefmt.model import Rule, catalogue_files, load_rule_files

REGISTRY = default_registry()
NOW = datetime(2026, 11, 20, 9, 0, 37, tzinfo=UTC)  # between two whole minutes
SINCE = NOW - timedelta(hours=1)


def depth_rule(rule_id: str, aggregate: str, op: str = ">=") -> Rule:
    return Rule.model_validate(
        {
            "id": rule_id,
            "title": {"zh": "测试", "en": "test"},
            "type": "threshold",
            "series": {"metric": "depth"},
            "aggregate": aggregate,
            "window": "2m",
            "condition": {"op": op, "value": 15, "clear": 12}
            if op.startswith(">")
            else {"op": op, "value": 1, "clear": 2},
            "keep_firing_for": "10m",
            "severity": "critical",
            "owner": "区住房城乡建委",
            "implements": {"clause": "二、(四)"},
        }
    )


LAST = depth_rule("t.last", "last")
MEAN = depth_rule("t.mean", "mean")


def setup(conn: psycopg.Connection[Any]) -> None:
    upsert_devices(
        conn,
        [
            DeviceSpec(
                device_id=f"g{k}",
                domain="flood",
                kind="depth_gauge",
                name=f"gauge {k}",
                report_interval_s=10,
                attributes={"carriageway": True},
            )
            for k in (1, 2)
        ],
    )
    readings = [
        Reading(f"g{k}", "depth", NOW - timedelta(seconds=s), 3.0)
        for k in (1, 2)
        for s in range(600, 20, -10)
    ]
    # g1 ponds 17 s before the pass; g2 stays dry
    readings += [Reading("g1", "depth", NOW - timedelta(seconds=s), 25.0) for s in (17, 7)]
    readings += [Reading("g2", "depth", NOW - timedelta(seconds=s), 3.0) for s in (17, 7)]
    store_batch(conn, readings, [])


def open_alerts(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT rule_id, entity, status FROM alerts WHERE status IN ('pending', 'firing') "
        "ORDER BY 1, 2"
    ).fetchall()


def test_a_breach_on_the_latest_value_fires_on_the_next_pass(conn: psycopg.Connection[Any]) -> None:
    setup(conn)
    report = run_pass(conn, [LAST, MEAN], REGISTRY, now=NOW, lateness_s=120, since=SINCE)
    assert not report.failed
    # the watermark is two minutes back, yet the breach of 17 s ago is an alert now; the mean
    # over a window still filling waits for the watermark
    assert open_alerts(conn) == [("t.last", "g1", "firing")]
    [(started,)] = conn.execute("SELECT started_at FROM alerts").fetchall()
    assert NOW - timedelta(seconds=17) <= started <= NOW


def test_without_early_firing_the_breach_waits_for_the_watermark(
    conn: psycopg.Connection[Any],
) -> None:
    setup(conn)
    run_pass(conn, [LAST], REGISTRY, now=NOW, lateness_s=120, since=SINCE, early=False)
    assert open_alerts(conn) == []
    later = NOW + timedelta(seconds=180)  # the watermark has passed the breach
    run_pass(conn, [LAST], REGISTRY, now=later, lateness_s=120, since=SINCE, early=False)
    assert open_alerts(conn) == [("t.last", "g1", "firing")]


def test_the_watermark_catching_up_confirms_the_early_alert_once(
    conn: psycopg.Connection[Any],
) -> None:
    setup(conn)
    run_pass(conn, [LAST], REGISTRY, now=NOW, lateness_s=120, since=SINCE)
    # a late, dry reading inside what was evaluated early, then the pond goes on
    store_batch(conn, [Reading("g1", "depth", NOW - timedelta(seconds=12), 3.0)], [])
    more = [Reading("g1", "depth", NOW + timedelta(seconds=s), 26.0) for s in range(3, 300, 10)]
    store_batch(conn, more, [])
    for seconds in (10, 70, 130, 190, 250, 310):
        run_pass(
            conn,
            [LAST],
            REGISTRY,
            now=NOW + timedelta(seconds=seconds),
            lateness_s=120,
            since=SINCE,
        )
    # one alert, never undone, and each transition recorded once
    rows = conn.execute("SELECT id, status FROM alerts").fetchall()
    assert [r[1] for r in rows] == ["firing"]
    events = conn.execute(
        "SELECT from_status, to_status FROM alert_events WHERE alert_id = %s ORDER BY at",
        (rows[0][0],),
    ).fetchall()
    assert events == [("inactive", "pending"), ("pending", "firing")]


def test_which_rules_may_fire_early() -> None:
    assert fires_early(LAST)
    assert fires_early(depth_rule("t.max", "max"))
    assert not fires_early(depth_rule("t.max_below", "max", "<"))
    assert fires_early(depth_rule("t.min_below", "min", "<"))
    assert not fires_early(MEAN)
    catalogue = {r.id: r for r in load_rule_files(catalogue_files(), REGISTRY)}
    assert fires_early(catalogue["flood.ponding_15cm"])
    assert not fires_early(catalogue["device.offline"])  # absence needs the lateness
    assert not fires_early(catalogue["air.pm25_24h_75"])  # a daily mean
