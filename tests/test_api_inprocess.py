"""The HTTP API in the test process (tests/inprocess.py) against a real database holding the
demo scenario, with alerts raised by the rule engine: the role matrix, tokens, alerts and
their workflow, listings and paging, devices, readings, silences, rules, KPIs, quarantine,
acknowledgement links, the OpenAPI document and hostile input. What needs a real server
process (the live stream, several workers, start-up and shutdown) stays in tests/test_api.py
and the modules around it."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api.alert_series import LEAD
from api.deps import ApiState
from tests.apiserver import CATALOGUE, link_for, pond
from tests.inprocess import (
    BASE_URL,
    InProcessApi,
    age_token_cache,
    client,
    inprocess_api,
    running,
)
from urbanpulse.contract import default_registry
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.links import link_key, sign
from urbanpulse.rulefmt.aqi import iaqi, load_standard

pytestmark = pytest.mark.anyio

ROLES = ("viewer", "operator", "admin")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the module: the application's pools live on it from the module's
    start-up to its shutdown."""
    return "asyncio"


@pytest.fixture(scope="module")
async def api(anyio_backend: str) -> AsyncIterator[InProcessApi]:
    async with inprocess_api() as running_api:
        yield running_api


async def pm25_alert(api: InProcessApi, index: int) -> dict[str, Any]:
    """One of the demo's four firing PM2.5 alerts, by position: each test owns its own."""
    async with api.client("viewer") as c:
        items: list[dict[str, Any]] = (
            await c.get("/api/v1/alerts", params={"rule_id": "air.pm25_24h_75"})
        ).json()["items"]
    return sorted(items, key=lambda a: str(a["entity"]))[index]


