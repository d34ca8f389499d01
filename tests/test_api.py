"""The HTTP API against a real server process and a real database holding the demo scenario,
with alerts raised by the rule engine: every endpoint, the role matrix, the audit log,
acknowledgement links from real notifications, the live stream, and hostile input."""

from __future__ import annotations

import csv
import io
import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from api.alert_series import LEAD, MAX_SPAN, window
from rules.runner import run_pass
from tests.apiserver import (
    CATALOGUE,
    PONDING_POINT,
    ApiServer,
    api_server,
    link_for,
    notification_link,
    raise_ponding,
    start_api,
)
from urbanpulse.contract import default_registry
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.links import link_key, sign
from urbanpulse.rulefmt.aqi import iaqi, load_standard

ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    with api_server() as s:
        yield s


def pm25_alert(server: ApiServer, index: int) -> dict[str, Any]:
    """One of the demo's four firing PM2.5 alerts, by position: each test owns its own."""
    with server.client("viewer") as c:
        items: list[dict[str, Any]] = c.get(
            "/api/v1/alerts", params={"rule_id": "air.pm25_24h_75"}
        ).json()["items"]
    return sorted(items, key=lambda a: str(a["entity"]))[index]


def audit_rows(server: ApiServer, target: str) -> list[tuple[str, str]]:
    with psycopg.connect(server.db_url) as conn:
        rows = conn.execute(
            "SELECT actor, action FROM audit_log WHERE target = %s ORDER BY id", (target,)
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


# --- authentication and roles ------------------------------------------------------------------

# (method, path, body, the least role allowed); {alert} and {silence} are filled in per run
WRITES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/api/v1/alerts/{alert}/comments", {"body": "role matrix"}, "operator"),
    ("POST", "/api/v1/alerts/{alert}/assign", {"assignee": "matrix"}, "operator"),
    ("POST", "/api/v1/silences", None, "operator"),
    ("POST", "/api/v1/silences/{silence}/expire", None, "operator"),
    ("POST", "/api/v1/devices", None, "admin"),
    ("PATCH", "/api/v1/devices/aq-lc", {"name": "老城空气站"}, "admin"),
    ("POST", "/api/v1/tokens", None, "admin"),
    ("POST", "/api/v1/quarantine/replay", {"reason": "no_such_reason"}, "admin"),
    ("GET", "/api/v1/audit", None, "admin"),
    ("GET", "/api/v1/tokens", None, "admin"),
    ("GET", "/api/v1/alerts", None, "viewer"),
    ("GET", "/api/v1/devices", None, "viewer"),
    ("GET", "/api/v1/me", None, "viewer"),
]


def test_each_role_is_allowed_and_refused_where_it_should_be(server: ApiServer) -> None:
    alert = pm25_alert(server, 3)["id"]
    n = 0
    for method, path, body, least in WRITES:
        for role in ROLES:
            n += 1
            with server.client("admin") as admin:  # a fresh silence to expire each time
                silence = admin.post(
                    "/api/v1/silences",
                    json={
                        "matchers": {"entity": f"matrix-{n}"},
                        "ends_at": _in(3600),
                        "reason": "role matrix",
                    },
                ).json()["id"]
            payload = body
            if path == "/api/v1/silences":
                payload = {
                    "matchers": {"entity": f"m-{n}"},
                    "ends_at": _in(60),
                    "reason": "role matrix",
                }
            elif path == "/api/v1/devices" and method == "POST":
                payload = {
                    "device_id": f"matrix-{n}",
                    "domain": "flood",
                    "kind": "depth_gauge",
                    "name": "matrix",
                }
            elif path == "/api/v1/tokens" and method == "POST":
                payload = {"name": f"matrix-{n}", "role": "viewer"}
            url = path.format(alert=alert, silence=silence)
            with server.client(role) as c:
                got = c.request(method, url, json=payload)
            allowed = Role(role).allows(Role(least))
            if allowed:
                assert got.status_code < 300, (role, method, url, got.text)
            else:
                assert got.status_code == 403, (role, method, url, got.text)
                assert least in got.json()["detail"]
    # and nobody without a token
    for method, path, _, _ in WRITES:
        got = httpx.request(method, server.url + path.format(alert=alert, silence=1))
        assert got.status_code == 401
        assert got.headers["www-authenticate"] == "Bearer"


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer upt_not-a-real-token",
        "Bearer " + "x" * 5000,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer 令牌",
        "",
    ],
)
def test_invalid_tokens_are_refused(server: ApiServer, header: str) -> None:
    got = httpx.get(
        server.url + "/api/v1/alerts", headers=[(b"Authorization", header.encode("utf-8"))]
    )
    assert got.status_code == 401, got.text


