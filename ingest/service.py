"""`urbanpulse ingest`: wires settings, the MQTT source and the worker; handles signals."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

from prometheus_client import start_http_server

from ingest.metrics import IngestMetrics
from ingest.source import MqttSource
from ingest.worker import BatchPolicy, IngestWorker
from urbanpulse.broker import parse_broker_url
from urbanpulse.contract import Limits
from urbanpulse.contract.model import InboundMessage
from urbanpulse.contract.registry import default_registry
from urbanpulse.errors import DatabaseAuthError, UrbanPulseError
from urbanpulse.settings import Settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 3  # misconfiguration: wrong credentials, refused subscription


def default_client_id(group: str, worker: int) -> str:
    """Stable across restarts, so a restarted worker resumes its persistent session."""
    return f"urbanpulse-{group}-{socket.gethostname()}-{worker}"


def topic_filter(settings: Settings) -> str:
    return f"$share/{settings.ingest_group}/{settings.topic_prefix}/+/+"


def gone_topic(settings: Settings, client_id: str = "+") -> str:
    """Where a worker's will says it is gone (and its session needs draining)."""
    return f"urbanpulse/ingest/{settings.ingest_group}/gone/{client_id}"


def back_topic(settings: Settings, client_id: str) -> str:
    """Where a worker says it is connected (again), on every connection."""
    return f"urbanpulse/ingest/{settings.ingest_group}/back/{client_id}"


def control_filter(settings: Settings) -> str:
    return f"urbanpulse/ingest/{settings.ingest_group}/+/+"


ADOPT_QUIET_S = 2.0  # an adopted session is drained once nothing came for this long
ADOPT_GRACE_S = 5.0  # after a will, wait this long for the worker to say it is back


def _ack_via(sessions: dict[str, MqttSource], batch: list[InboundMessage]) -> None:
    """Acknowledge each message through the session it came on (gone: the broker redelivers)."""
    by_session: dict[str, list[InboundMessage]] = {}
    for msg in batch:  # arrival order is kept within each session
        by_session.setdefault(msg.via, []).append(msg)
    for via, msgs in by_session.items():
        src = sessions.get(via)  # one read: the main thread may end an adoption meanwhile
        if src is not None:
            src.ack(msgs)


class Adoptions:
    """The sessions of peers that are gone, taken over until drained.

    `notice` is called from the network thread with what a control topic said ("gone" from a
    will, "back" from a worker that connected); `tend`, from the main loop, adopts the peers
    that were said gone and did not come back within `grace_s`, and ends the adoptions that
    are drained or were taken back by their owner."""

    def __init__(
        self,
        own_id: str,
        sessions: dict[str, MqttSource],
        make: Callable[..., MqttSource],
        grace_s: float = ADOPT_GRACE_S,
    ) -> None:
        self.own_id, self.sessions, self.make, self.grace_s = own_id, sessions, make, grace_s
        self.notices: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.due: dict[str, float] = {}  # peer said gone → when to adopt it
        self.adopted: dict[str, MqttSource] = {}

    def notice(self, kind: str, peer: str) -> None:
        self.notices.put((kind, peer))

    def tend(self) -> None:
        now = time.monotonic()
        while True:
            try:
                kind, peer = self.notices.get_nowait()
            except queue.Empty:
                break
            if peer == self.own_id or not peer:
                continue
            if kind == "gone" and peer not in self.adopted and peer not in self.due:
                log.info(
                    "ingest worker %s may be gone; adopting its session in %.0f s",
                    peer,
                    self.grace_s,
                )
                self.due[peer] = now + self.grace_s
            elif kind == "back" and self.due.pop(peer, None) is not None:
                log.info("ingest worker %s is back; nothing to adopt", peer)
        for dead, at in list(self.due.items()):
            if at > now:
                continue
            del self.due[dead]
            log.warning("ingest worker %s is gone; draining its session", dead)
            self.adopted[dead] = self.sessions[dead] = self.make(dead, adopting=True)
            self.adopted[dead].start()
        for dead, src in list(self.adopted.items()):
            if src.taken_over:
                src.stop()
            elif src.drained(ADOPT_QUIET_S):
                log.warning(
                    "drained the session of %s (%d message(s)); ended it, its share goes to the "
                    "live workers",
                    dead,
                    src.received,
                )
                src.end_session()
            else:
                continue
            del self.adopted[dead]
            self.sessions.pop(dead, None)


