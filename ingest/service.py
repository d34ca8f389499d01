"""`urbanpulse ingest`: wires settings, the MQTT source and the worker; handles signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from types import FrameType

from prometheus_client import start_http_server

from ingest.metrics import IngestMetrics
from ingest.source import MqttSource
from ingest.worker import BatchPolicy, IngestWorker, validation_limits
from urbanpulse.broker import parse_broker_url
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


def run_ingest(
    settings: Settings, *, worker_index: int = 0, stop: threading.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); returns the process exit code."""
    stop = stop or threading.Event()
    metrics = IngestMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=metrics.registry)
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    source_box: list[MqttSource] = []
    worker = IngestWorker(
        database_url=settings.database_url,
        registry=default_registry(),
        prefix=settings.topic_prefix,
        limits=validation_limits(settings),
        batch=BatchPolicy(
            settings.ingest_batch_messages,
            settings.ingest_batch_readings,
            settings.ingest_batch_delay_ms / 1000.0,
        ),
        ack=lambda msg: source_box[0].ack(msg),  # noqa: PLW0108 - late-bound: source comes next
        metrics=metrics,
        device_refresh_s=settings.ingest_device_refresh_s,
    )
    worker.connection()  # fail fast on a wrong URL or credentials, before taking messages
    source = MqttSource(
        parse_broker_url(settings.mqtt_url),
        client_id=settings.ingest_client_id
        or default_client_id(settings.ingest_group, worker_index),
        topic_filter=topic_filter(settings),
        sink=worker.offer,
        session_expiry_s=settings.ingest_session_expiry_s,
        receive_maximum=settings.ingest_max_inflight,
    )
    source_box.append(source)

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
        if source.fatal:
            stop.set()
            break
        if time.monotonic() - last_log >= settings.ingest_log_interval_s:
            last_log = time.monotonic()
            log.info("ingest: %s", metrics.log_line())
    thread.join()
    source.stop()
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
