"""`python -m bench ingest`: the product's ingest rate beside this machine's ceilings.

In one run, on one machine, against the same broker and a database of its own:

1. **Broker ceiling**: the publishers send the payloads at QoS 1 to a subscriber that only
   counts (paho with the workers' lean I/O, QoS 1): what Mosquitto can move here.
2. **Database ceiling**: the same readings written by one binary `COPY` straight into the
   `readings` table, nothing else.
3. **UrbanPulse**: `--workers` `urbanpulse ingest` processes and `urbanpulse rules run` with the
   whole catalogue; the publishers send as fast as they can (or at `--rate`) for `--seconds`
   after `--warmup`; then the run waits until everything is stored. Measured: messages and
   readings per second stored in the window, end-to-end latency (measurement time, which is
   the publishing time, to the commit), the alert latency of a depth gauge that ponds during
   the window (the moment its first reading ≥ 15 cm was published to the alert row), CPU and
   peak memory of each process, and readings stored against published.
4. **The peer** (on the first shape): Node-RED's typical flow into PostgreSQL
   (`bench/peer.py`), fed the same way; compared on messages stored per second until the
   last one was stored.

Payload shapes (`--shape`): `3` readings a message (a water meter: flow, pressure, volume; the
headline, as in ThingsBoard's published figures), `1`, and `100` (a gateway's batch). Prints a
table and writes JSON (`--json`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.loadgen import FastPublisher
from ingest.source import LeanClient
from simulators.publisher import Publisher
from urbanpulse.broker import parse_broker_url
from urbanpulse.db.connect import drop_database, where, with_database
from urbanpulse.db.devices import DeviceSpec, upsert_devices
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.serve import free_port, stop_process
from urbanpulse.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"3": 3, "1": 1, "100": 100}
GAUGES = 40  # a fresh depth gauge for each run: an alert stays firing 10 minutes
_runs = iter(range(GAUGES))
CHUNK = 100  # messages made and written at once by a publisher


# --- payloads --------------------------------------------------------------------------------


def _meter(i: int) -> str:
    return f"bm{i:05d}"


def devices(count: int) -> list[DeviceSpec]:
    out = [
        DeviceSpec(
            device_id=_meter(i),
            domain="water",
            kind="customer_meter",
            name=f"bench meter {i}",
            zone="DMA-BENCH",
            report_interval_s=60,
        )
        for i in range(count)
    ]
    out += [
        DeviceSpec(
            device_id=f"bench-gauge-{k}",
            domain="flood",
            kind="depth_gauge",
            name=f"bench gauge {k}",
            report_interval_s=5,
            attributes={"carriageway": True},
        )
        for k in range(GAUGES)
    ]
    return out


class Payloads:
    """Messages of one shape as (topic, payload) bytes, measurement time = the moment they are
    made (in ms, distinct per device), so that a reading's latency is ingested_at − ts.

    Made from byte templates, not by `json.dumps` of a dict: a few microseconds a message, so
    that the generator leaves the cores to what it measures."""

    def __init__(self, shape: int, prefix: str, devices: int, first: int, step: int) -> None:
        self.shape, self.devices = shape, devices
        self.i = first
        self.step = step  # publisher k of n makes devices k, k+n, …: no two share a device
        self.topics = [f"{prefix}/water/{_meter(d)}".encode() for d in range(devices)]
        self.last = [0] * devices

    def chunk(self, count: int) -> list[tuple[bytes, bytes]]:
        now = int(time.time() * 1000)
        out = []
        shape, last = self.shape, self.last
        for _ in range(count):
            dev = self.i % self.devices
            self.i += self.step
            ts = max(now, last[dev] + 1)
            volume = self.i * 0.001
            if shape == 3:
                body = b'{"ts":%d,"values":{"flow":0.25,"pressure":0.31,"volume":%.3f}}' % (
                    ts,
                    volume,
                )
            elif shape == 1:
                body = b'{"metric":"volume","value":%.3f,"ts":%d}' % (volume, ts)
            else:
                body = (
                    b'{"readings":['
                    + b",".join(
                        b'{"metric":"volume","value":%.3f,"ts":%d}' % (volume + k, ts + k)
                        for k in range(shape)
                    )
                    + b"]}"
                )
            last[dev] = ts + (shape - 1 if shape > 3 else 0)
            out.append((self.topics[dev], body))
        return out


@dataclass(frozen=True)
class Load:
    """What the publishing processes send: `procs` processes for `seconds`, as fast as they can
    or at `rate` messages/s in all."""

    mqtt_url: str
    shape: int
    prefix: str
    n_devices: int
    seconds: float
    procs: int
    rate: float | None = None


def _publisher(load: Load, index: int, result: Any) -> None:
    """One publishing process: its share of the devices and of the rate."""
    made = Payloads(load.shape, load.prefix, load.n_devices, index, load.procs)
    broker = parse_broker_url(load.mqtt_url)
    sent = 0
    with FastPublisher(
        broker.host,
        broker.port,
        f"bench-pub-{os.getpid()}-{index}",
        username=broker.username,
        password=broker.password,
    ) as pub:
        started = time.monotonic()
        share = load.rate / load.procs if load.rate else None
        while time.monotonic() - started < load.seconds:
            pub.publish_many(made.chunk(CHUNK))
            sent += CHUNK
            if share:
                pub.idle(max(0.0, started + sent / share - time.monotonic()))
        pub.flush(timeout=300)
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu = own.ru_utime + own.ru_stime  # a forked child's counters start at zero
        result.put((index, sent, time.monotonic() - started, cpu, own.ru_maxrss / 1024))


@dataclass(frozen=True)
class Published:
    messages: int  # all acknowledged by the broker
    seconds: float
    cpu_s: float  # all publishing processes'
    peak_rss_mb: float  # the largest publishing process's


def publish_for(load: Load) -> Published:
    """Publish the load from its processes; what was sent, in how long."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    workers = [ctx.Process(target=_publisher, args=(load, k, results)) for k in range(load.procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=load.seconds + 600) for _ in workers]
    for w in workers:
        w.join()
    return Published(
        sum(g[1] for g in got),
        max(g[2] for g in got),
        sum(g[3] for g in got),
        max(g[4] for g in got),
    )


