"""Fault injection across the whole pipeline, with real processes and real services.

Simulated devices publish a known live stream (water meters, three readings a message, and
depth gauges of which some pond above 15 cm once) through a private Mosquitto (persistence
on) to two `urbanpulse ingest` workers, a `urbanpulse rules run` and a `urbanpulse notify`
sending to a local webhook. Every service reaches a PostgreSQL server of the run's own
through a TCP proxy. Meanwhile, in turn: an ingest worker, the rules runner and the notifier
are SIGKILLed and restarted, PostgreSQL is crashed and restarted, Mosquitto is restarted, the
proxy cuts every database connection. Then the outcome is checked against the stream: every
reading stored exactly once, one alert per ponding gauge and none for the others, each alert
in exactly one notification, each notification delivered exactly once.

`tests/test_faults.py` runs a short variant in `make test`; `make soak` runs it for ten
minutes and reports memory and latency over time:

    python -m tests.faults --duration 600 --json build/soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from simulators.publisher import Publisher
from tests.receivers import HttpReceiver
from tests.services import Mosquitto, PostgresCluster, TcpProxy
from urbanpulse.broker import parse_broker_url
from urbanpulse.db.connect import with_database
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.serve import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
RULE = "flood.ponding_15cm"
OWNER = "区住房城乡建委"
LATENESS_S = 30  # the rules runner waits this long for late readings (faults delay them)
GAUGE_EVERY_S = 5.0
EPISODE_S = 40.0  # how long a ponding gauge stays above 15 cm


@dataclass
class Plan:
    duration_s: float = 100.0
    meters: int = 60  # messages per second: each meter sends one a second
    gauges: int = 12
    ponding: int = 6  # of the gauges, this many pond once
    fault_every_s: float = 11.0
    first_fault_s: float = 8.0
    sample_every_s: float = 2.0

    def episode_start(self, k: int) -> float:
        """Seconds into the run when ponding gauge k rises: spread over the first half, so that
        every alert is due well before the checks start."""
        return 5.0 + k * max(1.0, (self.duration_s / 2 - 5.0) / max(1, self.ponding))


@dataclass
class Fault:
    at_s: float
    what: str
    took_s: float


@dataclass
class Sample:
    at_s: float
    rss_mb: dict[str, float]
    published: int
    stored: int


@dataclass
class Outcome:
    plan: Plan
    started: str
    published_messages: int = 0
    expected_readings: int = 0
    stored_rows: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicate_rows: int = 0
    quarantined: int = 0
    expected_alerts: list[str] = field(default_factory=list)
    alerts: dict[str, int] = field(default_factory=dict)  # entity -> alerts of the rule
    resolved_alerts: int = 0
    notifications: int = 0
    notifications_sent: int = 0
    alerts_not_notified_once: list[int] = field(default_factory=list)
    deliveries: int = 0
    deliveries_per_key_max: int = 0
    undelivered_keys: int = 0
    crashed: list[str] = field(default_factory=list)
    adoptions: int = 0  # sessions taken over: no worker is gone for long here, so none
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p95/p99/max over the run
    latency_by_minute: list[dict[str, float]] = field(default_factory=list)
    catch_up_s: float = 0.0  # from the last publish until everything was stored

    def problems(self) -> list[str]:
        out = []
        if self.missing or self.unexpected or self.duplicate_rows:
            out.append(
                f"readings: {self.missing} missing, {self.unexpected} unexpected, "
                f"{self.duplicate_rows} duplicated"
            )
        if self.quarantined:
            out.append(f"{self.quarantined} messages quarantined")
        wrong = {e: n for e, n in self.alerts.items() if n != 1} | {
            e: 0 for e in self.expected_alerts if e not in self.alerts
        }
        extra = sorted(set(self.alerts) - set(self.expected_alerts))
        if wrong or extra:
            out.append(f"alerts: wrong counts {wrong}, unexpected {extra}")
        if self.notifications_sent != self.notifications or self.alerts_not_notified_once:
            out.append(
                f"notifications: {self.notifications_sent}/{self.notifications} sent; alerts "
                f"not in exactly one firing message: {self.alerts_not_notified_once}"
            )
        if self.deliveries_per_key_max > 1 or self.undelivered_keys:
            out.append(
                f"deliveries: {self.undelivered_keys} never arrived, a message arrived up to "
                f"{self.deliveries_per_key_max} times"
            )
        if self.crashed:
            out.append(f"components that died on their own: {self.crashed}")
        if self.adoptions:
            out.append(f"{self.adoptions} session(s) of live workers taken over")
        return out


def _ms(ts: float) -> int:
    return int(ts * 1000)


class Component:
    """One `urbanpulse …` process, killed and restarted by the run."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "urbanpulse.cli", *self.argv],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, 30)
        return self.proc.returncode

    def rss_mb(self) -> float:
        if not self.alive():
            return 0.0
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _devices(plan: Plan) -> tuple[list[DeviceSpec], list[DeviceSpec]]:
    meters = [
        DeviceSpec(
            device_id=f"fm{i:03d}",
            domain="water",
            kind="customer_meter",
            name=f"用户水表{i}",
            zone="DMA-XLH",
            report_interval_s=1,
        )
        for i in range(plan.meters)
    ]
    gauges = [
        DeviceSpec(
            device_id=f"fg{i:02d}",
            domain="flood",
            kind="depth_gauge",
            name=f"下穿道积水点{i}",
            report_interval_s=5,
            attributes={"carriageway": True},
        )
        for i in range(plan.gauges)
    ]
    return meters, gauges