def test_expired_and_revoked_tokens_stop_working(server: ApiServer) -> None:
    with psycopg.connect(server.db_url) as conn:
        expired, _ = create_token(conn, "expired-one", Role.ADMIN, expires_in=timedelta(0))
        short, _ = create_token(conn, "revoked-one", Role.VIEWER)
    assert httpx.get(server.url + "/api/v1/me", headers=_bearer(expired)).status_code == 401
    assert httpx.get(server.url + "/api/v1/me", headers=_bearer(short)).status_code == 200
    with server.client("admin") as admin:
        assert admin.delete("/api/v1/tokens/revoked-one").status_code == 204
        assert admin.delete("/api/v1/tokens/revoked-one").status_code == 404
    assert httpx.get(server.url + "/api/v1/me", headers=_bearer(short)).status_code == 401
    assert audit_rows(server, "token:revoked-one") == [("test-admin", "token.revoke")]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_created_hashed_and_shown_once(server: ApiServer) -> None:
    with server.client("admin") as admin:
        made = admin.post(
            "/api/v1/tokens",
            json={"name": "grafana-bridge", "role": "viewer", "expires_in_days": 30},
        )
        assert made.status_code == 201
        secret = made.json()["token"]
        assert (
            admin.post(
                "/api/v1/tokens", json={"name": "grafana-bridge", "role": "viewer"}
            ).status_code
            == 409
        )
        listed = admin.get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed)
    assert httpx.get(server.url + "/api/v1/me", headers=_bearer(secret)).json() == {
        "name": "grafana-bridge",
        "role": "viewer",
        "department": None,
    }
    with psycopg.connect(server.db_url) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM api_tokens WHERE name = 'grafana-bridge'"
        ).fetchone()
    assert stored is not None and secret.encode() not in bytes(stored[0])


# --- alerts ------------------------------------------------------------------------------------