def run_ingest(
    settings: Settings, *, worker_index: int = 0, stop: threading.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); returns the process exit code."""
    stop = stop or threading.Event()
    metrics = IngestMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=metrics.registry)
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    sessions: dict[str, MqttSource] = {}  # client id → the source holding it (ours, adopted)
    worker = IngestWorker(
        database_url=settings.database_url,
        registry=default_registry(),
        prefix=settings.topic_prefix,
        limits=Limits.of(settings),
        batch=BatchPolicy(
            settings.ingest_batch_messages,
            settings.ingest_batch_readings,
            settings.ingest_batch_delay_ms / 1000.0,
        ),
        ack=lambda batch: _ack_via(sessions, batch),
        metrics=metrics,
        device_refresh_s=settings.ingest_device_refresh_s,
        max_held=settings.ingest_max_inflight,
    )
    worker.connection()  # fail fast on a wrong URL or credentials, before taking messages
    broker = parse_broker_url(settings.mqtt_url)
    own_id = settings.ingest_client_id or default_client_id(settings.ingest_group, worker_index)
    adopt = settings.ingest_adopt_after_s > 0

    def on_broker_stat(topic: str, value: str) -> None:
        with contextlib.suppress(ValueError):
            metrics.broker_stored.set(float(value))

    def session(client_id: str, *, adopting: bool) -> MqttSource:
        return MqttSource(
            broker,
            client_id=client_id,
            topic_filter=topic_filter(settings),
            sink=worker.offer,
            session_expiry_s=settings.ingest_session_expiry_s,
            receive_maximum=settings.ingest_max_inflight,
            will_topic=gone_topic(settings, client_id) if adopt else None,
            will_delay_s=settings.ingest_adopt_after_s,
            # an adopted session holds its owner's subscription to the notices too: they are
            # acknowledged and ignored there
            control_filter=control_filter(settings) if adopt else None,
            on_control=None if adopting else adoptions.notice,
            announce_topic=back_topic(settings, client_id) if adopt and not adopting else None,
            on_broker_stat=None if adopting else on_broker_stat,
            adopting=adopting,
        )

    adoptions = Adoptions(
        own_id, sessions, session, min(ADOPT_GRACE_S, float(settings.ingest_adopt_after_s))
    )
    source = session(own_id, adopting=False)
    sessions[own_id] = source

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; flushing and stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    failure: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            failure.append(exc)
            stop.set()

    thread = threading.Thread(target=work, name="ingest-writer", daemon=True)
    source.start()
    thread.start()
    log.info(
        "ingest worker %d (pid %d) consuming %s from %s",
        worker_index,
        os.getpid(),
        topic_filter(settings),
        source.broker,
    )
    last_log = time.monotonic()
    while not stop.wait(min(settings.ingest_log_interval_s, 1.0)):
        metrics.mqtt_up.set(1 if source.connected.is_set() else 0)
        adoptions.tend()
        if source.fatal:
            stop.set()
            break
        if time.monotonic() - last_log >= settings.ingest_log_interval_s:
            last_log = time.monotonic()
            log.info("ingest: %s", metrics.log_line())
    thread.join()
    for other in adoptions.adopted.values():  # not drained yet: let a peer finish it
        other.stop(will=True)
    # SIGTERM: if we are not back within the will's delay, a peer drains what our session holds
    source.stop(will=adopt)
    log.info("ingest stopped: %s", metrics.log_line())
    if source.fatal:
        log.error("%s", source.fatal)
        return EXIT_FATAL
    if failure:
        exc = failure[0]
        if isinstance(exc, DatabaseAuthError):
            log.error("%s", exc)
            return EXIT_FATAL
        if isinstance(exc, UrbanPulseError):
            log.error("%s", exc)
            return 1
        raise exc
    return EXIT_OK