def _rule_file(path: Path) -> None:
    """The catalogue's ponding rule alone: its alerts are then exactly the ponding gauges."""
    catalogue = yaml.safe_load(
        (ROOT / "urbanpulse/rulefmt/catalogue/flood.yaml").read_text(encoding="utf-8")
    )
    [rule] = [r for r in catalogue["rules"] if r["id"] == RULE]
    path.write_text(yaml.safe_dump({"rules": [rule]}, allow_unicode=True), encoding="utf-8")


def _notify_file(path: Path, hook: str) -> None:
    spec = {
        "group_wait": "0s",
        "escalation": {"critical": None, "warning": None},
        "lease": "10s",
        "channels": {"zjw-hook": {"type": "webhook", "url": hook}},
        "departments": {OWNER: {"on_call": [{"channels": ["zjw-hook"]}]}},
    }
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")


class Feed:
    """The devices' publishing, paced in real time, in a thread; measurement time is the
    moment of publishing, so the end-to-end latency of a reading is ingested_at − ts."""

    def __init__(self, plan: Plan, broker_url: str, prefix: str, t0: float) -> None:
        self.plan, self.broker_url, self.prefix, self.t0 = plan, broker_url, prefix, t0
        self.readings: set[tuple[str, str, int]] = set()
        self.published = 0
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.meters, self.gauges = _devices(plan)

    def depth(self, k: int, t: float) -> float:
        if k < self.plan.ponding:
            start = self.plan.episode_start(k)
            if start <= t < start + EPISODE_S:
                return 25.0 + k
        return 2.0 + (k % 3) * 0.5

    def _run(self) -> None:
        try:
            with Publisher(parse_broker_url(self.broker_url), client_id="faults-feed") as pub:
                second = 0
                next_gauges = 0.0
                while (t := time.time() - self.t0) < self.plan.duration_s:
                    ts = time.time()
                    for i, m in enumerate(self.meters):
                        body = {
                            "ts": _ms(ts),
                            "values": {
                                "flow": 0.2 + (i % 5) * 0.1,
                                "pressure": 0.31,
                                "volume": 1000 + second * 0.01,
                            },
                        }
                        self._send(pub, "water", m.device_id, body, ("flow", "pressure", "volume"))
                    if t >= next_gauges:
                        for k, g in enumerate(self.gauges):
                            body = {"metric": "depth", "value": self.depth(k, t), "ts": _ms(ts)}
                            self._send(pub, "flood", g.device_id, body, ("depth",))
                        next_gauges += GAUGE_EVERY_S
                    second += 1
                    pub.idle(max(0.0, self.t0 + second - time.time()))
                pub.flush(timeout=120)
        except BaseException as exc:  # reported by the run, never swallowed
            self.error = exc
        finally:
            self.finished_at = time.time()

    def _send(
        self,
        pub: Publisher,
        domain: str,
        device: str,
        body: dict[str, Any],
        metrics: tuple[str, ...],
    ) -> None:
        pub.publish(f"{self.prefix}/{domain}/{device}", json.dumps(body).encode())
        ts = int(body["ts"])
        self.readings.update((device, m, ts) for m in metrics)
        self.published += 1