def test_acknowledge_assign_comment_resolve_with_history_and_audit(server: ApiServer) -> None:
    alert = pm25_alert(server, 0)
    aid = alert["id"]
    assert alert["status"] == "firing" and alert["acknowledged"] is None
    with server.client("operator") as c:
        first = c.post(f"/api/v1/alerts/{aid}/ack", json={"note": "收到"})
        assert first.status_code == 200
        ack = first.json()["acknowledged"]
        assert ack["acked_by"] == "test-operator" and ack["note"] == "收到"
        again = c.post(f"/api/v1/alerts/{aid}/ack")  # harmless: the first stays
        assert again.status_code == 200 and again.json()["acknowledged"] == ack
        assert (
            c.post(f"/api/v1/alerts/{aid}/assign", json={"assignee": "王工"}).json()["assignee"]
            == "王工"
        )
        assert c.post(f"/api/v1/alerts/{aid}/comments", json={"body": "已派人"}).status_code == 201
        done = c.post(f"/api/v1/alerts/{aid}/resolve", json={"note": "传感器已清理"})
        assert done.status_code == 200
        body = done.json()
        assert body["status"] == "resolved" and body["ended_at"] is not None
        kinds = [(e["kind"], e["actor"]) for e in body["events"]]
        assert kinds == [
            ("pending", None),
            ("firing", None),
            ("acknowledged", "test-operator"),
            ("assigned", "test-operator"),
            ("commented", "test-operator"),
            ("resolved", "test-operator"),
        ]
        assert c.get(f"/api/v1/alerts/{aid}/events").json() == body["events"]
        # a resolved alert cannot be acknowledged, assigned or resolved again
        late = c.post(f"/api/v1/alerts/{aid}/ack")
        assert late.status_code == 409 and "resolved" in late.json()["detail"]
        assert c.post(f"/api/v1/alerts/{aid}/assign", json={"assignee": "x"}).status_code == 409
        assert c.post(f"/api/v1/alerts/{aid}/resolve", json={"note": "x"}).status_code == 409
        assert c.get("/api/v1/alerts/999999").status_code == 404
        assert c.post("/api/v1/alerts/999999/ack").status_code == 404
    assert audit_rows(server, f"alert:{aid}") == [
        ("test-operator", "alert.acknowledge"),
        ("test-operator", "alert.assign"),
        ("test-operator", "alert.comment"),
        ("test-operator", "alert.resolve"),
    ]
    with psycopg.connect(server.db_url) as conn:
        # the evaluator starts afresh for the entity, and the department hears it was resolved
        assert conn.execute(
            "SELECT count(*) FROM rule_states WHERE alert_id = %s", (aid,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT kind FROM notify_outbox WHERE alert_id = %s ORDER BY id", (aid,)
        ).fetchall() == [("firing",), ("resolved",)]


def test_a_department_operator_acts_only_on_its_departments_alerts(server: ApiServer) -> None:
    alert = pm25_alert(server, 1)  # 区生态环境局's; the flood operator acts for 区城市管理局
    with server.client("flood_operator") as c:
        refused = c.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert refused.status_code == 403 and "区生态环境局" in refused.json()["detail"]
        # silences are confined to the department too
        made = c.post(
            "/api/v1/silences",
            json={"matchers": {"zone": "老城片区"}, "ends_at": _in(600), "reason": "清淤"},
        )
        assert made.status_code == 201
        assert made.json()["matchers"] == {"zone": "老城片区", "owner": "区城市管理局"}
        other = c.post(
            "/api/v1/silences",
            json={"matchers": {"owner": "区生态环境局"}, "ends_at": _in(600), "reason": "x"},
        )
        assert other.status_code == 403
    with server.client("operator") as c:
        assert c.post(f"/api/v1/alerts/{alert['id']}/ack").status_code == 200


def test_alert_listing_filters_pages_and_exports(server: ApiServer) -> None:
    with psycopg.connect(server.db_url) as conn:
        total = conn.execute("SELECT count(*) FROM alerts").fetchone()
        air = conn.execute(
            "SELECT count(*) FROM alerts WHERE owner = '区生态环境局' AND severity = 'warning'"
        ).fetchone()
    assert total is not None and air is not None
    with server.client("viewer") as c:
        seen: list[int] = []
        cursor = None
        while True:
            page = c.get(
                "/api/v1/alerts", params={"limit": 7, **({"cursor": cursor} if cursor else {})}
            )
            assert page.status_code == 200
            seen += [a["id"] for a in page.json()["items"]]
            cursor = page.json()["next"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == total[0]
        got = c.get(
            "/api/v1/alerts",
            params={"owner": "区生态环境局", "severity": "warning", "limit": 1000},
        ).json()["items"]
        assert len(got) == air[0]
        firing = c.get("/api/v1/alerts", params=[("status", "firing"), ("status", "pending")])
        assert {a["status"] for a in firing.json()["items"]} <= {"firing", "pending"}
        zone = c.get("/api/v1/alerts", params={"zone": "DMA-XLH"}).json()["items"]
        assert zone and {a["zone"] for a in zone} == {"DMA-XLH"}
        since = c.get(
            "/api/v1/alerts",
            params={"since": datetime.fromtimestamp(server.plan.end + 86400, UTC).isoformat()},
        ).json()["items"]
        assert since == []
        exported = c.get("/api/v1/alerts", params={"format": "csv", "owner": "区生态环境局"})
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
        assert (
            len(rows)
            == c.get("/api/v1/alerts", params={"owner": "区生态环境局", "limit": 1000})
            .json()["items"]
            .__len__()
        )
        assert rows[0]["title_zh"] and rows[0]["owner"] == "区生态环境局"
        detail = c.get(f"/api/v1/alerts/{rows[0]['id']}").json()
        assert detail["clause"] and detail["threshold"] and detail["events"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+08:00", detail["pending_at"])


def test_an_alerts_series_is_what_its_rule_read_around_the_breach(server: ApiServer) -> None:
    air = pm25_alert(server, 0)
    with server.client("viewer") as c:
        got = c.get(f"/api/v1/alerts/{air['id']}/series")
        assert got.status_code == 200, got.text
        s = got.json()
        water = c.get("/api/v1/alerts", params={"rule_id": "water.leakage_daily"}).json()["items"]
        w = c.get(f"/api/v1/alerts/{water[0]['id']}/series").json()
        assert c.get("/api/v1/alerts/999999/series").status_code == 404
    assert httpx.get(f"{server.url}/api/v1/alerts/{air['id']}/series").status_code == 401
    assert (s["kind"], s["name"], s["threshold"], s["clear"]) == ("metric", "pm25", 75, 70)
    assert s["unit"] == default_registry().metrics["pm25"].unit
    assert 0 < len(s["points"]) <= 60 and s["step_s"] % 60 == 0
    start, end = datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])
    assert start <= datetime.fromisoformat(air["pending_at"]) - timedelta(hours=6) < end
    # each point is the mean of the device's readings in its bucket
    first = s["points"][0]
    t0 = datetime.fromisoformat(first["ts"])
    with psycopg.connect(server.db_url) as conn:
        row = conn.execute(
            "SELECT avg(value) FROM readings WHERE device_id = %s AND metric = 'pm25' "
            "AND ts >= %s AND ts < %s",
            (air["entity"], t0, t0 + timedelta(seconds=s["step_s"])),
        ).fetchone()
    assert row is not None and abs(float(row[0]) - first["value"]) < 1e-6
    # the HJ 633 level of a 24 h PM2.5 mean, by the daily table
    std = load_standard()
    index = iaqi(std, std.daily["pm25"], air["value"])
    assert index is not None
    assert s["aqi"]["aqi"] == index and s["aqi"]["colour"] == std.level_of(index).colour
    # a rule on a recorded series draws that series; water alerts have no AQI
    assert (w["kind"], w["name"], w["aqi"]) == ("recorded", "water.rbl_day", None)
    assert w["points"] and w["unit"] == "%"


def test_series_window_leads_the_breach_and_stays_bounded() -> None:
    now = datetime(2026, 7, 10, 12, tzinfo=UTC)
    start, end, step = window(now - timedelta(hours=2), None, now, latest=now)
    assert (end, start, step) == (now, now - timedelta(hours=8), timedelta(minutes=8))
    ended = now - timedelta(days=1)
    start, end, _ = window(ended - timedelta(hours=1), ended, now, timedelta(days=3), ended)
    assert end == ended + timedelta(hours=1) and start == ended - timedelta(days=3, hours=1)
    # open for 90 days with fresh data: the breach and today in one chart of 60 points
    start, end, step = window(now - timedelta(days=90), None, now, latest=now)
    assert (start, end) == (now - timedelta(days=90, hours=6), now) and (end - start) / step <= 60
    # open for a year: its most recent half-year
    start, end, _ = window(now - timedelta(days=365), None, now, latest=now)
    assert end == now and end - start == MAX_SPAN
    _, _, step = window(now - timedelta(minutes=1), None, now, latest=now)
    assert step >= timedelta(minutes=1)


def test_series_window_follows_the_alert_not_the_clock() -> None:
    """An alert whose data stopped weeks ago is drawn around its breach and its latest value,
    whether it is still open or was resolved, and whatever today's date is."""
    breach = datetime(2026, 3, 1, 8, tzinfo=UTC)
    last = breach + timedelta(hours=5)
    for now in (breach + timedelta(days=20), breach + timedelta(days=3000)):
        start, end, _ = window(breach, None, now, latest=last)
        assert (start, end) == (breach - LEAD, last + timedelta(hours=1))
        start, end, _ = window(breach, last, now, latest=last)
        assert (start, end) == (breach - LEAD, last + timedelta(hours=1))
        # no data at all (a silent device): the moments around the breach
        start, end, _ = window(breach, None, now)
        assert (start, end) == (breach - LEAD, breach + timedelta(hours=1))
    # resolved by hand long after its data stopped: still its data, not the days since
    resolved = breach + timedelta(days=30)
    start, end, _ = window(breach, resolved, resolved + timedelta(days=1), latest=last)
    assert end == last + timedelta(hours=1)


def _old_ponding(db_url: str, age: timedelta) -> None:
    """Two carriageway gauges flood `age` before the run; the ponding rule raises an alert on
    each, and one of them clears."""
    rule = next(r for r in CATALOGUE.rules if r.id == "flood.ponding_15cm")
    t0 = (datetime.now(UTC) - age).replace(second=0, microsecond=0)
    rows: list[tuple[str, datetime, float]] = []
    with psycopg.connect(db_url) as conn:
        for device, clears in (("fl-old-open", False), ("fl-old-done", True)):
            conn.execute(
                "INSERT INTO devices (device_id, domain, kind, name, report_interval_s, "
                "attributes) VALUES (%s, 'flood', 'depth_gauge', '老城下穿道', 60, "
                "'{\"carriageway\": true}')",
                (device,),
            )
            depth = [2.0] * 30 + [31.0] * 15 + ([1.0] * 20 if clears else [])
            rows += [(device, t0 + timedelta(minutes=m), v) for m, v in enumerate(depth)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO readings (device_id, metric, ts, value) VALUES (%s, 'depth', %s, %s)",
                rows,
            )
        conn.commit()
        report = run_pass(
            conn,
            [rule],
            default_registry(),
            now=t0 + timedelta(minutes=70),
            lateness_s=0,
            since=t0,
        )
        assert not report.failed, report


def test_an_alert_older_than_two_weeks_draws_its_chart(db_url: str) -> None:
    """40 days old, older than the 14 days the chart once counted back from now: the chart
    still shows the breach, on the console's route and on a notification link's, for an alert
    still open (its gauge fell silent) and for one resolved."""
    age = timedelta(days=40)
    _old_ponding(db_url, age)
    with psycopg.connect(db_url) as conn:
        token, _ = create_token(conn, "old-viewer", Role.VIEWER)
    with (
        start_api(db_url) as (url, _),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c,
    ):
        found = c.get("/api/v1/alerts", params={"rule_id": "flood.ponding_15cm"}).json()
        got = {a["entity"]: a for a in found["items"]}
        assert {d: a["status"] for d, a in got.items()} == {
            "fl-old-open": "firing",
            "fl-old-done": "resolved",
        }
        for alert in got.values():
            s = c.get(f"/api/v1/alerts/{alert['id']}/series").json()
            pending = datetime.fromisoformat(alert["pending_at"])
            start, end = datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])
            assert start <= pending - LEAD and pending < end < datetime.now(UTC) - age / 2
            values = [p["value"] for p in s["points"]]
            assert values and max(values) >= 15 > min(values), s  # the rise is in the chart
        link = link_for(db_url, url, got["fl-old-open"]["id"], "区住房城乡建委").rsplit("/", 1)[1]
        linked = httpx.get(f"{url}/api/v1/ack/{link}/series").json()
        assert linked["alert_id"] == got["fl-old-open"]["id"] and linked["points"]