def audit_rows(api: InProcessApi, target: str) -> list[tuple[str, str]]:
    with psycopg.connect(api.db_url) as conn:
        rows = conn.execute(
            "SELECT actor, action FROM audit_log WHERE target = %s ORDER BY id", (target,)
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


async def test_each_role_is_allowed_and_refused_where_it_should_be(api: InProcessApi) -> None:
    alert = (await pm25_alert(api, 3))["id"]
    n = 0
    async with api.client("admin") as admin:
        for method, path, body, least in WRITES:
            for role in ROLES:
                n += 1
                silence = (  # a fresh silence to expire each time
                    await admin.post(
                        "/api/v1/silences",
                        json={
                            "matchers": {"entity": f"matrix-{n}"},
                            "ends_at": _in(3600),
                            "reason": "role matrix",
                        },
                    )
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
                async with api.client(role) as c:
                    got = await c.request(method, url, json=payload)
                if Role(role).allows(Role(least)):
                    assert got.status_code < 300, (role, method, url, got.text)
                else:
                    assert got.status_code == 403, (role, method, url, got.text)
                    assert least in got.json()["detail"]
    # and nobody without a token
    async with api.client() as anonymous:
        for method, path, _, _ in WRITES:
            got = await anonymous.request(method, path.format(alert=alert, silence=1))
            assert got.status_code == 401
            assert got.headers["www-authenticate"] == "Bearer"


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
async def test_invalid_tokens_are_refused(api: InProcessApi, header: str) -> None:
    async with api.client() as c:
        got = await c.get("/api/v1/alerts", headers=[(b"Authorization", header.encode("utf-8"))])
    assert got.status_code == 401, got.text


async def test_expired_and_revoked_tokens_stop_working(api: InProcessApi) -> None:
    with psycopg.connect(api.db_url) as conn:
        expired, _ = create_token(conn, "expired-one", Role.ADMIN, expires_in=timedelta(0))
        short, _ = create_token(conn, "revoked-one", Role.VIEWER)
    async with api.client() as c, api.client("admin") as admin:
        assert (await c.get("/api/v1/me", headers=_bearer(expired))).status_code == 401
        assert (await c.get("/api/v1/me", headers=_bearer(short))).status_code == 200
        assert (await admin.delete("/api/v1/tokens/revoked-one")).status_code == 204
        assert (await admin.delete("/api/v1/tokens/revoked-one")).status_code == 404
        assert (await c.get("/api/v1/me", headers=_bearer(short))).status_code == 401
    assert audit_rows(api, "token:revoked-one") == [("test-admin", "token.revoke")]


async def test_tokens_are_created_hashed_and_shown_once(api: InProcessApi) -> None:
    async with api.client("admin") as admin:
        made = await admin.post(
            "/api/v1/tokens",
            json={"name": "grafana-bridge", "role": "viewer", "expires_in_days": 30},
        )
        assert made.status_code == 201
        secret = made.json()["token"]
        again = await admin.post(
            "/api/v1/tokens", json={"name": "grafana-bridge", "role": "viewer"}
        )
        assert again.status_code == 409
        listed = (await admin.get("/api/v1/tokens")).json()
    assert all("token" not in t for t in listed)
    async with client(api.app, secret) as c:
        assert (await c.get("/api/v1/me")).json() == {
            "name": "grafana-bridge",
            "role": "viewer",
            "department": None,
        }
    with psycopg.connect(api.db_url) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM api_tokens WHERE name = 'grafana-bridge'"
        ).fetchone()
    assert stored is not None and secret.encode() not in bytes(stored[0])


async def test_tokens_cli_creates_lists_and_revokes(
    api: InProcessApi, capsys: pytest.CaptureFixture[str]
) -> None:
    from urbanpulse.cli import main

    db = ["--database-url", api.db_url]
    assert (
        main(
            [*db, "tokens", "create", "li.na", "--role", "operator", "--department", "区生态环境局"]
        )
        == 0
    )
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("upt_")
    async with client(api.app, secret) as c:
        me = (await c.get("/api/v1/me")).json()
        assert me == {"name": "li.na", "role": "operator", "department": "区生态环境局"}
        assert main([*db, "tokens", "create", "li.na", "--role", "viewer"]) == 1
        assert "exists" in capsys.readouterr().err
        assert main([*db, "tokens", "list"]) == 0
        listed = capsys.readouterr().out
        assert "li.na" in listed and secret not in listed
        assert main([*db, "tokens", "revoke", "li.na"]) == 0
        assert main([*db, "tokens", "revoke", "li.na"]) == 1
        # revoked elsewhere: the API still trusts what it cached, until the cache's life is out
        assert (await c.get("/api/v1/me")).status_code == 200
        age_token_cache(api.app)
        assert (await c.get("/api/v1/me")).status_code == 401


# --- alerts ------------------------------------------------------------------------------------


async def test_acknowledge_assign_comment_resolve_with_history_and_audit(
    api: InProcessApi,
) -> None:
    alert = await pm25_alert(api, 0)
    aid = alert["id"]
    assert alert["status"] == "firing" and alert["acknowledged"] is None
    async with api.client("operator") as c:
        first = await c.post(f"/api/v1/alerts/{aid}/ack", json={"note": "收到"})
        assert first.status_code == 200
        ack = first.json()["acknowledged"]
        assert ack["acked_by"] == "test-operator" and ack["note"] == "收到"
        again = await c.post(f"/api/v1/alerts/{aid}/ack")  # harmless: the first stays
        assert again.status_code == 200 and again.json()["acknowledged"] == ack
        assigned = await c.post(f"/api/v1/alerts/{aid}/assign", json={"assignee": "王工"})
        assert assigned.json()["assignee"] == "王工"
        commented = await c.post(f"/api/v1/alerts/{aid}/comments", json={"body": "已派人"})
        assert commented.status_code == 201
        done = await c.post(f"/api/v1/alerts/{aid}/resolve", json={"note": "传感器已清理"})
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
        assert (await c.get(f"/api/v1/alerts/{aid}/events")).json() == body["events"]
        # a resolved alert cannot be acknowledged, assigned or resolved again
        late = await c.post(f"/api/v1/alerts/{aid}/ack")
        assert late.status_code == 409 and "resolved" in late.json()["detail"]
        reassigned = await c.post(f"/api/v1/alerts/{aid}/assign", json={"assignee": "x"})
        assert reassigned.status_code == 409
        assert (
            await c.post(f"/api/v1/alerts/{aid}/resolve", json={"note": "x"})
        ).status_code == 409
        assert (await c.get("/api/v1/alerts/999999")).status_code == 404
        assert (await c.post("/api/v1/alerts/999999/ack")).status_code == 404
    assert audit_rows(api, f"alert:{aid}") == [
        ("test-operator", "alert.acknowledge"),
        ("test-operator", "alert.assign"),
        ("test-operator", "alert.comment"),
        ("test-operator", "alert.resolve"),
    ]
    with psycopg.connect(api.db_url) as conn:
        # the evaluator starts afresh for the entity, and the department hears it was resolved
        assert conn.execute(
            "SELECT count(*) FROM rule_states WHERE alert_id = %s", (aid,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT kind FROM notify_outbox WHERE alert_id = %s ORDER BY id", (aid,)
        ).fetchall() == [("firing",), ("resolved",)]


async def test_a_department_operator_acts_only_on_its_departments_alerts(
    api: InProcessApi,
) -> None:
    alert = await pm25_alert(api, 1)  # 区生态环境局's; the flood operator acts for 区城市管理局
    async with api.client("flood_operator") as c:
        refused = await c.post(f"/api/v1/alerts/{alert['id']}/ack")
        assert refused.status_code == 403 and "区生态环境局" in refused.json()["detail"]
        # silences are confined to the department too
        made = await c.post(
            "/api/v1/silences",
            json={"matchers": {"zone": "老城片区"}, "ends_at": _in(600), "reason": "清淤"},
        )
        assert made.status_code == 201
        assert made.json()["matchers"] == {"zone": "老城片区", "owner": "区城市管理局"}
        other = await c.post(
            "/api/v1/silences",
            json={"matchers": {"owner": "区生态环境局"}, "ends_at": _in(600), "reason": "x"},
        )
        assert other.status_code == 403
    async with api.client("operator") as c:
        assert (await c.post(f"/api/v1/alerts/{alert['id']}/ack")).status_code == 200


async def test_alert_listing_filters_pages_and_exports(api: InProcessApi) -> None:
    with psycopg.connect(api.db_url) as conn:
        total = conn.execute("SELECT count(*) FROM alerts").fetchone()
        air = conn.execute(
            "SELECT count(*) FROM alerts WHERE owner = '区生态环境局' AND severity = 'warning'"
        ).fetchone()
    assert total is not None and air is not None
    async with api.client("viewer") as c:
        seen: list[int] = []
        cursor = None
        while True:
            page = await c.get(
                "/api/v1/alerts", params={"limit": 7, **({"cursor": cursor} if cursor else {})}
            )
            assert page.status_code == 200
            seen += [a["id"] for a in page.json()["items"]]
            cursor = page.json()["next"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == total[0]
        got = (
            await c.get(
                "/api/v1/alerts",
                params={"owner": "区生态环境局", "severity": "warning", "limit": 1000},
            )
        ).json()["items"]
        assert len(got) == air[0]
        firing = await c.get("/api/v1/alerts", params=[("status", "firing"), ("status", "pending")])
        assert {a["status"] for a in firing.json()["items"]} <= {"firing", "pending"}
        zone = (await c.get("/api/v1/alerts", params={"zone": "DMA-XLH"})).json()["items"]
        assert zone and {a["zone"] for a in zone} == {"DMA-XLH"}
        later = datetime.fromtimestamp(api.plan.end + 86400, UTC).isoformat()
        since = (await c.get("/api/v1/alerts", params={"since": later})).json()["items"]
        assert since == []
        exported = await c.get("/api/v1/alerts", params={"format": "csv", "owner": "区生态环境局"})
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
        listed = await c.get("/api/v1/alerts", params={"owner": "区生态环境局", "limit": 1000})
        assert len(rows) == len(listed.json()["items"])
        assert rows[0]["title_zh"] and rows[0]["owner"] == "区生态环境局"
        detail = (await c.get(f"/api/v1/alerts/{rows[0]['id']}")).json()
        assert detail["clause"] and detail["threshold"] and detail["events"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+08:00", detail["pending_at"])


async def test_an_alerts_series_is_what_its_rule_read_around_the_breach(
    api: InProcessApi,
) -> None:
    air = await pm25_alert(api, 0)
    async with api.client("viewer") as c:
        got = await c.get(f"/api/v1/alerts/{air['id']}/series")
        assert got.status_code == 200, got.text
        s = got.json()
        water = (await c.get("/api/v1/alerts", params={"rule_id": "water.leakage_daily"})).json()[
            "items"
        ]
        w = (await c.get(f"/api/v1/alerts/{water[0]['id']}/series")).json()
        assert (await c.get("/api/v1/alerts/999999/series")).status_code == 404
    async with api.client() as anonymous:
        assert (await anonymous.get(f"/api/v1/alerts/{air['id']}/series")).status_code == 401
    assert (s["kind"], s["name"], s["threshold"], s["clear"]) == ("metric", "pm25", 75, 70)
    assert s["unit"] == default_registry().metrics["pm25"].unit
    assert 0 < len(s["points"]) <= 60 and s["step_s"] % 60 == 0
    start, end = datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])
    assert start <= datetime.fromisoformat(air["pending_at"]) - timedelta(hours=6) < end
    # each point is the mean of the device's readings in its bucket
    first = s["points"][0]
    t0 = datetime.fromisoformat(first["ts"])
    with psycopg.connect(api.db_url) as conn:
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


def _old_ponding(db_url: str, age: timedelta) -> None:
    """Two carriageway gauges flood `age` before the run; the ponding rule raises an alert on
    each, and one of them clears."""
    t0 = (datetime.now(UTC) - age).replace(second=0, microsecond=0)
    depths: list[tuple[str, datetime, float]] = []
    with psycopg.connect(db_url) as conn:
        for device, clears in (("fl-old-open", False), ("fl-old-done", True)):
            conn.execute(
                "INSERT INTO devices (device_id, domain, kind, name, report_interval_s, "
                "attributes) VALUES (%s, 'flood', 'depth_gauge', '老城下穿道', 60, "
                "'{\"carriageway\": true}')",
                (device,),
            )
            depth = [2.0] * 30 + [31.0] * 15 + ([1.0] * 20 if clears else [])
            depths += [(device, t0 + timedelta(minutes=m), v) for m, v in enumerate(depth)]
    pond(db_url, depths, since=t0, now=t0 + timedelta(minutes=70))


async def test_an_alert_older_than_two_weeks_draws_its_chart(db_url: str) -> None:
    """40 days old, older than the 14 days the chart once counted back from now: the chart
    still shows the breach, on the console's route and on a notification link's, for an alert
    still open (its gauge fell silent) and for one resolved."""
    age = timedelta(days=40)
    _old_ponding(db_url, age)
    with psycopg.connect(db_url) as conn:
        token, _ = create_token(conn, "old-viewer", Role.VIEWER)
    async with running(db_url) as app, client(app, token) as c:
        found = (await c.get("/api/v1/alerts", params={"rule_id": "flood.ponding_15cm"})).json()
        got = {a["entity"]: a for a in found["items"]}
        assert {d: a["status"] for d, a in got.items()} == {
            "fl-old-open": "firing",
            "fl-old-done": "resolved",
        }
        for alert in got.values():
            s = (await c.get(f"/api/v1/alerts/{alert['id']}/series")).json()
            pending = datetime.fromisoformat(alert["pending_at"])
            start, end = datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])
            assert start <= pending - LEAD and pending < end < datetime.now(UTC) - age / 2
            values = [p["value"] for p in s["points"]]
            assert values and max(values) >= 15 > min(values), s  # the rise is in the chart
        link = link_for(db_url, BASE_URL, got["fl-old-open"]["id"], "区住房城乡建委")
        token_part = link.rsplit("/", 1)[1]
        async with client(app) as anonymous:
            linked = (await anonymous.get(f"/api/v1/ack/{token_part}/series")).json()
        assert linked["alert_id"] == got["fl-old-open"]["id"] and linked["points"]