# --- processes -------------------------------------------------------------------------------


class Broker:
    """A Mosquitto of the benchmark's own, configured as deploy/mosquitto/mosquitto.conf is
    (persistence, unlimited queues: a stock broker drops a session's messages past 1000), on a
    free loopback port."""

    def __init__(self, workdir: Path) -> None:
        import shutil
        import socket

        self.port = free_port()
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"user {getpass.getuser()}\n"  # as root, mosquitto would drop to a user of its own
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 30\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmessage_size_limit 1048576\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not start (see {workdir}/mosquitto.log)")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Usage:
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_named(name: str) -> list[int]:
    out = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                out.append(int(comm.parent.name))
        except OSError:
            continue
    return out


class Watch:
    """CPU seconds of a group of processes over a window."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.start: dict[int, float] = {}

    def begin(self) -> None:
        self.start = {p: _cpu_s(p) for p in self.pids()}

    def end(self) -> Usage:
        pids = self.pids()
        cpu = sum(_cpu_s(p) - self.start.get(p, 0.0) for p in pids)
        return Usage(round(cpu, 2), round(max((_hwm_mb(p) for p in pids), default=0.0), 1))


class Service:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "urbanpulse.cli", *argv],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.log = log

    def stop(self) -> None:
        stop_process(self.proc, 30)  # an ingest worker flushes what it holds first


# --- the three measurements ------------------------------------------------------------------


def broker_ceiling(
    mqtt_url: str, *, shape: int, n_devices: int, seconds: float, procs: int
) -> dict[str, float]:
    """QoS 1 messages per second from the publishers to a subscriber that only counts."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    broker = parse_broker_url(mqtt_url)
    got = [0]
    last = [0.0]
    # paho with the ingest workers' lean I/O: a stock paho subscriber spends ~5 times the CPU
    # a message (python -m bench.client) and would measure itself, not the broker
    sub = LeanClient(
        CallbackAPIVersion.VERSION2, client_id=f"bench-count-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    if broker.username:
        sub.username_pw_set(broker.username, broker.password)

    def on_message(*_: Any) -> None:
        got[0] += 1
        last[0] = time.monotonic()

    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    started = time.monotonic()
    sent = publish_for(Load(mqtt_url, shape, prefix, n_devices, seconds, procs)).messages
    deadline = time.monotonic() + 120
    while got[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    sub.disconnect()
    took = last[0] - started
    return {"messages": sent, "received": got[0], "msg_per_s": round(got[0] / took)}


def copy_ceiling(db_url: str, *, readings: int, n_devices: int) -> dict[str, float]:
    """Readings per second of one binary COPY into `readings` (then removed again)."""
    t0 = datetime(2020, 1, 1, tzinfo=UTC).timestamp()

    def rows() -> Iterator[tuple[str, str, datetime, float]]:
        for i in range(readings):
            yield (
                _meter(i % n_devices),
                "volume",
                datetime.fromtimestamp(t0 + i // n_devices, UTC),
                i * 0.001,
            )

    with psycopg.connect(db_url) as conn:
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY readings (device_id, metric, ts, value) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "text", "timestamptz", "float8"])
            for r in rows():
                copy.write_row(r)
        conn.commit()
        took = time.perf_counter() - started
        conn.execute("DELETE FROM readings WHERE ts < '2021-01-01'")
        conn.commit()
    return {"readings": readings, "readings_per_s": round(readings / took)}


@dataclass
class Window:
    """What one measured window of a pipeline (ours or the peer's) gave."""

    shape: int
    published_messages: int = 0
    published_readings: int = 0
    stored_in_window: int = 0
    stored_readings: int = 0
    window_s: float = 0.0
    msg_per_s: float = 0.0  # stored in the window
    readings_per_s: float = 0.0
    publish_msg_per_s: float = 0.0
    # everything published in the window, stored: over the window and the drain after it
    sustained_msg_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    drain_s: float = 0.0
    usage: dict[str, Usage] = field(default_factory=dict)


@dataclass
class Product(Window):
    workers: int = 0
    offered: str = ""
    alert_latency_s: float | None = None


@dataclass
class Peer(Window):
    name: str = ""


def _count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM readings WHERE device_id LIKE 'bm%'").fetchone()
    return int(row[0]) if row else 0


def _server_watches() -> dict[str, Watch]:
    """The broker's and the database server's processes (by name: they are not ours)."""
    return {
        "mosquitto": Watch(lambda: pids_named("mosquitto")),
        "postgres": Watch(lambda: pids_named("postgres")),
    }


def _warm_up(load: Load, db_url: str) -> int:
    """Publish for the load's time and wait until it is all stored; the count then."""
    base = _count(db_url)
    sent = publish_for(load).messages
    deadline = time.monotonic() + 300
    while _count(db_url) < base + sent * load.shape and time.monotonic() < deadline:
        time.sleep(0.2)
    return _count(db_url)


def _measure(
    out: Window,
    load: Load,
    db_url: str,
    watches: dict[str, Watch],
    *,
    base: int,
    drain_limit_s: float,
) -> None:
    """The window: publish `load`, then wait (up to `drain_limit_s`) until all of it is stored;
    rates, latency, and the CPU and memory of the watched processes and the publishers."""
    for w in watches.values():
        w.begin()
    t0 = time.monotonic()
    wall0 = datetime.now(UTC)
    published = publish_for(load)
    sent, took = published.messages, published.seconds
    t1 = time.monotonic()
    out.stored_in_window = _count(db_url) - base
    for name, w in watches.items():
        out.usage[name] = w.end()
    # their own counts: RUSAGE_CHILDREN's peak would be any reaped child's (the peer's)
    out.usage["publishers"] = Usage(round(published.cpu_s, 2), round(published.peak_rss_mb, 1))
    out.window_s = round(t1 - t0, 2)
    out.published_messages = sent
    out.published_readings = sent * load.shape
    out.publish_msg_per_s = round(sent / took)
    out.readings_per_s = round(out.stored_in_window / out.window_s)
    out.msg_per_s = round(out.readings_per_s / load.shape)
    while _count(db_url) < base + out.published_readings and time.monotonic() - t1 < drain_limit_s:
        time.sleep(0.2)
    out.drain_s = round(time.monotonic() - t1, 1)
    out.stored_readings = _count(db_url) - base
    out.sustained_msg_per_s = round(out.stored_readings / load.shape / (out.window_s + out.drain_s))
    out.latency_ms = _latency(db_url, wall0)


def product_run(
    db_url: str,
    mqtt_url: str,
    workdir: Path,
    *,
    shape: int,
    workers: int,
    n_devices: int,
    warmup: float,
    seconds: float,
    procs: int,
    rate: float | None,
    say: Callable[[str], None],
    alert_wait: float = 180.0,
) -> Product:
    out = Product(
        shape, workers=workers, offered=f"{rate:g} msg/s" if rate else "as fast as possible"
    )
    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    env = dict(
        os.environ,
        URBANPULSE_DATABASE_URL=db_url,
        URBANPULSE_MQTT_URL=mqtt_url,
        URBANPULSE_TOPIC_PREFIX=prefix,
        URBANPULSE_INGEST_GROUP=f"bench-{uuid.uuid4().hex[:6]}",
        URBANPULSE_INGEST_SESSION_EXPIRY_S="60",
        URBANPULSE_INGEST_LOG_INTERVAL_S="10",
    )
    services: dict[str, Service] = {}
    try:
        for k in range(workers):
            services[f"ingest-{k}"] = Service(
                [
                    "ingest",
                    "--worker",
                    str(k),
                    "--client-id",
                    f"{env['URBANPULSE_INGEST_GROUP']}-{k}",
                ],
                env,
                workdir / f"ingest-{k}.log",
            )
        services["rules"] = Service(
            ["rules", "run", "--interval", "10", "--lateness", "5", "--lookback", "0.1"],
            env,
            workdir / "rules.log",
        )
        deadline = time.monotonic() + 60
        while not all(
            "subscribed to" in (workdir / f"ingest-{k}.log").read_text(errors="replace")
            for k in range(workers)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the ingest workers did not subscribe within 60 s")
            time.sleep(0.2)
        watches = {name: Watch(partial(list, [s.proc.pid])) for name, s in services.items()}
        watches |= _server_watches()
        base = _count(db_url)
        if warmup:
            say(f"    warm-up {warmup:.0f} s")
            base = _warm_up(Load(mqtt_url, shape, prefix, n_devices, warmup, procs, rate), db_url)
        gauge = threading.Thread(
            target=_pond,
            args=(mqtt_url, db_url, prefix, seconds, out, alert_wait),
            daemon=True,
        )
        gauge.start()
        say(f"    measuring {seconds:.0f} s")
        _measure(
            out,
            Load(mqtt_url, shape, prefix, n_devices, seconds, procs, rate),
            db_url,
            watches,
            base=base,
            drain_limit_s=600,
        )
        gauge.join(timeout=alert_wait + 30)
        return out
    finally:
        for s in services.values():
            s.stop()


def peer_run(
    server_url: str,
    mqtt_url: str,
    workdir: Path,
    *,
    shape: int,
    n_devices: int,
    seconds: float,
    procs: int,
    say: Callable[[str], None],
    rate: float | None = None,
) -> Peer:
    """Node-RED's flow into a database of its own, fed like ours: as fast as the publishers
    go (or at `rate`) for the window (after a 5 s warm-up), then drained for up to 5 minutes."""
    from bench.peer import NodeRed

    out = Peer(shape, name="Node-RED 4 (mqtt in → function → pg INSERT)")
    db_url = with_database(server_url, f"urbanpulse_bench_peer_{os.getpid()}")
    migrate(db_url, load_policy(), timescale_mode="off")
    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    red: NodeRed | None = None
    try:
        red = NodeRed(workdir, mqtt_url, db_url, f"{prefix}/+/+")
        node_pid = red.pid
        watches = {"node-red": Watch(lambda: [node_pid])} | _server_watches()

        say("    warm-up 5 s")
        base = _warm_up(Load(mqtt_url, shape, prefix, n_devices, 5.0, procs, rate), db_url)
        say(f"    measuring {seconds:.0f} s")
        _measure(
            out,
            Load(mqtt_url, shape, prefix, n_devices, seconds, procs, rate),
            db_url,
            watches,
            base=base,
            drain_limit_s=300,
        )
        return out
    finally:
        if red is not None:
            red.stop()
        drop_database(db_url)


def _pond(  # noqa: PLR0917 - a thread's target, arguments in reading order
    mqtt_url: str, db_url: str, prefix: str, seconds: float, out: Product, wait_s: float
) -> None:
    """The depth gauge: 3 cm, then 25 cm from a third into the window; the alert's latency is
    from publishing that first 25 cm reading to the alert row (opened_at)."""
    gauge = f"bench-gauge-{next(_runs)}"
    rise = time.monotonic() + seconds / 3
    risen_at: datetime | None = None
    with Publisher(parse_broker_url(mqtt_url), client_id=f"bench-gauge-{os.getpid()}") as pub:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = datetime.now(UTC)
            depth = 25.0 if time.monotonic() >= rise else 3.0
            if depth > 15 and risen_at is None:
                risen_at = now
            body = {"metric": "depth", "value": depth, "ts": int(now.timestamp() * 1000)}
            pub.publish(f"{prefix}/flood/{gauge}", json.dumps(body).encode())
            pub.idle(1.0)
    out.alert_latency_s = None
    if risen_at is None:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT min(opened_at) FROM alerts WHERE entity = %s AND rule_id = "
                "'flood.ponding_15cm'",
                (gauge,),
            ).fetchone()
        if row and row[0] is not None:
            out.alert_latency_s = round((row[0] - risen_at).total_seconds(), 1)
            return
        time.sleep(0.5)


def _latency(db_url: str, since: datetime) -> dict[str, float]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lag) "
            "FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS lag FROM readings "
            "WHERE ts >= %s AND device_id LIKE 'bm%%') x",
            (since,),
        ).fetchone()
    if not row or row[0] is None:
        return {}
    return dict(zip(("p50", "p95", "p99"), (round(float(v), 1) for v in row[0]), strict=True))


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench ingest", description=(__doc__ or "").split("\n\n")[0]
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), nargs="+", default=["3", "1", "100"])
    ap.add_argument("--workers", type=int, default=2, help="ingest processes (default 2)")
    ap.add_argument("--publishers", type=int, default=1, help="publishing processes (default 1)")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--rate", type=float, help="offered messages/s (default: as fast as possible)")
    ap.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=[],
        help="also run the first shape at these offered rates (msg/s), for the plot",
    )
    ap.add_argument("--ceiling-seconds", type=float, default=10.0)
    ap.add_argument(
        "--alert-wait",
        type=float,
        default=180.0,
        help="how long to wait for the injected alert after the window (0: do not measure it)",
    )
    ap.add_argument(
        "--mqtt-url", help="an existing broker (default: a Mosquitto of the benchmark's own)"
    )
    ap.add_argument(
        "--peer",
        choices=("node-red", "none"),
        default="node-red",
        help="also run Node-RED's typical flow on the first shape (from npm; default)",
    )
    ap.add_argument(
        "--peer-seconds",
        type=float,
        default=10.0,
        help="the peer's window (default 10: Node-RED takes everything into memory at once and "
        "drains it for minutes)",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write the sweep as an SVG chart here")
    args = ap.parse_args(argv)
    settings = load_settings()
    # a SIGTERM unwinds like Ctrl-C: the broker, the services, the peer and the scratch
    # databases are stopped and dropped by the finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def say(line: str) -> None:
        print(line, flush=True)

    db_url = with_database(settings.database_url, f"urbanpulse_bench_ingest_{os.getpid()}")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shapes": {},
        "sweep": [],
    }
    with tempfile.TemporaryDirectory(prefix="up-bench-") as tmp:
        broker = None if args.mqtt_url else Broker(Path(tmp))
        mqtt_url = args.mqtt_url or (broker.url if broker else "")
        say(
            f"ingest benchmark: {args.devices:,} devices, {args.workers} ingest worker(s), "
            f"{args.publishers} publisher process(es), {os.cpu_count()} CPU(s), "
            f"broker {parse_broker_url(mqtt_url)}, database {where(db_url)}"
        )
        migrate(db_url, load_policy(), timescale_mode=settings.timescaledb)
        try:
            with psycopg.connect(db_url) as conn:
                upsert_devices(conn, devices(args.devices))
            for name in args.shape:
                result["shapes"][name] = _shape(
                    args, name, db_url=db_url, mqtt_url=mqtt_url, workdir=Path(tmp), say=say
                )
                say(table_row(name, result["shapes"][name]))
            if args.peer == "node-red":
                result["peer"] = _peer(
                    args,
                    db_url=settings.database_url,
                    mqtt_url=mqtt_url,
                    workdir=Path(tmp),
                    say=say,
                    ours=result["shapes"],
                )
            for rate in args.sweep:
                shape = SHAPES[args.shape[0]]
                say(f"  sweep: {rate:g} msg/s offered, shape {shape}")
                prod = product_run(
                    db_url, mqtt_url, Path(tmp), shape=shape, workers=args.workers,
                    n_devices=args.devices, warmup=min(args.warmup, 5.0), seconds=args.seconds,
                    procs=args.publishers, rate=rate, say=say, alert_wait=args.alert_wait,
                )  # fmt: skip
                result["sweep"].append(asdict(prod))
        finally:
            drop_database(db_url)
            if broker is not None:
                broker.stop()
    say(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        say(f"wrote {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(svg_chart(result))
        say(f"wrote {args.plot}")
    runs = [e["product"] for e in result["shapes"].values()] + result["sweep"]
    lost = [r for r in runs if r["stored_readings"] != r["published_readings"]]
    if lost:
        say(f"LOST OR DUPLICATED READINGS in {len(lost)} run(s)")
    return 1 if lost else 0


def _shape(
    args: argparse.Namespace,
    name: str,
    *,
    db_url: str,
    mqtt_url: str,
    workdir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    shape = SHAPES[name]
    say(f"  shape: {name} reading(s) a message")
    say("    broker ceiling (QoS 1, a subscriber that only counts)")
    broker = broker_ceiling(
        mqtt_url, shape=shape, n_devices=args.devices, seconds=args.ceiling_seconds,
        procs=args.publishers,
    )  # fmt: skip
    say("    database ceiling (one binary COPY into readings)")
    copy = copy_ceiling(
        db_url,
        # about three seconds of what the broker moved, within bounds that keep it short
        readings=min(2_000_000, max(200_000, int(broker["msg_per_s"] * shape * 3))),
        n_devices=args.devices,
    )
    # never offer more than the database could take with a bare COPY: past that, the window
    # only piles a backlog in the broker (gigabytes with gateway batches) that takes minutes
    # to drain, and the product is saturated either way
    offered = args.rate or copy["readings_per_s"] / shape
    say(
        "    UrbanPulse: ingest workers and the rules runner"
        + ("" if args.rate else f" (offered at most the COPY ceiling: {offered:,.0f} msg/s)")
    )
    prod = product_run(
        db_url, mqtt_url, workdir, shape=shape, workers=args.workers, n_devices=args.devices,
        warmup=args.warmup, seconds=args.seconds, procs=args.publishers, rate=offered, say=say,
        alert_wait=args.alert_wait,
    )  # fmt: skip
    return {
        "broker": broker,
        "copy": copy,
        "product": asdict(prod),
        "ratios": {
            "of_broker_ceiling": round(prod.msg_per_s / max(broker["msg_per_s"], 1), 2),
            "of_copy_ceiling": round(prod.readings_per_s / max(copy["readings_per_s"], 1), 2),
        },
    }


def _peer(
    args: argparse.Namespace,
    *,
    db_url: str,
    mqtt_url: str,
    workdir: Path,
    say: Callable[[str], None],
    ours: dict[str, Any],
) -> dict[str, Any]:
    from bench.peer import available, install

    name = args.shape[0]
    why = available()
    if why is None:
        try:
            install(say)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            why = f"npm install failed: {exc}"
    if why:
        say(f"  peer: skipped ({why})")
        return {"skipped": why}
    say(f"  peer: Node-RED, shape {name}")
    peer = peer_run(
        db_url, mqtt_url, workdir, shape=SHAPES[name], n_devices=args.devices,
        seconds=args.peer_seconds, procs=args.publishers, say=say, rate=args.rate,
    )  # fmt: skip
    mine = ours[name]["product"]["sustained_msg_per_s"]
    out = asdict(peer)
    out["ours_over_peer"] = round(mine / max(peer.sustained_msg_per_s, 1), 2)
    say(
        f"    Node-RED: {peer.msg_per_s:,} msg/s stored in the window, "
        f"{peer.sustained_msg_per_s:,} msg/s until all was stored (published "
        f"{peer.publish_msg_per_s:,} msg/s; {peer.stored_readings:,} of "
        f"{peer.published_readings:,} readings, {peer.drain_s} s after the window); "
        f"UrbanPulse / Node-RED = {out['ours_over_peer']}"
    )
    return out


def svg_chart(result: dict[str, Any]) -> str:
    """Stored messages/s and p99 latency against the offered rate, as a small SVG."""
    pts = sorted(
        (float(r["offered"].split()[0]), r["msg_per_s"], r["latency_ms"].get("p99", 0.0))
        for r in result["sweep"]
        if r["offered"][0].isdigit()
    )
    w, h, left, bottom = 640, 360, 70, 300
    if not pts:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"></svg>\n'
    xmax = max(p[0] for p in pts) * 1.1
    ymax = max(*(p[1] for p in pts), xmax) * 1.05
    lmax = max(p[2] for p in pts) * 1.2 or 1.0

    def x(v: float) -> float:
        return left + v / xmax * (w - left - 70)

    def y(v: float, top: float) -> float:
        return bottom - v / top * (bottom - 30)

    thr = " ".join(f"{x(o):.1f},{y(m, ymax):.1f}" for o, m, _ in pts)
    lat = " ".join(f"{x(o):.1f},{y(p99, lmax):.1f}" for o, _, p99 in pts)
    ideal = f"{x(0):.1f},{y(0, ymax):.1f} {x(xmax):.1f},{y(xmax, ymax):.1f}"
    title = f"python -m bench ingest, {result['date']}, {result['machine']['cpus']} CPUs"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="18">{title}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{w - 70}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="30" x2="{left}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{w - 70}" y1="30" x2="{w - 70}" y2="{bottom}" stroke="#c0392b"/>',
        f'<polyline points="{ideal}" fill="none" stroke="#bbb" stroke-dasharray="4 4"/>',
        f'<polyline points="{thr}" fill="none" stroke="#2c7fb8" stroke-width="2"/>',
        f'<polyline points="{lat}" fill="none" stroke="#c0392b" stroke-width="2"/>',
        f'<text x="{left}" y="{bottom + 30}">offered load, messages/s (to {xmax:,.0f})</text>',
        f'<text x="{left + 5}" y="44" fill="#2c7fb8">stored messages/s (to {ymax:,.0f})</text>',
        f'<text x="{w - 75}" y="44" fill="#c0392b" text-anchor="end">p99 latency, ms '
        f"(to {lmax:,.0f})</text>",
    ]
    for o, m, p99 in pts:
        parts.append(f'<circle cx="{x(o):.1f}" cy="{y(m, ymax):.1f}" r="3" fill="#2c7fb8"/>')
        parts.append(f'<circle cx="{x(o):.1f}" cy="{y(p99, lmax):.1f}" r="3" fill="#c0392b"/>')
        parts.append(f'<text x="{x(o):.1f}" y="{bottom + 14}" text-anchor="middle">{o:,.0f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def table_row(name: str, e: dict[str, Any]) -> str:
    p = e["product"]
    lat = p["latency_ms"]
    return (
        f"    {name:>3}/msg: {p['msg_per_s']:>8,} msg/s {p['readings_per_s']:>9,} readings/s "
        f"(published {p['publish_msg_per_s']:,} msg/s), p50/p95/p99 "
        f"{lat.get('p50', 0):,.0f}/{lat.get('p95', 0):,.0f}/{lat.get('p99', 0):,.0f} ms, "
        f"alert {p['alert_latency_s']} s; broker ceiling {e['broker']['msg_per_s']:,} msg/s "
        f"(×{e['ratios']['of_broker_ceiling']}), COPY {e['copy']['readings_per_s']:,} "
        f"readings/s (×{e['ratios']['of_copy_ceiling']}); stored {p['stored_readings']:,} of "
        f"{p['published_readings']:,}"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        "",
        "| shape | msg/s in the window | until all stored | readings/s | of broker QoS 1 "
        "| of COPY | p50 / p95 / p99 ms | alert s | stored / published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["shapes"].items():
        p = e["product"]
        lat = p["latency_ms"]
        lines.append(
            f"| {name} | {p['msg_per_s']:,} | {p['sustained_msg_per_s']:,} | "
            f"{p['readings_per_s']:,} | "
            f"{e['ratios']['of_broker_ceiling']} ({e['broker']['msg_per_s']:,}) | "
            f"{e['ratios']['of_copy_ceiling']} ({e['copy']['readings_per_s']:,}) | "
            f"{lat.get('p50', 0):,.0f} / {lat.get('p95', 0):,.0f} / {lat.get('p99', 0):,.0f} | "
            f"{p['alert_latency_s']} | {p['stored_readings']:,} / {p['published_readings']:,} |"
        )
    peer = result.get("peer")
    if peer and "skipped" not in peer:
        lat = peer["latency_ms"]
        lines.append(
            f"| {peer['shape']}, Node-RED | {peer['msg_per_s']:,} | "
            f"{peer['sustained_msg_per_s']:,} | {peer['readings_per_s']:,} "
            f"| UrbanPulse ÷ Node-RED = {peer['ours_over_peer']} | | "
            f"{lat.get('p50', 0):,.0f} / {lat.get('p95', 0):,.0f} / {lat.get('p99', 0):,.0f} | | "
            f"{peer['stored_readings']:,} / {peer['published_readings']:,} |"
        )
    lines.append("")
    for name, e in result["shapes"].items():
        usage = e["product"]["usage"]
        window = e["product"]["window_s"] or 1
        lines.append(
            f"CPU (cores) and peak RSS, shape {name}: "
            + ", ".join(
                f"{k} {u['cpu_s'] / window:.2f} / {u['peak_rss_mb']:.0f} MB"
                for k, u in usage.items()
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