# --- devices, readings, series -----------------------------------------------------------------


def test_devices_provision_update_list_and_health(server: ApiServer) -> None:
    with server.client("admin") as c:
        new = {
            "device_id": "fl-test-101",
            "domain": "flood",
            "kind": "depth_gauge",
            "name": "人民广场下穿道",
            "zone": "老城片区",
            "report_interval_s": 60,
            "attributes": {"carriageway": True},
        }
        made = c.post("/api/v1/devices", json=new)
        assert made.status_code == 201
        assert made.json()["health"] == {"last_seen": None, "state": "never"}
        assert c.post("/api/v1/devices", json=new).status_code == 409
        changed = c.patch("/api/v1/devices/fl-test-101", json={"name": "下穿道", "zone": None})
        assert changed.json()["name"] == "下穿道" and changed.json()["zone"] is None
        assert c.patch("/api/v1/devices/nope", json={"name": "x"}).status_code == 404
        assert c.get("/api/v1/devices/fl-test-101/latest").json() == []
        assert c.get("/api/v1/devices/nope/latest").status_code == 404
    assert [a for _, a in audit_rows(server, "device:fl-test-101")] == [
        "device.create",
        "device.update",
    ]
    with server.client("viewer") as c, psycopg.connect(server.db_url) as conn:
        ids: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 9}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/api/v1/devices", params=params).json()
            ids += [d["device_id"] for d in page["items"]]
            if not (cursor := page["next"]):
                break
        expect = [r[0] for r in conn.execute("SELECT device_id FROM devices ORDER BY 1")]
        assert ids == expect
        aq = c.get("/api/v1/devices/aq-lc").json()
        last = conn.execute("SELECT max(ts) FROM readings WHERE device_id = 'aq-lc'").fetchone()
        assert last is not None
        assert datetime.fromisoformat(aq["health"]["last_seen"]) == last[0]
        assert aq["health"]["state"] == "offline"  # the scenario ended days ago
        never = c.get("/api/v1/devices", params={"state": "never"}).json()["items"]
        assert "fl-test-101" in [d["device_id"] for d in never]
        latest = c.get("/api/v1/devices/aq-lc/latest").json()
        metrics = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT metric FROM readings WHERE device_id = 'aq-lc' ORDER BY 1"
            )
        ]
        assert [v["metric"] for v in latest] == metrics
        for v in latest:
            row = conn.execute(
                "SELECT value FROM readings WHERE device_id = 'aq-lc' AND metric = %s "
                "ORDER BY ts DESC LIMIT 1",
                (v["metric"],),
            ).fetchone()
            assert row is not None and v["value"] == row[0]
        many = c.get(
            "/api/v1/latest",
            params=[("device_id", "aq-lc"), ("device_id", "aq-fhh"), ("metric", "pm25")],
        ).json()
        assert {(v["device_id"], v["metric"]) for v in many} == {
            ("aq-lc", "pm25"),
            ("aq-fhh", "pm25"),
        }