# --- devices, readings, series -----------------------------------------------------------------


async def test_devices_provision_update_list_and_health(api: InProcessApi) -> None:
    async with api.client("admin") as c:
        new = {
            "device_id": "fl-test-101",
            "domain": "flood",
            "kind": "depth_gauge",
            "name": "人民广场下穿道",
            "zone": "老城片区",
            "report_interval_s": 60,
            "attributes": {"carriageway": True},
        }
        made = await c.post("/api/v1/devices", json=new)
        assert made.status_code == 201
        assert made.json()["health"] == {"last_seen": None, "state": "never"}
        assert (await c.post("/api/v1/devices", json=new)).status_code == 409
        changed = await c.patch(
            "/api/v1/devices/fl-test-101", json={"name": "下穿道", "zone": None}
        )
        assert changed.json()["name"] == "下穿道" and changed.json()["zone"] is None
        assert (await c.patch("/api/v1/devices/nope", json={"name": "x"})).status_code == 404
        assert (await c.get("/api/v1/devices/fl-test-101/latest")).json() == []
        assert (await c.get("/api/v1/devices/nope/latest")).status_code == 404
    assert [a for _, a in audit_rows(api, "device:fl-test-101")] == [
        "device.create",
        "device.update",
    ]
    async with api.client("viewer") as c:
        with psycopg.connect(api.db_url) as conn:
            ids: list[str] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 9}
                if cursor:
                    params["cursor"] = cursor
                page = (await c.get("/api/v1/devices", params=params)).json()
                ids += [d["device_id"] for d in page["items"]]
                if not (cursor := page["next"]):
                    break
            expect = [r[0] for r in conn.execute("SELECT device_id FROM devices ORDER BY 1")]
            assert ids == expect
            aq = (await c.get("/api/v1/devices/aq-lc")).json()
            last = conn.execute("SELECT max(ts) FROM readings WHERE device_id = 'aq-lc'").fetchone()
            assert last is not None
            assert datetime.fromisoformat(aq["health"]["last_seen"]) == last[0]
            assert aq["health"]["state"] == "offline"  # the scenario ended days ago
            never = (await c.get("/api/v1/devices", params={"state": "never"})).json()["items"]
            assert "fl-test-101" in [d["device_id"] for d in never]
            latest = (await c.get("/api/v1/devices/aq-lc/latest")).json()
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
        many = (
            await c.get(
                "/api/v1/latest",
                params=[("device_id", "aq-lc"), ("device_id", "aq-fhh"), ("metric", "pm25")],
            )
        ).json()
        assert {(v["device_id"], v["metric"]) for v in many} == {
            ("aq-lc", "pm25"),
            ("aq-fhh", "pm25"),
        }


