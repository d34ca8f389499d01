"""Load benchmark of the HTTP API, beside the raw SQL time of the same queries, in one run.

    python -m bench.api [--devices 10000] [--days 30] [--rate 200] [--connections 32]
                        [--clients 16] [--seconds 15] [--workers 1] [--reuse] [--json FILE]

Builds its own database (kept between runs with --reuse): `--devices` devices in a city's mix
(bench.rules's fleet) with `--days` of hourly readings each (the six pollutants for the air
stations), and a month of alerts with their history (the newest still firing). Then, for each
endpoint the operators' screens hit most:

  alerts      GET /api/v1/alerts?status=firing&limit=100   (the alert list)
  alerts_dept GET /api/v1/alerts?owner=…&limit=50            (a department's recent alerts)
  latest      GET /api/v1/devices/{random}/latest             (latest values of a device)
  day_series  GET /api/v1/readings?device_id=…&bucket=1h&…    (one day of one device, bucketed)

it times the endpoint's own SQL alone (one connection, sequential: the floor), then
`urbanpulse api` under a steady load (`--rate` requests per second spread over `--connections`
connections, latency counted from when each request was due) and at its ceiling (`--clients`
clients sending back to back). `/healthz` under the same clients shows what the framework and
the load generator cost without the database. The clients run in this process, the server in
its own; both share the machine with PostgreSQL, as they would on a small server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg.types.json import Jsonb

from api.deps import rule_texts
from api.routes import alerts as alerts_route
from api.routes import devices as devices_route
from api.routes import readings as readings_route
from bench.rules import _fleet
from urbanpulse.contract import default_registry
from urbanpulse.db.connect import database_name, ensure_database
from urbanpulse.db.devices import upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.rulefmt.model import catalogue_files, load_rules
from urbanpulse.serve import start_api, stop_process

POLLUTANTS = ("pm25", "pm10", "so2", "no2", "o3", "co")
METRIC = {
    "inlet_meter": ["flow"],
    "customer_meter": ["volume"],
    "depth_gauge": ["depth"],
    "car_park": ["occupied"],
    "aq_station": list(POLLUTANTS),
}
END = datetime(2026, 11, 1, tzinfo=UTC)  # fixed: the same data in every run


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def seed(url: str, devices: int, days: int) -> dict[str, int]:
    start = END - timedelta(days=days)
    migrate(url, load_policy(), timescale_mode="auto")
    with psycopg.connect(url) as conn:
        specs = _fleet(devices)
        upsert_devices(conn, specs)
        conn.execute("TRUNCATE readings")
        t = time.perf_counter()
        for kind, metrics in METRIC.items():
            _say(f"  readings of {kind} …")
            conn.execute(
                """
                INSERT INTO readings (device_id, metric, ts, value, ingested_at)
                SELECT d.device_id, m, t, round((random() * 100)::numeric, 2), t
                  FROM devices d CROSS JOIN unnest(%s::text[]) m
                 CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz - interval '1 hour',
                                            interval '1 hour') t
                 WHERE d.kind = %s
                """,
                (metrics, start, END, kind),
            )
            conn.commit()
        _say(f"  readings stored in {time.perf_counter() - t:.0f} s")
        # a month of alerts: one in 20 devices raised one every few days; the newest still firing
        conn.execute("TRUNCATE alerts CASCADE")
        conn.execute(
            """
            INSERT INTO alerts (rule_id, entity, status, severity, owner, labels, value,
                                pending_at, started_at, ended_at, opened_at)
            SELECT r.rule_id, d.device_id,
                   CASE WHEN k = 0 AND d.n %% 7 = 0 THEN 'firing' ELSE 'resolved' END,
                   r.severity, r.owner, '{}'::jsonb, 20 + random() * 30,
                   t, t, CASE WHEN k = 0 AND d.n %% 7 = 0 THEN NULL ELSE t + interval '2 hours' END,
                   t
              FROM (SELECT device_id, kind, row_number() OVER (ORDER BY device_id) AS n
                      FROM devices) d
              JOIN (VALUES ('customer_meter', 'device.offline_water', 'warning', %(ops)s),
                           ('inlet_meter', 'device.stuck_water', 'warning', %(ops)s),
                           ('depth_gauge', 'flood.ponding_15cm', 'critical', %(water)s),
                           ('car_park', 'parking.occupancy_85', 'warning', %(park)s),
                           ('aq_station', 'air.aqi_hourly_100', 'warning', %(air)s))
                   AS r(kind, rule_id, severity, owner) ON r.kind = d.kind
             CROSS JOIN LATERAL generate_series(0, 5) k
             CROSS JOIN LATERAL (SELECT %(end)s::timestamptz
                                        - (k * 5 + d.n %% 5) * interval '1 day'
                                        - (d.n %% 24) * interval '1 hour' AS t) tt
             WHERE d.n %% 20 = 0
            """,
            {
                "ops": "运维中心",
                "water": "区住房城乡建委",
                "park": "区城市管理局",
                "air": "区生态环境局",
                "end": END,
            },
        )
        conn.execute(
            """
            INSERT INTO alert_events (alert_id, from_status, to_status, at, value)
            SELECT id, 'inactive', 'pending', pending_at, value FROM alerts
            UNION ALL SELECT id, 'pending', 'firing', started_at, value FROM alerts
            UNION ALL SELECT id, 'firing', 'resolved', ended_at, value FROM alerts
                       WHERE ended_at IS NOT NULL
            """
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM readings), "
            "(SELECT count(*) FROM alerts), (SELECT count(*) FROM alerts WHERE status = 'firing')"
        ).fetchone()
    assert counts is not None
    return dict(zip(("devices", "readings", "alerts", "firing"), map(int, counts), strict=True))


# --- the workloads: the API request and the same SQL, with the same random arguments -----------


def _day(rng: random.Random, days: int) -> tuple[datetime, datetime]:
    start = END - timedelta(days=rng.randint(1, days))
    return start, start + timedelta(days=1)


def workloads(
    devices: list[str], owners: list[str], days: int, meta: Jsonb
) -> dict[str, tuple[Callable[[random.Random], tuple[str, dict[str, Any]]], Callable[..., Any]]]:
    """name → (request maker, SQL runner) with the same random choice for both."""

    def alerts_req(_rng: random.Random) -> tuple[str, dict[str, Any]]:
        return "/api/v1/alerts", {"status": "firing", "limit": 100}

    def dept_req(rng: random.Random) -> tuple[str, dict[str, Any]]:
        return "/api/v1/alerts", {"owner": rng.choice(owners), "limit": 50}

    def latest_req(rng: random.Random) -> tuple[str, dict[str, Any]]:
        return f"/api/v1/devices/{rng.choice(devices)}/latest", {}

    def series_req(rng: random.Random) -> tuple[str, dict[str, Any]]:
        lo, hi = _day(rng, days)
        return "/api/v1/readings", {
            "device_id": rng.choice(devices),
            "start": lo.isoformat(),
            "end": hi.isoformat(),
            "bucket": "1h",
        }

    def alerts_sql(conn: psycopg.Connection[Any], _rng: random.Random) -> None:
        params = _alert_params(meta, status=["firing"], limit=101)
        conn.execute(alerts_route.listing_json(params), params).fetchall()

    def dept_sql(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        params = _alert_params(meta, owner=rng.choice(owners), limit=51)
        conn.execute(alerts_route.listing_json(params), params).fetchall()

    def latest_sql(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        conn.execute(
            devices_route.LATEST_JSON + " ORDER BY metric", {"d": rng.choice(devices)}
        ).fetchall()

    def series_sql(conn: psycopg.Connection[Any], rng: random.Random) -> None:
        lo, hi = _day(rng, days)
        q, p = readings_route._query(
            [rng.choice(devices)], None, lo, hi, timedelta(hours=1), "avg", None, 1001
        )
        conn.execute(readings_route.rendered(q), p).fetchall()

    return {
        "alerts": (alerts_req, alerts_sql),
        "alerts_dept": (dept_req, dept_sql),
        "latest": (latest_req, latest_sql),
        "day_series": (series_req, series_sql),
    }


def _alert_params(meta: Jsonb, **given: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(
        ("status", "rule", "owner", "severity", "entity", "zone", "since", "until", "acked")
    )
    return {**base, "before": None, "meta": meta, **given}


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


def time_sql(url: str, run: Callable[..., Any], n: int) -> dict[str, float]:
    """The endpoint's SQL on a connection set up as the API's pool sets up its own."""
    rng = random.Random(11)  # noqa: S311 - benchmark choices
    took: list[float] = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("SET TIME ZONE 'Asia/Shanghai'")
        for i in range(n + 20):
            t = time.perf_counter()
            run(conn, rng)
            if i >= 20:  # warm-up
                took.append(time.perf_counter() - t)
    return {"p50_ms": _pct(took, 50), "p99_ms": _pct(took, 99)}


class _Conn:
    """A lean HTTP/1.1 keep-alive client: the load generator shares two cores with the server
    and PostgreSQL, so it must cost as little as possible per request (httpx costs several
    times the server's own work)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: bench\r\n".encode() + self.auth + b"\r\n"
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _target(path: str, params: dict[str, Any]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


async def load(  # noqa: PLR0917 - one caller, arguments in reading order
    base: str,
    token: str,
    make: Callable[[random.Random], tuple[str, dict[str, Any]]],
    clients: int,
    seconds: float,
    rate: float | None = None,
) -> dict[str, float]:
    """`clients` connections for `seconds`: back to back (rate None: the server's ceiling), or
    together at `rate` requests per second on a fixed schedule, latency counted from when each
    request was due (a slow answer delays the next ones and is charged for it)."""
    host, port = base.removeprefix("http://").split(":")
    took: list[float] = []
    errors = 0
    conns = [_Conn(host, int(port), token) for _ in range(clients)]
    for c in conns:  # connect and warm each one first
        await c.get("/healthz")
    start = time.perf_counter()
    stop = start + seconds

    async def one(k: int) -> None:
        nonlocal errors
        rng = random.Random(k)  # noqa: S311 - benchmark choices
        conn = conns[k]
        gap = clients / rate if rate else 0.0
        due = start + (k * gap / clients if rate else 0.0)
        while True:
            now = time.perf_counter()
            if rate:
                if due > now:
                    await asyncio.sleep(due - now)
            else:
                due = now
            if due >= stop:
                return
            path, params = make(rng)
            status = await conn.get(_target(path, params))
            took.append(time.perf_counter() - due)
            if status != 200:
                errors += 1
            due += gap

    await asyncio.gather(*(one(k) for k in range(clients)))
    for c in conns:
        c.close()
    return {
        "requests": len(took),
        "errors": errors,
        "rps": len(took) / seconds,
        "p50_ms": _pct(took, 50),
        "p95_ms": _pct(took, 95),
        "p99_ms": _pct(took, 99),
        "max_ms": max(took) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench api", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--rate", type=float, default=200.0, help="steady load: requests per second (default 200)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="steady load: concurrent connections"
    )
    parser.add_argument(
        "--clients", type=int, default=16, help="ceiling: clients sending back to back"
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sql-runs", type=int, default=300)
    parser.add_argument("--reuse", action="store_true", help="keep the data of an earlier run")
    parser.add_argument(
        "--database-url", default="postgresql://postgres@127.0.0.1:5432/urbanpulse_bench_api"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    url = args.database_url
    fresh = ensure_database(url)
    if fresh or not args.reuse:
        _say(f"seeding {database_name(url)}: {args.devices} devices, {args.days} days …")
        sizes = seed(url, args.devices, args.days)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM readings), "
            "(SELECT count(*) FROM alerts), (SELECT count(*) FROM alerts WHERE status='firing')"
        ).fetchone()
        assert row is not None
        sizes = dict(zip(("devices", "readings", "alerts", "firing"), map(int, row), strict=True))
        devices = [str(d) for (d,) in conn.execute("SELECT device_id FROM devices")]
        owners = [str(o) for (o,) in conn.execute("SELECT DISTINCT owner FROM alerts")]
        conn.execute("DELETE FROM api_tokens WHERE name = 'bench'")
        conn.commit()
        token, _ = create_token(conn, "bench", Role.VIEWER)
    _say(f"data: {sizes}")
    rules = {r.id: r for r in load_rules(catalogue_files(), default_registry()).rules}
    work = workloads(devices, owners, args.days, Jsonb(rule_texts(rules)))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores",
        "data": sizes,
        "clients": args.clients,
        "rate": args.rate,
        "connections": args.connections,
        "seconds": args.seconds,
        "workers": args.workers,
        "endpoints": {},
    }
    for name, (_, sql) in work.items():
        results["endpoints"][name] = {"sql": time_sql(url, sql, args.sql_runs)}
    proc, base = start_api(
        url,
        18000 + os.getpid() % 1000,
        workers=args.workers,
        env={"URBANPULSE_API_POOL_SIZE": "10"},
        timeout=60,
    )
    try:
        for name, (req, _) in work.items():
            _say(f"  {name}: {args.rate:.0f} req/s over {args.connections} connections …")
            results["endpoints"][name]["steady"] = asyncio.run(
                load(base, token, req, args.connections, args.seconds, args.rate)
            )
            _say(f"  {name}: {args.clients} clients back to back …")
            results["endpoints"][name]["ceiling"] = asyncio.run(
                load(base, token, req, args.clients, args.seconds)
            )
        results["floor"] = asyncio.run(  # the framework and this client, no database
            load(base, token, lambda _r: ("/healthz", {}), args.clients, args.seconds / 3)
        )
    finally:
        stop_process(proc)
    report(results, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:  # noqa: PTH123
            json.dump(results, f, indent=2)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    d = results["data"]
    print(
        f"\nAPI load: {d['devices']:,} devices, {d['readings']:,} readings, {d['alerts']:,} "
        f"alerts ({d['firing']} firing); {args.workers} API worker(s), {results['machine']}\n"
    )
    print(
        f"{'':<12} {'SQL alone':>17} │ {args.rate:>4.0f} req/s, {args.connections} connections"
        f"{'':>9} │ {args.clients} clients back to back"
    )
    print(
        f"{'endpoint':<12} {'p50':>8} {'p99':>8} │ {'p50':>8} {'p95':>8} {'p99':>8} {'err':>4} │"
        f" {'req/s':>6} {'p50':>8} {'p99':>8}"
    )
    for name, r in results["endpoints"].items():
        q, st, ce = r["sql"], r["steady"], r["ceiling"]
        print(
            f"{name:<12} {q['p50_ms']:>6.2f}ms {q['p99_ms']:>6.2f}ms │ {st['p50_ms']:>6.1f}ms "
            f"{st['p95_ms']:>6.1f}ms {st['p99_ms']:>6.1f}ms {st['errors'] + ce['errors']:>4} │"
            f" {ce['rps']:>6.0f} {ce['p50_ms']:>6.1f}ms {ce['p99_ms']:>6.1f}ms"
        )
    fl = results["floor"]
    print(
        f"{'/healthz':<12} {'':>17} │ {'':>32} │ {fl['rps']:>6.0f} {fl['p50_ms']:>6.1f}ms "
        f"{fl['p99_ms']:>6.1f}ms   (framework and client, no database)"
    )
    worst = max(r["steady"]["p99_ms"] for r in results["endpoints"].values())
    print(f"\nworst p99 at {args.rate:.0f} req/s: {worst:.1f} ms (target: under 50 ms)")


if __name__ == "__main__":
    main()