def test_readings_raw_bucketed_paged_and_csv_match_the_database(server: ApiServer) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    end = datetime.fromtimestamp(server.plan.end, tz)
    start = end - timedelta(days=1)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    with server.client("viewer") as c, psycopg.connect(server.db_url) as conn:
        raw = conn.execute(
            "SELECT device_id, metric, ts, value FROM readings WHERE device_id IN ('aq-lc', "
            "'aq-fhh') AND metric = 'pm25' AND ts >= %s AND ts < %s ORDER BY 1, 2, 3",
            (start, end),
        ).fetchall()
        got: list[tuple[Any, ...]] = []
        cursor = None
        while True:
            params: list[tuple[str, Any]] = [
                ("device_id", "aq-lc"),
                ("device_id", "aq-fhh"),
                ("metric", "pm25"),
                ("limit", 10),
                *window.items(),
            ]
            if cursor:
                params.append(("cursor", cursor))
            page = c.get("/api/v1/readings", params=params).json()
            got += [
                (r["device_id"], r["metric"], datetime.fromisoformat(r["ts"]), r["value"])
                for r in page["items"]
            ]
            if not (cursor := page["next"]):
                break
        assert got == raw and len(raw) > 10
        bucketed = c.get(
            "/api/v1/readings",
            params={"device_id": "aq-lc", "metric": "pm25", "bucket": "6h", "agg": "max", **window},
        ).json()["items"]
        expect = conn.execute(
            "SELECT date_bin('6 hours', ts, '2000-01-01 00:00+08') b, max(value), count(*) "
            "FROM readings WHERE device_id = 'aq-lc' AND metric = 'pm25' AND ts >= %s "
            "AND ts < %s GROUP BY 1 ORDER BY 1",
            (start, end),
        ).fetchall()
        assert [(datetime.fromisoformat(r["ts"]), r["value"], r["count"]) for r in bucketed] == [
            tuple(e) for e in expect
        ]
        exported = c.get(
            "/api/v1/readings",
            params=[
                ("device_id", "aq-lc"),
                ("device_id", "aq-fhh"),
                ("metric", "pm25"),
                ("format", "csv"),
                *window.items(),
            ],
        )
        rows = list(csv.reader(io.StringIO(exported.text.lstrip("\ufeff"))))
        assert rows[0] == ["device_id", "metric", "ts", "value", "count"]
        assert [(r[0], r[1], datetime.fromisoformat(r[2]), float(r[3])) for r in rows[1:]] == raw
        aqi = c.get("/api/v1/series/air.aqi_hourly", params={"entity": "aq-lc", **window}).json()
        assert len(aqi["items"]) == 24 and aqi["items"][0]["detail"]["category"]
        assert "air.aqi_hourly" in [s["id"] for s in c.get("/api/v1/series").json()]
        assert c.get("/api/v1/series/no.such_series").status_code == 404


# --- silences, rules, KPIs, quarantine, system -------------------------------------------------


def test_silences_are_created_listed_and_expired(server: ApiServer) -> None:
    with server.client("operator") as c:
        made = c.post(
            "/api/v1/silences",
            json={
                "matchers": {"zone": "DMA-XLH", "rule_id": "water.*"},
                "ends_at": _in(7200),
                "reason": "管网维修",
            },
        )
        assert made.status_code == 201
        sid = made.json()["id"]
        assert made.json()["active"] and made.json()["author"] == "test-operator"
        assert sid in [s["id"] for s in c.get("/api/v1/silences").json()]
        assert c.post(f"/api/v1/silences/{sid}/expire").status_code == 200
        assert c.post(f"/api/v1/silences/{sid}/expire").status_code == 409
        assert c.post("/api/v1/silences/999999/expire").status_code == 404
        assert sid not in [s["id"] for s in c.get("/api/v1/silences").json()]
        assert sid in [
            s["id"] for s in c.get("/api/v1/silences", params={"include_ended": True}).json()
        ]
        bad = c.post(
            "/api/v1/silences",
            json={"matchers": {"colour": "red"}, "ends_at": _in(60), "reason": "x"},
        )
        assert bad.status_code == 422 and "matchers" in json.dumps(bad.json())
        past = c.post(
            "/api/v1/silences",
            json={"matchers": {"zone": "x"}, "ends_at": _in(-60), "reason": "x"},
        )
        assert past.status_code == 422 and "ends_at" in past.json()["detail"]
    assert [a for _, a in audit_rows(server, f"silence:{sid}")] == [
        "silence.create",
        "silence.expire",
    ]


