"""The HTTP API against a real server process: the live alert stream (an endless response needs
a real socket) with alerts raised by the rule engine, and the alert chart's window (pure).
Every other endpoint is tested in the test process, tests/test_api_inprocess.py."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from api.alert_series import LEAD, MAX_SPAN, window
from tests.apiserver import (
    PONDING_POINT,
    ApiServer,
    api_server,
    raise_ponding,
)
from urbanpulse.db.tokens import Role, create_token


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


# --- the series window (pure) -----------------------------------------------------------------


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
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 401


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
