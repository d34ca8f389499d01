"""Helpers for tests that run the pipeline: settings, an in-thread ingest worker, publishing,
and reading back what was stored or quarantined."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from ingest.service import run_ingest
from simulators.engine import Message
from simulators.publisher import Publisher
from simulators.run import Plan
from urbanpulse.broker import parse_broker_url
from urbanpulse.contract import (
    DeviceRef,
    InboundMessage,
    ParseOutcome,
    default_registry,
    parse_message,
)
from urbanpulse.settings import Settings, load_settings


def settings_for(db_url: str, broker_url: str, prefix: str, **extra: Any) -> Settings:
    return load_settings(
        database_url=db_url,
        mqtt_url=broker_url,
        topic_prefix=prefix,
        ingest_group=f"g{prefix.split('/', maxsplit=1)[0]}",
        ingest_log_interval_s=5.0,
        ingest_batch_delay_ms=50,
        **extra,
    )


def stored(db_url: str) -> set[tuple[str, str, int]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint FROM readings"
        ).fetchall()
    return {(str(d), str(m), int(t)) for d, m, t in rows}


def quarantined(db_url: str) -> Counter[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1").fetchall()
    return Counter({str(r): int(n) for r, n in rows})


def wait_until(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def publish(
    broker_url: str,
    messages: list[tuple[str, bytes]],
    *,
    rate: float | None = None,
    client_id: str = "test-publisher",
) -> None:
    with Publisher(parse_broker_url(broker_url), client_id=f"{client_id}-{os.getpid()}") as pub:
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            pub.publish(topic, payload)
            if rate:
                pub.idle(max(0.0, started + i / rate - time.monotonic()))


class _Subscribed(logging.Handler):
    """Sets an event when the ingest source logs its subscription."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("subscribed to"):
            self.event.set()


class InThreadIngest:
    """run_ingest in a thread of the test process, stopped like SIGTERM would.

    Entering waits until the worker has subscribed: messages published before a shared
    subscription exists reach nobody."""

    def __init__(self, settings: Settings, *, wait_subscribed: bool = True) -> None:
        self.stop = threading.Event()
        self.code: list[int] = []
        self.wait_subscribed = wait_subscribed
        self.thread = threading.Thread(
            target=lambda: self.code.append(run_ingest(settings, stop=self.stop)), daemon=True
        )

    def __enter__(self) -> InThreadIngest:
        watch = _Subscribed()
        source_log = logging.getLogger("ingest.source")
        previous = source_log.level
        source_log.setLevel(logging.INFO)
        source_log.addHandler(watch)
        try:
            self.thread.start()
            if self.wait_subscribed and not watch.event.wait(30):
                raise AssertionError("the ingest worker did not subscribe within 30 s")
        finally:
            source_log.removeHandler(watch)
            source_log.setLevel(previous)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def as_ingest(plan: Plan, messages: Iterable[Message]) -> Iterator[tuple[Message, ParseOutcome]]:
    """Each simulated message with what the real contract makes of it, a minute after the
    scenario's end (the plan's fleet provisioned, the plan's topic prefix)."""
    refs = {d.device_id: DeviceRef(d.device_id, d.domain) for d in plan.fleet()}
    now = datetime.fromtimestamp(plan.end + 60, UTC)
    registry = default_registry()
    for m in messages:
        yield (
            m,
            parse_message(
                InboundMessage(m.topic, m.payload, now),
                registry=registry,
                devices=refs,
                prefix=plan.prefix,
                now=now,
            ),
        )