def test_rules_kpis_and_quarantine(server: ApiServer) -> None:
    with server.client("viewer") as c:
        rules = c.get("/api/v1/rules").json()
        ids = {r["id"] for r in rules}
        assert {r.id for r in CATALOGUE.rules} | {k.id for k in CATALOGUE.kpis} <= ids
        ponding = c.get("/api/v1/rules/flood.ponding_15cm").json()
        assert ponding["health"]["healthy"] and ponding["health"]["evaluations"] > 0
        assert ponding["owner"] == "区住房城乡建委" and ponding["threshold"].startswith(">= 15")
        assert c.get("/api/v1/rules/no.such_rule").status_code == 404
        kpis = c.get("/api/v1/kpis").json()
        assert {k["kpi_id"] for k in kpis} == {k.id for k in CATALOGUE.kpis}
        heavy = [k for k in kpis if k["kpi_id"] == "air.heavy_pollution_days_year"]
        assert any(k["entity"] == "全区" and k["value"] == 1 and not k["compliant"] for k in heavy)
        one = c.get("/api/v1/kpis/air.heavy_pollution_days_year").json()
        assert one and {k["kpi_id"] for k in one} == {"air.heavy_pollution_days_year"}
        assert c.get("/api/v1/kpis", params={"owner": "区城市管理局"}).json()
        summary = c.get("/api/v1/quarantine/summary").json()
        assert {s["reason"] for s in summary} >= {"bad_json", "out_of_range"}
        page = c.get("/api/v1/quarantine", params={"reason": "out_of_range"}).json()["items"]
        assert page and page[0]["payload_preview"].startswith("{")
        assert c.post("/api/v1/quarantine/replay").status_code == 403
    with server.client("admin") as c:
        result = c.post("/api/v1/quarantine/replay", json={"reason": "out_of_range"}).json()
        assert result["replayed"] == 0 and result["still_failing"] == len(page)
    assert audit_rows(server, "quarantine")[-1] == ("test-admin", "quarantine.replay")