async def test_readings_raw_bucketed_paged_and_csv_match_the_database(api: InProcessApi) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    end = datetime.fromtimestamp(api.plan.end, tz)
    start = end - timedelta(days=1)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    with psycopg.connect(api.db_url) as conn:
        raw = conn.execute(
            "SELECT device_id, metric, ts, value FROM readings WHERE device_id IN ('aq-lc', "
            "'aq-fhh') AND metric = 'pm25' AND ts >= %s AND ts < %s ORDER BY 1, 2, 3",
            (start, end),
        ).fetchall()
        expect = conn.execute(
            "SELECT date_bin('6 hours', ts, '2000-01-01 00:00+08') b, max(value), count(*) "
            "FROM readings WHERE device_id = 'aq-lc' AND metric = 'pm25' AND ts >= %s "
            "AND ts < %s GROUP BY 1 ORDER BY 1",
            (start, end),
        ).fetchall()
    async with api.client("viewer") as c:
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
            page = (await c.get("/api/v1/readings", params=params)).json()
            got += [
                (r["device_id"], r["metric"], datetime.fromisoformat(r["ts"]), r["value"])
                for r in page["items"]
            ]
            if not (cursor := page["next"]):
                break
        assert got == raw and len(raw) > 10
        bucketed = (
            await c.get(
                "/api/v1/readings",
                params={
                    "device_id": "aq-lc",
                    "metric": "pm25",
                    "bucket": "6h",
                    "agg": "max",
                    **window,
                },
            )
        ).json()["items"]
        assert [(datetime.fromisoformat(r["ts"]), r["value"], r["count"]) for r in bucketed] == [
            tuple(e) for e in expect
        ]
        exported = await c.get(
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
        aqi = (
            await c.get("/api/v1/series/air.aqi_hourly", params={"entity": "aq-lc", **window})
        ).json()
        assert len(aqi["items"]) == 24 and aqi["items"][0]["detail"]["category"]
        assert "air.aqi_hourly" in [s["id"] for s in (await c.get("/api/v1/series")).json()]
        assert (await c.get("/api/v1/series/no.such_series")).status_code == 404


# --- silences, rules, KPIs, quarantine, system -------------------------------------------------


async def test_silences_are_created_listed_and_expired(api: InProcessApi) -> None:
    async with api.client("operator") as c:
        made = await c.post(
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
        assert sid in [s["id"] for s in (await c.get("/api/v1/silences")).json()]
        assert (await c.post(f"/api/v1/silences/{sid}/expire")).status_code == 200
        assert (await c.post(f"/api/v1/silences/{sid}/expire")).status_code == 409
        assert (await c.post("/api/v1/silences/999999/expire")).status_code == 404
        assert sid not in [s["id"] for s in (await c.get("/api/v1/silences")).json()]
        ended = await c.get("/api/v1/silences", params={"include_ended": True})
        assert sid in [s["id"] for s in ended.json()]
        bad = await c.post(
            "/api/v1/silences",
            json={"matchers": {"colour": "red"}, "ends_at": _in(60), "reason": "x"},
        )
        assert bad.status_code == 422 and "matchers" in json.dumps(bad.json())
        past = await c.post(
            "/api/v1/silences",
            json={"matchers": {"zone": "x"}, "ends_at": _in(-60), "reason": "x"},
        )
        assert past.status_code == 422 and "ends_at" in past.json()["detail"]
    assert [a for _, a in audit_rows(api, f"silence:{sid}")] == [
        "silence.create",
        "silence.expire",
    ]


async def test_rules_kpis_and_quarantine(api: InProcessApi) -> None:
    async with api.client("viewer") as c:
        rules = (await c.get("/api/v1/rules")).json()
        ids = {r["id"] for r in rules}
        assert {r.id for r in CATALOGUE.rules} | {k.id for k in CATALOGUE.kpis} <= ids
        ponding = (await c.get("/api/v1/rules/flood.ponding_15cm")).json()
        assert ponding["health"]["healthy"] and ponding["health"]["evaluations"] > 0
        assert ponding["owner"] == "区住房城乡建委" and ponding["threshold"].startswith(">= 15")
        assert (await c.get("/api/v1/rules/no.such_rule")).status_code == 404
        kpis = (await c.get("/api/v1/kpis")).json()
        assert {k["kpi_id"] for k in kpis} == {k.id for k in CATALOGUE.kpis}
        heavy = [k for k in kpis if k["kpi_id"] == "air.heavy_pollution_days_year"]
        assert any(k["entity"] == "全区" and k["value"] == 1 and not k["compliant"] for k in heavy)
        one = (await c.get("/api/v1/kpis/air.heavy_pollution_days_year")).json()
        assert one and {k["kpi_id"] for k in one} == {"air.heavy_pollution_days_year"}
        assert (await c.get("/api/v1/kpis", params={"owner": "区城市管理局"})).json()
        summary = (await c.get("/api/v1/quarantine/summary")).json()
        assert {s["reason"] for s in summary} >= {"bad_json", "out_of_range"}
        page = (await c.get("/api/v1/quarantine", params={"reason": "out_of_range"})).json()[
            "items"
        ]
        assert page and page[0]["payload_preview"].startswith("{")
        assert (await c.post("/api/v1/quarantine/replay")).status_code == 403
    async with api.client("admin") as c:
        result = (await c.post("/api/v1/quarantine/replay", json={"reason": "out_of_range"})).json()
        assert result["replayed"] == 0 and result["still_failing"] == len(page)
    assert audit_rows(api, "quarantine")[-1] == ("test-admin", "quarantine.replay")


async def test_health_readiness_metrics_and_openapi(api: InProcessApi) -> None:
    async with api.client() as anonymous, api.client("viewer") as c:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        ready = (await anonymous.get("/readyz")).json()
        assert ready["status"] == "ok" and ready["schema"] >= 5
        await c.get("/api/v1/alerts")
        metrics = (await anonymous.get("/metrics")).text
        spec = (await anonymous.get("/openapi.json")).json()
    assert (
        'urbanpulse_api_requests_total{method="GET",route="/api/v1/alerts",status="200"}' in metrics
    )
    ops = [(m, p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert len(ops) >= 30
    for method, path, op in ops:
        assert op.get("summary"), (method, path)
        if path.startswith("/api/v1/") and "/ack/" not in path:
            assert "401" in op["responses"] or path in ("/api/v1/ack/{token}",), (method, path)
    schemas = spec["components"]["schemas"]
    assert schemas["AlertPublic"]["properties"]["owner"]["examples"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_cors_is_off_by_default_and_configurable(api: InProcessApi) -> None:
    pre = {"Origin": "https://ops.example", "Access-Control-Request-Method": "GET"}
    async with api.client() as c:
        off = await c.options("/api/v1/alerts", headers=pre)
    assert "access-control-allow-origin" not in off.headers
    async with (
        running(api.db_url, api_cors_origins="https://ops.example") as app,
        client(app) as c,
    ):
        on = await c.options("/api/v1/alerts", headers=pre)
        assert on.headers["access-control-allow-origin"] == "https://ops.example"
        other = await c.options("/api/v1/alerts", headers={**pre, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- acknowledgement links -------------------------------------------------------------------


async def test_a_notifications_link_acknowledges_its_alert_once(api: InProcessApi) -> None:
    alert = await pm25_alert(api, 2)
    token = link_for(api.db_url, api.url, alert["id"]).rsplit("/", 1)[1]
    with psycopg.connect(api.db_url) as conn:
        key = link_key(conn)
    async with api.client() as c:
        page = await c.get(f"/ack/{token}")
        assert page.status_code == 200 and alert["title_zh"] in page.text and "<form" in page.text
        assert page.headers["referrer-policy"] == "no-referrer"  # the link's token stays here
        as_json = (await c.get(f"/api/v1/ack/{token}")).json()
        assert as_json["id"] == alert["id"]
        drawn = (await c.get(f"/api/v1/ack/{token}/series")).json()
        assert drawn["alert_id"] == alert["id"] and drawn["points"]
        done = await c.post(f"/ack/{token}")
        assert done.status_code == 200 and "已确认" in done.text
        again = await c.post(f"/api/v1/ack/{token}")
        assert again.status_code == 200
        assert again.json()["acknowledged"]["acked_by"] == "link:区生态环境局"
        assert audit_rows(api, f"alert:{alert['id']}") == [
            ("link:区生态环境局", "alert.acknowledge")
        ]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert (await c.post(f"/api/v1/ack/{forged}")).status_code == 403
        assert (await c.get(f"/api/v1/ack/{forged}/series")).status_code == 403
        expired = sign(key, alert["id"], "区生态环境局", int(time.time()) - 1)
        refused = await c.post(f"/api/v1/ack/{expired}")
        assert refused.status_code == 403 and "expired" in refused.json()["detail"]
        assert (await c.get(f"/ack/{expired}")).status_code == 403
        other_key = sign(b"k" * 32, alert["id"], "区生态环境局", int(time.time()) + 60)
        assert (await c.post(f"/api/v1/ack/{other_key}")).status_code == 403


async def test_the_api_reads_now_from_its_clock(api: InProcessApi) -> None:
    """Links' expiry and a silence's default start come from the injected clock: an hour-long
    link works now and is refused as expired on an application whose clock is two hours on."""
    alert = await pm25_alert(api, 3)
    token = link_for(api.db_url, api.url, alert["id"]).rsplit("/", 1)[1]  # valid for 3600 s
    later = time.time() + 7200
    async with running(api.db_url, clock=lambda: later) as ahead:
        async with client(ahead) as c:
            refused = await c.get(f"/api/v1/ack/{token}")
            assert refused.status_code == 403 and "expired" in refused.json()["detail"]
        async with client(ahead, api.tokens["operator"]) as c:
            made = await c.post(
                "/api/v1/silences",
                json={
                    "matchers": {"rule_id": "clock.test"},
                    "ends_at": datetime.fromtimestamp(later + 600, UTC).isoformat(),
                    "reason": "clock",
                },
            )
            assert made.status_code == 201, made.text
            starts = datetime.fromisoformat(made.json()["starts_at"]).timestamp()
            assert abs(starts - later) < 1
    async with api.client() as c:
        assert (await c.get(f"/api/v1/ack/{token}")).status_code == 200


# --- hostile input -----------------------------------------------------------------------------

INJECTIONS = ["' OR '1'='1", "x'; DROP TABLE alerts; --", "区城市管理局' --", "%' OR 1=1 --"]


async def test_injection_attempts_in_filters_find_nothing_and_harm_nothing(
    api: InProcessApi,
) -> None:
    async with api.client("viewer") as c:
        for bad in INJECTIONS:
            for field in ("owner", "zone"):
                got = await c.get("/api/v1/alerts", params={field: bad})
                assert got.status_code == 200 and got.json()["items"] == [], (field, bad)
            assert (await c.get("/api/v1/alerts", params={"entity": bad})).status_code == 422
            devices = await c.get("/api/v1/devices", params={"zone": bad})
            assert devices.json()["items"] == []
            assert (await c.get("/api/v1/readings", params={"device_id": bad})).status_code == 422
            assert (await c.get("/api/v1/alerts", params={"cursor": bad})).status_code == 422
            series = await c.get("/api/v1/series/air.aqi_hourly", params={"entity": bad})
            assert series.json()["items"] == []
        bad_status = await c.get("/api/v1/alerts", params={"status": "firing' OR 1=1"})
        assert bad_status.status_code == 422
    with psycopg.connect(api.db_url) as conn:
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
async def test_huge_ranges_limits_and_malformed_values_are_refused_by_name(
    api: InProcessApi, path: str, params: dict[str, Any], field: str
) -> None:
    async with api.client("viewer") as c:
        got = await c.get(path, params=params)
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
async def test_malformed_bodies_are_refused(api: InProcessApi, body: bytes) -> None:
    alert = await pm25_alert(api, 3)
    async with api.client("operator") as c:
        got = await c.post(
            f"/api/v1/alerts/{alert['id']}/ack",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert got.status_code == 422, got.text


def test_the_clocks_now_is_exact_arithmetic_across_daylight_saving() -> None:
    """A city with DST: the default range "a day before now" is 24 hours long even on the day
    the clocks change (2026-03-29 in Berlin has 23 wall-clock hours)."""
    after_the_change = datetime(2026, 3, 29, 12, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    state = SimpleNamespace(clock=lambda: after_the_change, tz=ZoneInfo("Europe/Berlin"))
    now = ApiState.now(state)  # type: ignore[arg-type]
    assert now.timestamp() == after_the_change
    assert now.timestamp() - (now - timedelta(days=1)).timestamp() == 86400