class Run:
    """Everything a fault-injection run starts, in one place, so that it is all stopped."""

    def __init__(self, plan: Plan, workdir: Path, say: Callable[[str], None]) -> None:
        self.plan, self.workdir, self.say = plan, workdir, say
        self.prefix = "yc/v1"
        self.pg = PostgresCluster()
        self.pg.start()
        self.db_url = with_database(self.pg.url, "urbanpulse")
        self.proxy = TcpProxy("127.0.0.1", self.pg.port)
        self.service_db_url = with_database(
            f"postgresql://postgres@127.0.0.1:{self.proxy.port}/postgres", "urbanpulse"
        )
        self.broker = Mosquitto(workdir / "mosquitto")
        self.hooks = HttpReceiver()
        self.components: dict[str, Component] = {}

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        migrate(self.db_url, load_policy(), timescale_mode="off")
        meters, gauges = _devices(self.plan)
        with psycopg.connect(self.db_url) as conn:
            upsert_devices(conn, meters + gauges)
        self.broker.start()
        self.hooks.__enter__()
        rules = self.workdir / "rules.yaml"
        _rule_file(rules)
        notify = self.workdir / "notify.yaml"
        _notify_file(notify, self.hooks.url("zjw"))
        env = dict(
            os.environ,
            URBANPULSE_DATABASE_URL=self.service_db_url,
            URBANPULSE_MQTT_URL=self.broker.url,
            URBANPULSE_TOPIC_PREFIX=self.prefix,
            URBANPULSE_INGEST_GROUP="ingest",
            URBANPULSE_INGEST_BATCH_DELAY_MS="100",
            URBANPULSE_INGEST_LOG_INTERVAL_S="10",
            URBANPULSE_NOTIFY_CONFIG=str(notify),
            URBANPULSE_LOG_LEVEL="INFO",
        )
        since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
        for k in range(2):
            self.components[f"ingest-{k}"] = Component(
                f"ingest-{k}",
                ["ingest", "--client-id", f"faults-ingest-{k}"],
                env,
                self.workdir / f"ingest-{k}.log",
            )
        self.components["rules"] = Component(
            "rules",
            [
                *("rules", "run", str(rules), "--interval", "2"),
                *("--lateness", str(LATENESS_S), "--since", since),
            ],
            env,
            self.workdir / "rules.log",
        )
        self.components["notify"] = Component(
            "notify", ["notify", "--interval", "1"], env, self.workdir / "notify.log"
        )
        for c in self.components.values():
            c.start()
        for k in range(2):
            self._wait_subscribed(self.components[f"ingest-{k}"], 1)

    def _wait_subscribed(self, c: Component, times: int) -> None:
        self._wait(
            lambda: c.tail(1_000_000).count("subscribed to") >= times, 30, f"{c.name} subscribed"
        )

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {c.name}\n{c.tail(1500)}" for c in self.components.values())
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")

    # -- the faults -----------------------------------------------------------------------------
    def _restart(self, name: str) -> Callable[[], None]:
        def fault() -> None:
            c = self.components[name]
            if not c.alive():
                raise AssertionError(f"{name} died before it was killed:\n{c.tail()}")
            c.kill()
            time.sleep(1.0)
            c.start()

        return fault

    def faults(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("SIGKILL ingest-0, restart it", self._restart("ingest-0")),
            ("crash PostgreSQL (immediate stop), start it", lambda: self.pg.restart("immediate")),
            ("restart Mosquitto (persistence on)", self._restart_broker),
            ("SIGKILL the rules runner, restart it", self._restart("rules")),
            ("cut every database connection at the proxy", self.proxy.cut),
            ("SIGKILL the notifier, restart it", self._restart("notify")),
            ("SIGKILL ingest-1, restart it", self._restart("ingest-1")),
            ("refuse database connections for 5 s", lambda: self.proxy.refuse(5.0)),
        ]

    def _restart_broker(self) -> None:
        self.broker.stop()
        time.sleep(1.0)
        self.broker.start()

    # -- the run --------------------------------------------------------------------------------
    def execute(self) -> Outcome:
        plan = self.plan
        t0 = time.time()
        out = Outcome(plan, datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds"))
        feed = Feed(plan, self.broker.url, self.prefix, t0)
        feed.thread.start()
        schedule = self.faults()
        next_fault, k = plan.first_fault_s, 0
        next_sample = 0.0
        while feed.thread.is_alive():
            t = time.time() - t0
            if t >= next_fault and t < plan.duration_s - 3:
                name, fault = schedule[k % len(schedule)]
                began = time.monotonic()
                fault()
                out.faults.append(Fault(round(t, 1), name, round(time.monotonic() - began, 2)))
                self.say(f"  {t:6.1f} s  {name}")
                k += 1
                next_fault += plan.fault_every_s
            if t >= next_sample:
                out.samples.append(self._sample(t, feed))
                next_sample += plan.sample_every_s
            time.sleep(0.1)
        if feed.error is not None:
            raise AssertionError(f"the devices' feed failed: {feed.error!r}") from feed.error
        out.published_messages = feed.published
        out.expected_readings = len(feed.readings)
        self.say(
            f"published {feed.published} messages ({len(feed.readings)} readings) in "
            f"{feed.finished_at - t0:.0f} s with {len(out.faults)} faults; waiting for the rest"
        )
        self._wait(lambda: self._count() >= len(feed.readings), 180, "every reading stored")
        out.catch_up_s = round(time.time() - feed.finished_at, 1)
        expected = [g.device_id for g in feed.gauges[: plan.ponding]]
        self._wait(lambda: self._alerted() >= len(expected), 60 + LATENESS_S + 60, "the alerts")
        self._wait(self._all_sent, 60, "every notification sent")
        time.sleep(3.0)  # anything extra (a duplicate alert, a second delivery) would show now
        out.samples.append(self._sample(time.time() - t0, feed))
        out.crashed = [c.name for c in self.components.values() if not c.alive()]
        out.adoptions = sum(
            c.tail(10_000_000).count("draining its session")
            for name, c in self.components.items()
            if name.startswith("ingest")
        )
        self._check(out, feed, expected)
        return out

    def _sample(self, t: float, feed: Feed) -> Sample:
        rss = {name: round(c.rss_mb(), 1) for name, c in self.components.items()}
        return Sample(round(t, 1), rss, feed.published, self._count())

    def _count(self) -> int:
        try:
            with psycopg.connect(self.db_url, connect_timeout=2) as conn:
                row = conn.execute("SELECT count(*) FROM readings").fetchone()
            return int(row[0]) if row else 0
        except psycopg.OperationalError:  # the server is being restarted
            return 0

    def _alerted(self) -> int:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                "SELECT count(DISTINCT entity) FROM alerts WHERE rule_id = %s", (RULE,)
            ).fetchone()
        return int(row[0]) if row else 0

    def _all_sent(self) -> bool:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state <> 'sent'), count(*), "
                "(SELECT count(*) FROM notify_outbox WHERE processed_at IS NULL) "
                "FROM notifications"
            ).fetchone()
        return bool(row and row[1] and row[0] == 0 and row[2] == 0)

    def _check(self, out: Outcome, feed: Feed, expected: list[str]) -> None:
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute(
                "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint FROM readings"
            ).fetchall()
            got = [(str(d), str(m), int(t)) for d, m, t in rows]
            distinct = set(got)
            out.stored_rows = len(got)
            out.duplicate_rows = len(got) - len(distinct)
            out.missing = len(feed.readings - distinct)
            out.unexpected = len(distinct - feed.readings)
            q = conn.execute("SELECT count(*) FROM quarantine").fetchone()
            out.quarantined = int(q[0]) if q else 0
            out.expected_alerts = expected
            out.alerts = {
                str(e): int(n)
                for e, n in conn.execute(
                    "SELECT entity, count(*) FROM alerts WHERE rule_id = %s GROUP BY 1", (RULE,)
                )
            }
            r = conn.execute(
                "SELECT count(*) FROM alerts WHERE rule_id = %s AND status = 'resolved'", (RULE,)
            ).fetchone()
            out.resolved_alerts = int(r[0]) if r else 0
            notes = conn.execute(
                "SELECT idempotency_key, kind, alert_ids, state FROM notifications"
            ).fetchall()
            out.notifications = len(notes)
            out.notifications_sent = sum(1 for n in notes if n[3] == "sent")
            firing = Counter(a for n in notes if n[1] == "firing" for a in n[2])
            ids = [int(i) for (i,) in conn.execute("SELECT id FROM alerts")]
            out.alerts_not_notified_once = [i for i in ids if firing[i] != 1]
            out.latency_ms = self._latency(conn, "true")
            out.latency_by_minute = [
                {"minute": float(m), **self._latency(conn, f"ts < {b} AND ts >= {a}")}
                for m, a, b in self._minutes(conn)
            ]
        keys = Counter(r.headers.get("Idempotency-Key", "") for r in self.hooks.requests)
        out.deliveries = sum(keys.values())
        out.deliveries_per_key_max = max(keys.values(), default=0)
        out.undelivered_keys = len({str(n[0]) for n in notes} - set(keys))

    @staticmethod
    def _latency(conn: psycopg.Connection[Any], where: str) -> dict[str, float]:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag) "
            "FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS lag FROM readings "
            f"WHERE {where}) x"
        ).fetchone()
        if not row or row[1] is None:
            return {}
        p50, p95, p99 = (float(v) for v in row[0])
        return {
            "p50": round(p50, 1),
            "p95": round(p95, 1),
            "p99": round(p99, 1),
            "max": round(float(row[1]), 1),
        }

    @staticmethod
    def _minutes(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
        row = conn.execute("SELECT min(ts), max(ts) FROM readings").fetchone()
        if not row or row[0] is None:
            return []
        first, last = row
        out, m = [], 0
        while first + timedelta(minutes=m) <= last:
            a = first + timedelta(minutes=m)
            b = a + timedelta(minutes=1)
            out.append((m, f"'{a.isoformat()}'", f"'{b.isoformat()}'"))
            m += 1
        return out

    def close(self) -> None:
        for c in self.components.values():
            c.stop()
        with contextlib.suppress(Exception):
            self.hooks.__exit__(None, None, None)
        self.broker.stop()
        self.proxy.close()
        self.pg.destroy()


def run(plan: Plan, workdir: Path, say: Callable[[str], None] = print) -> Outcome:
    r = Run(plan, workdir, say)
    try:
        r.setup()
        return r.execute()
    finally:
        r.close()


@dataclass
class Overload:
    messages: int
    max_inflight: int
    pause_s: float
    expected_readings: int = 0
    stored_rows: int = 0
    missing: int = 0
    publish_rate: float = 0.0  # messages/s the devices sent at
    rss_idle_mb: float = 0.0  # the ingest worker, warmed up, before the overload
    rss_peak_mb: float = 0.0
    unacked_peak: float = 0.0  # from its metrics
    broker_stored_peak: float = 0.0  # from its metrics ($SYS of the broker)
    broker_stored_after: float = -1.0
    db_up_seen_down: bool = False
    store_age_peak_s: float = 0.0  # how stale the last commit got, from its metrics
    catch_up_s: float = 0.0  # from the database's return until everything was stored
    drain_rate: float = 0.0  # readings/s stored while catching up
    timeline: list[dict[str, float]] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.missing or self.stored_rows != self.expected_readings:
            out.append(f"{self.missing} readings missing, {self.stored_rows} rows stored")
        if self.unacked_peak > self.max_inflight:
            out.append(f"ingest held {self.unacked_peak} unacknowledged > {self.max_inflight}")
        return out


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def overload(
    workdir: Path,
    *,
    messages: int = 60_000,
    max_inflight: int = 500,
    pause_s: float = 10.0,
    say: Callable[[str], None] = print,
) -> Overload:
    """One ingest worker; the database frozen (SIGSTOP) while devices publish `messages` as
    fast as they can, held frozen `pause_s` after that, then thawed: the broker holds the
    backlog for the worker's persistent session, the worker holds no more than Receive Maximum
    (`max_inflight`) messages, and everything is stored once it catches up."""
    out = Overload(messages, max_inflight, pause_s)
    pg = PostgresCluster()
    broker = Mosquitto(workdir / "mosquitto", extra_conf="sys_interval 1\n")
    port = free_port()
    ingest: Component | None = None
    try:
        pg.start()
        db_url = with_database(pg.url, "urbanpulse")
        migrate(db_url, load_policy(), timescale_mode="off")
        meters, _ = _devices(Plan(meters=20))
        with psycopg.connect(db_url) as conn:
            upsert_devices(conn, meters)
        broker.start()
        env = dict(
            os.environ,
            URBANPULSE_DATABASE_URL=db_url,
            URBANPULSE_MQTT_URL=broker.url,
            URBANPULSE_TOPIC_PREFIX="yc/v1",
            URBANPULSE_INGEST_MAX_INFLIGHT=str(max_inflight),
            URBANPULSE_INGEST_LOG_INTERVAL_S="5",
            URBANPULSE_METRICS_PORT=str(port),
        )
        ingest = Component(
            "ingest", ["ingest", "--client-id", "overload-0"], env, workdir / "i.log"
        )
        ingest.start()
        deadline = time.monotonic() + 30
        while "subscribed to" not in ingest.tail(100_000):
            if time.monotonic() > deadline or not ingest.alive():
                raise AssertionError(f"ingest did not subscribe:\n{ingest.tail()}")
            time.sleep(0.2)

        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        expected: set[tuple[str, str, int]] = set()

        def batch(first: int, count: int) -> list[tuple[str, bytes]]:
            out_msgs = []
            for i in range(first, first + count):
                m = meters[i % len(meters)]
                ts = _ms((t0 + timedelta(milliseconds=i)).timestamp())
                body = {"ts": ts, "values": {"flow": 0.3, "pressure": 0.31, "volume": i * 0.01}}
                out_msgs.append((f"yc/v1/water/{m.device_id}", json.dumps(body).encode()))
                expected.update((m.device_id, k, ts) for k in ("flow", "pressure", "volume"))
            return out_msgs

        def stored() -> int:
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT count(*) FROM readings").fetchone()
            return int(row[0]) if row else 0

        warm = batch(0, 2000)
        expected.clear()  # the warm-up is not part of the figures
        _publish(broker.url, warm)
        while stored() < 6000:
            time.sleep(0.2)
        time.sleep(1.0)
        out.rss_idle_mb = round(ingest.rss_mb(), 1)
        load = batch(2000, messages)
        out.expected_readings = len(expected)

        started = time.monotonic()
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                row = {
                    "t": round(time.monotonic() - started, 2),
                    "rss_mb": round(ingest.rss_mb(), 1) if ingest else 0.0,
                    "unacked": _metric(port, "urbanpulse_ingest_unacked_messages"),
                    "broker_stored": _metric(port, "urbanpulse_broker_stored_messages"),
                    "db_up": _metric(port, "urbanpulse_ingest_database_up"),
                    "store_age_s": round(
                        time.time()
                        - _metric(port, "urbanpulse_ingest_last_store_timestamp_seconds"),
                        1,
                    ),
                }
                out.timeline.append(row)
                sampling.wait(0.5)

        pg.pause()
        say(f"  database frozen; publishing {messages} messages as fast as possible")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        publish_started = time.monotonic()
        _publish(broker.url, load)
        out.publish_rate = round(messages / (time.monotonic() - publish_started))
        say(f"  published at {out.publish_rate} msg/s; database still frozen for {pause_s:.0f} s")
        time.sleep(pause_s)
        pg.resume()
        thawed = time.monotonic()
        say("  database back; catching up")
        target = len(expected)
        deadline = time.monotonic() + 300
        while stored() < target and time.monotonic() < deadline:
            time.sleep(0.2)
        out.catch_up_s = round(time.monotonic() - thawed, 1)
        out.drain_rate = round(messages * 3 / max(out.catch_up_s, 0.1))
        time.sleep(2.5)  # the broker's $SYS count, every second
        sampling.set()
        sampler.join()
        out.broker_stored_after = _metric(port, "urbanpulse_broker_stored_messages")
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint FROM readings"
            ).fetchall()
        got = {(str(d), str(m), int(t)) for d, m, t in rows}
        out.stored_rows = len(rows) - 6000
        out.missing = len(expected - got)
        tl = out.timeline
        out.rss_peak_mb = max((r["rss_mb"] for r in tl), default=0.0)
        out.unacked_peak = max((r["unacked"] for r in tl), default=0.0)
        out.broker_stored_peak = max((r["broker_stored"] for r in tl), default=0.0)
        out.db_up_seen_down = any(r["db_up"] == 0 for r in tl)
        out.store_age_peak_s = max((r["store_age_s"] for r in tl), default=0.0)
        return out
    finally:
        with contextlib.suppress(OSError, ValueError):
            pg.resume()
        if ingest is not None:
            ingest.stop()
        broker.stop()
        pg.destroy()