def test_health_readiness_metrics_and_openapi(server: ApiServer) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ok" and ready["schema"] >= 5
    with server.client("viewer") as c:
        c.get("/api/v1/alerts")
    metrics = httpx.get(server.url + "/metrics").text
    assert 'urbanpulse_api_requests_total{method="GET",route="/api/v1/alerts",status="200"}' in (
        metrics
    )
    spec = httpx.get(server.url + "/openapi.json").json()
    ops = [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(ops) >= 30
    for method, path, op in ops:
        assert op.get("summary"), (method, path)
        if path.startswith("/api/v1/") and "/ack/" not in path:
            assert "401" in op["responses"] or path in ("/api/v1/ack/{token}",), (method, path)
    schemas = spec["components"]["schemas"]
    assert schemas["AlertPublic"]["properties"]["owner"]["examples"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_cors_is_off_by_default_and_configurable(server: ApiServer) -> None:
    pre = {"Origin": "https://ops.example", "Access-Control-Request-Method": "GET"}
    off = httpx.options(server.url + "/api/v1/alerts", headers=pre)
    assert "access-control-allow-origin" not in off.headers
    env = {"URBANPULSE_API_CORS_ORIGINS": "https://ops.example"}
    with start_api(server.db_url, env=env) as (url, _):
        on = httpx.options(url + "/api/v1/alerts", headers=pre)
        assert on.headers["access-control-allow-origin"] == "https://ops.example"
        other = httpx.options(
            url + "/api/v1/alerts", headers={**pre, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


# --- acknowledgement links -------------------------------------------------------------------


def test_a_notifications_link_acknowledges_its_alert_once(server: ApiServer) -> None:
    alert = pm25_alert(server, 2)
    token = notification_link(server, alert["id"]).rsplit("/", 1)[1]
    with psycopg.connect(server.db_url) as conn:
        key = link_key(conn)
    page = httpx.get(f"{server.url}/ack/{token}")
    assert page.status_code == 200 and alert["title_zh"] in page.text and "<form" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"  # the link's token stays here
    as_json = httpx.get(f"{server.url}/api/v1/ack/{token}").json()
    assert as_json["id"] == alert["id"]
    drawn = httpx.get(f"{server.url}/api/v1/ack/{token}/series").json()
    assert drawn["alert_id"] == alert["id"] and drawn["points"]
    done = httpx.post(f"{server.url}/ack/{token}")
    assert done.status_code == 200 and "已确认" in done.text
    again = httpx.post(f"{server.url}/api/v1/ack/{token}")
    assert again.status_code == 200
    assert again.json()["acknowledged"]["acked_by"] == "link:区生态环境局"
    assert audit_rows(server, f"alert:{alert['id']}") == [
        ("link:区生态环境局", "alert.acknowledge")
    ]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert httpx.post(f"{server.url}/api/v1/ack/{forged}").status_code == 403
    assert httpx.get(f"{server.url}/api/v1/ack/{forged}/series").status_code == 403
    expired = sign(key, alert["id"], "区生态环境局", int(time.time()) - 1)
    refused = httpx.post(f"{server.url}/api/v1/ack/{expired}")
    assert refused.status_code == 403 and "expired" in refused.json()["detail"]
    assert httpx.get(f"{server.url}/ack/{expired}").status_code == 403
    other_key = sign(b"k" * 32, alert["id"], "区生态环境局", int(time.time()) + 60)
    assert httpx.post(f"{server.url}/api/v1/ack/{other_key}").status_code == 403


# --- the live stream ---------------------------------------------------------------------------


def _listen(
    url: str, token: str, out: queue.Queue[Any], headers: dict[str, str] | None = None
) -> None:
    try:
        with httpx.stream(
            "GET",
            url,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
            timeout=httpx.Timeout(30, read=60),
        ) as r:
            out.put(("status", r.status_code))
            event: dict[str, str] = {}
            for line in r.iter_lines():
                if line.startswith(":"):
                    out.put(("comment", line))
                elif line == "":
                    if "data" in event:
                        out.put(("event", event))
                    event = {}
                else:
                    k, _, v = line.partition(":")
                    event[k] = v.strip()
        out.put(("end", None))
    except httpx.HTTPError as exc:
        out.put(("error", exc))


def _next_event(q: queue.Queue[Any], match: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kind, item = q.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if kind == "event":
            data: dict[str, Any] = json.loads(item["data"])
            data["_id"] = item.get("id")
            if match(data):
                return data
    raise AssertionError("no matching event arrived")


def test_the_stream_delivers_an_alert_raised_by_the_rule_engine(server: ApiServer) -> None:
    url = f"{server.url}/api/v1/events/alerts"
    q: queue.Queue[Any] = queue.Queue()
    threading.Thread(
        target=_listen,
        args=(url + "?owner=区住房城乡建委", server.tokens["viewer"], q),
        daemon=True,
    ).start()
    assert q.get(timeout=10) == ("status", 200)
    assert q.get(timeout=10)[0] == "comment"  # ": live": from here on, events are live
    raise_ponding(server)
    firing = _next_event(
        q, lambda d: d["rule_id"] == "flood.ponding_15cm" and d["kind"] == "firing"
    )
    assert firing["entity"] == PONDING_POINT and firing["status"] == "firing"
    assert firing["owner"] == "区住房城乡建委" and firing["detail"]["value"] == 30.0
    # someone acknowledges: the stream says so too
    with server.client("operator") as c:
        c.post(f"/api/v1/alerts/{firing['alert_id']}/ack", json={"note": "赶赴现场"})
    acked = _next_event(q, lambda d: d["kind"] == "acknowledged")
    assert acked["alert_id"] == firing["alert_id"] and acked["actor"] == "test-operator"
    # a client that reconnects with Last-Event-ID gets what followed, from history
    q2: queue.Queue[Any] = queue.Queue()
    threading.Thread(
        target=_listen,
        args=(url, server.tokens["viewer"], q2, {"Last-Event-ID": str(int(firing["_id"]) - 1)}),
        daemon=True,
    ).start()
    replayed = _next_event(q2, lambda d: True)
    assert replayed["_id"] == firing["_id"]
    assert _next_event(q2, lambda d: d["kind"] == "acknowledged")["_id"] == acked["_id"]


# --- hostile input -----------------------------------------------------------------------------

INJECTIONS = ["' OR '1'='1", "x'; DROP TABLE alerts; --", "区城市管理局' --", "%' OR 1=1 --"]


def test_injection_attempts_in_filters_find_nothing_and_harm_nothing(server: ApiServer) -> None:
    with server.client("viewer") as c:
        for bad in INJECTIONS:
            for field in ("owner", "zone"):
                got = c.get("/api/v1/alerts", params={field: bad})
                assert got.status_code == 200 and got.json()["items"] == [], (field, bad)
            assert c.get("/api/v1/alerts", params={"entity": bad}).status_code == 422
            assert c.get("/api/v1/devices", params={"zone": bad}).json()["items"] == []
            assert c.get("/api/v1/readings", params={"device_id": bad}).status_code == 422
            assert c.get("/api/v1/alerts", params={"cursor": bad}).status_code == 422
            assert (
                c.get("/api/v1/series/air.aqi_hourly", params={"entity": bad}).json()["items"] == []
            )
        assert c.get("/api/v1/alerts", params={"status": "firing' OR 1=1"}).status_code == 422
    with psycopg.connect(server.db_url) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM alerts").fetchone() == (True,)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/alerts", {"limit": 10**9}, "limit"),
        ("/api/v1/alerts", {"limit": 0}, "limit"),
        ("/api/v1/readings", {"device_id": "aq-lc", "limit": 10**6}, "limit"),
        (
            "/api/v1/readings",
            {"device_id": "aq-lc", "start": "1970-01-01T00:00:00Z", "end": "2199-01-01T00:00:00Z"},
            "start",
        ),
        (
            "/api/v1/readings",
            {"device_id": "aq-lc", "start": "0001-01-01T00:00:00Z"},
            "start",
        ),
        (
            "/api/v1/readings",
            {"device_id": "aq-lc", "bucket": "1s", "start": "2026-01-01T00:00:00Z"},
            "bucket",
        ),
        (
            "/api/v1/readings",
            {"device_id": "aq-lc", "bucket": "1m", "start": "2000-01-01T00:00:00Z"},
            "start",
        ),
        ("/api/v1/readings", {"device_id": "aq-lc", "start": "2026-01-01T00:00:00"}, "start"),
        ("/api/v1/readings", {"device_id": "aq-lc", "start": "yesterday"}, "start"),
        ("/api/v1/readings", {"device_id": ["d"] * 101}, "device_id"),
        ("/api/v1/alerts/99999999999999999999999", {}, "alert_id"),
        ("/api/v1/alerts", {"since": "2026-13-45T00:00:00Z"}, "since"),
        ("/api/v1/alerts", {"owner": "a\x00b"}, "owner"),
    ],
)
def test_huge_ranges_limits_and_malformed_values_are_refused_by_name(
    server: ApiServer, path: str, params: dict[str, Any], field: str
) -> None:
    with server.client("viewer") as c:
        got = c.get(path, params=params)
    assert got.status_code == 422, got.text
    assert field in json.dumps(got.json(), ensure_ascii=False)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"note": "' + b"x" * 5000 + b'"}',
        b'{"note": 42}',
        b'{"note": "ok", "extra": 1}',
        b"[]",
        b'{"note": "\\u0000"}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_refused(server: ApiServer, body: bytes) -> None:
    alert = pm25_alert(server, 3)
    with server.client("operator") as c:
        got = c.post(
            f"/api/v1/alerts/{alert['id']}/ack",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert got.status_code == 422, got.text


def test_tokens_cli_creates_lists_and_revokes(
    server: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from urbanpulse.cli import main

    db = ["--database-url", server.db_url]
    assert (
        main(
            [*db, "tokens", "create", "li.na", "--role", "operator", "--department", "区生态环境局"]
        )
        == 0
    )
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("upt_")
    me = httpx.get(server.url + "/api/v1/me", headers=_bearer(secret)).json()
    assert me == {"name": "li.na", "role": "operator", "department": "区生态环境局"}
    assert main([*db, "tokens", "create", "li.na", "--role", "viewer"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*db, "tokens", "list"]) == 0
    listed = capsys.readouterr().out
    assert "li.na" in listed and secret not in listed
    assert main([*db, "tokens", "revoke", "li.na"]) == 0
    assert main([*db, "tokens", "revoke", "li.na"]) == 1
    time.sleep(5.5)  # the API forgets a token it has seen within its 5 s cache
    assert httpx.get(server.url + "/api/v1/me", headers=_bearer(secret)).status_code == 401


def test_a_revoked_tokens_stream_ends(server: ApiServer) -> None:
    with psycopg.connect(server.db_url) as conn:
        secret, _ = create_token(conn, "streaming-one", Role.VIEWER)
    url = f"{server.url}/api/v1/events/alerts"
    q: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_listen, args=(url, secret, q), daemon=True).start()
    assert q.get(timeout=10) == ("status", 200)
    assert q.get(timeout=10)[0] == "comment"
    with server.client("admin") as admin:
        assert admin.delete("/api/v1/tokens/streaming-one").status_code == 204
    # the server closes it within its re-check interval and token cache (a keep-alive alone
    # would hold it open for ever)
    while (got := q.get(timeout=30))[0] != "end":
        assert got[0] in ("comment", "event"), got
    assert httpx.get(url, headers=_bearer(secret)).status_code == 401


def test_the_stream_keeps_feed_order_when_transactions_commit_out_of_order(
    server: ApiServer,
) -> None:
    """An event whose transaction commits after a later one's is still delivered, first."""
    alert = pm25_alert(server, 3)
    q: queue.Queue[Any] = queue.Queue()
    threading.Thread(
        target=_listen,
        args=(f"{server.url}/api/v1/events/alerts", server.tokens["viewer"], q),
        daemon=True,
    ).start()
    assert q.get(timeout=10) == ("status", 200)
    assert q.get(timeout=10)[0] == "comment"
    sql = (
        "INSERT INTO alert_feed (alert_id, kind, at, actor) "
        "VALUES (%s, 'commented', now(), %s) RETURNING id"
    )
    with psycopg.connect(server.db_url) as slow, psycopg.connect(server.db_url) as fast:
        first = slow.execute(sql, (alert["id"], "slow-writer")).fetchone()  # not committed
        second = fast.execute(sql, (alert["id"], "fast-writer")).fetchone()
        fast.commit()
        assert first is not None and second is not None and first[0] < second[0]
        time.sleep(1.5)
        early = []
        while not q.empty():
            kind, item = q.get()
            if kind == "event":
                early.append(json.loads(item["data"])["actor"])
        assert "fast-writer" not in early  # held back behind the open transaction
        slow.commit()
    got = _next_event(q, lambda d: d["actor"] in ("slow-writer", "fast-writer"))
    assert got["actor"] == "slow-writer"
    assert _next_event(q, lambda d: d["actor"] == "fast-writer")["id"] == second[0]