def _publish(broker_url: str, messages: list[tuple[str, bytes]]) -> None:
    with Publisher(parse_broker_url(broker_url), client_id=f"overload-{os.getpid()}") as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)


def overload_report(o: Overload) -> str:
    return "\n".join(
        [
            f"overload: {o.messages} messages ({o.expected_readings} readings) published at "
            f"{o.publish_rate} msg/s into a frozen database, held frozen {o.pause_s:.0f} s more",
            f"  ingest RSS       {o.rss_idle_mb} MB warmed up, {o.rss_peak_mb} MB at the peak "
            f"(Receive Maximum {o.max_inflight})",
            f"  ingest unacked   peak {o.unacked_peak:.0f}",
            f"  broker backlog   peak {o.broker_stored_peak:.0f} messages, "
            f"{o.broker_stored_after:.0f} after",
            f"  database         last commit up to {o.store_age_peak_s} s old; "
            f"database_up went to 0: {o.db_up_seen_down} (a frozen server refuses nothing)",
            f"  caught up        {o.catch_up_s} s after the database came back "
            f"({o.drain_rate} readings/s)",
            f"  stored           {o.stored_rows} rows, {o.missing} missing",
            "  result           " + ("OK" if not o.problems() else "; ".join(o.problems())),
        ]
    )


def report(out: Outcome) -> str:
    lines = [
        f"fault-injection run of {out.plan.duration_s:.0f} s started {out.started}",
        f"  published        {out.published_messages} messages, {out.expected_readings} readings",
        f"  stored           {out.stored_rows} rows: {out.missing} missing, "
        f"{out.unexpected} unexpected, {out.duplicate_rows} duplicated; "
        f"quarantined {out.quarantined}",
        f"  caught up        {out.catch_up_s} s after the last publish",
        f"  alerts           {sum(out.alerts.values())} for {len(out.expected_alerts)} ponding "
        f"gauges ({out.resolved_alerts} resolved by the end)",
        f"  notifications    {out.notifications_sent}/{out.notifications} sent, "
        f"{out.deliveries} deliveries, at most {out.deliveries_per_key_max} per message",
        f"  latency (ms)     {out.latency_ms}",
        f"  faults           {len(out.faults)}",
    ]
    lines += [f"    {f.at_s:7.1f} s  {f.what} ({f.took_s} s)" for f in out.faults]
    lines.append("  memory (RSS MB) and latency by minute:")
    names = sorted(out.samples[0].rss_mb) if out.samples else []
    lines.append("    minute  " + "  ".join(f"{n:>9}" for n in names) + "   p50 ms   p99 ms")
    for row in out.latency_by_minute:
        m = int(row["minute"])
        near = [s for s in out.samples if m * 60 <= s.at_s < (m + 1) * 60] or out.samples[-1:]
        peak = {n: max(s.rss_mb.get(n, 0.0) for s in near) for n in names}
        lines.append(
            f"    {m:6d}  "
            + "  ".join(f"{peak[n]:9.1f}" for n in names)
            + f"  {row.get('p50', 0):7.1f}  {row.get('p99', 0):7.1f}"
        )
    problems = out.problems()
    lines.append("  result           " + ("OK" if not problems else "; ".join(problems)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of publishing")
    ap.add_argument("--meters", type=int, default=100, help="water meters (messages per second)")
    ap.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    ap.add_argument(
        "--overload", type=int, default=300_000, help="messages of the overload run (0: skip)"
    )
    ap.add_argument("--json", type=Path, help="write the outcomes here")
    args = ap.parse_args(argv)
    plan = Plan(
        duration_s=args.duration,
        meters=args.meters,
        gauges=max(12, int(args.duration // 30) + 4),
        ponding=max(6, int(args.duration // 30)),
        fault_every_s=args.fault_every,
        sample_every_s=5.0,
    )
    print(
        f"soak: {args.duration:.0f} s at {args.meters} messages/s, a fault every "
        f"{args.fault_every:.0f} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="up-soak-") as tmp:
        out = run(plan, Path(tmp), lambda line: print(line, flush=True))
    print(report(out), flush=True)
    result: dict[str, Any] = {"soak": asdict(out)}
    problems = out.problems()
    if args.overload:
        with tempfile.TemporaryDirectory(prefix="up-overload-") as tmp:
            o = overload(Path(tmp), messages=args.overload, pause_s=30.0)
        print(overload_report(o), flush=True)
        result["overload"] = asdict(o)
        problems += o.problems()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
        print(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
