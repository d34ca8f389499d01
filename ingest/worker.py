"""The ingest worker: batch, validate, store in one transaction, then acknowledge.

Threads: paho's network thread only converts and enqueues (`offer`); the worker thread owns
the database connection, validation and acknowledgements. Memory stays bounded: the broker
should never have more than Receive Maximum unacknowledged messages in flight to us, so while
the database is down the backlog waits in the broker, not here. Brokers do not all keep to it
(Mosquitto 2.0.11 was seen holding 7-9 times the quota in flight while acknowledgements flow),
so `offer` also holds the network thread while `max_held` messages wait here: the socket is
not read meanwhile and the rest stays with the broker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from ingest.metrics import IngestMetrics
from urbanpulse.backoff import Backoff
from urbanpulse.contract import (
    DeviceRef,
    InboundMessage,
    Limits,
    Registry,
    parse_message,
    parse_topic,
)
from urbanpulse.contract.model import ParseOutcome, Reading, Reason, Rejection
from urbanpulse.db.connect import connect
from urbanpulse.db.devices import device_refs
from urbanpulse.db.store import QuarantineEntry, StoreResult, store_batch
from urbanpulse.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

# An unknown device triggers a registry re-read, at most this often (a device provisioned a
# moment ago is picked up quickly; a flood of unknown ids does not hammer the database).
UNKNOWN_DEVICE_REFRESH_S = 2.0


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_messages: int = 500
    max_readings: int = 10_000
    max_delay: float = 0.2


class Stopped(Exception):
    """The worker was asked to stop while waiting for the database."""


class DeviceCache:
    """The registry snapshot used for validation, re-read periodically and on a miss."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self.devices: dict[str, DeviceRef] = {}
        self.loaded_at = float("-inf")

    def get(self, conn: psycopg.Connection[Any], wanted: set[str]) -> dict[str, DeviceRef]:
        now = time.monotonic()
        stale = now - self.loaded_at > self.refresh_s
        missing = bool(wanted - self.devices.keys())
        if stale or (missing and now - self.loaded_at > UNKNOWN_DEVICE_REFRESH_S):
            with conn.transaction():
                self.devices = device_refs(conn)
            self.loaded_at = now
        return self.devices


class Inbox:
    """Messages from the network thread to the writer, handed over a batch at a time.

    A `queue.SimpleQueue` read message by message wakes the waiting writer on every put: at
    thousands of messages a second each of them cost a thread switch and a GIL hand-over
    between the two threads, about a tenth of a worker's CPU. Here the producer only wakes
    the writer when a batch is full (by count, or by an estimate of its readings), or for the
    first message of a batch; the writer otherwise sleeps until the batch's delay is up.
    """

    def __init__(self) -> None:
        self._items: deque[InboundMessage] = deque()
        self._bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._want_n = 1  # wake the writer when this many messages wait …
        self._want_bytes = 0  # … or this many payload bytes (0: no byte bound)
        self._first_at = 0.0  # when the oldest waiting message arrived

    def put(self, msg: InboundMessage) -> None:
        with self._cond:
            if not self._items:
                self._first_at = time.monotonic()
            self._items.append(msg)
            self._bytes += len(msg.payload)
            if len(self._items) >= self._want_n or (
                self._want_bytes and self._bytes >= self._want_bytes
            ):
                self._want_n = 1 << 62  # woken once: no more notifications until it asks
                self._cond.notify()

    def __len__(self) -> int:
        return len(self._items)

    def take(
        self, stop: threading.Event, *, max_messages: int, max_bytes: int, wait: float, delay: float
    ) -> list[InboundMessage]:
        """Up to `max_messages` (and about `max_bytes`): waits up to `wait` for a first message,
        until `delay` after the oldest arrived for the batch to fill."""
        with self._cond:
            if not self._items:
                self._want_n, self._want_bytes = 1, 0
                self._cond.wait(wait)
                if not self._items:
                    return []
            deadline = self._first_at + delay
            while len(self._items) < max_messages and self._bytes < max_bytes and not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._want_n, self._want_bytes = max_messages, max_bytes
                self._cond.wait(remaining)
            self._want_n, self._want_bytes = 1, 0
            out: list[InboundMessage] = []
            size = 0
            while self._items and len(out) < max_messages and (not out or size < max_bytes):
                msg = self._items.popleft()
                size += len(msg.payload)
                out.append(msg)
            self._bytes -= size
            if self._items:  # what is left arrived after the oldest taken: close enough
                self._first_at = time.monotonic()
            return out

    def drain(self) -> list[InboundMessage]:
        with self._cond:
            out = list(self._items)
            self._items.clear()
            self._bytes = 0
            return out


class IngestWorker:
    """Consumes `inbox`, stores, and calls `ack` with each batch once it is committed."""

    def __init__(
        self,
        *,
        database_url: str,
        registry: Registry,
        prefix: str,
        limits: Limits,
        batch: BatchPolicy,
        ack: Callable[[list[InboundMessage]], object],
        metrics: IngestMetrics | None = None,
        device_refresh_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_held: int = 0,
    ) -> None:
        self.database_url = database_url
        self.registry = registry
        self.prefix = prefix
        self.limits = limits
        self.batch = batch
        self._ack = ack
        self.metrics = metrics or IngestMetrics()
        self.clock = clock
        self.inbox = Inbox()
        self.devices = DeviceCache(device_refresh_s)
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = Backoff()
        self.max_held = max_held  # 0: no bound of our own
        self._held = 0  # offered and not yet acknowledged (or given up at shutdown)
        self._room = threading.Condition()
        self._closing = False

    # -- called from the network thread ---------------------------------------------------------
    def offer(self, msg: InboundMessage) -> None:
        if self.max_held:
            with self._room:
                while self._held >= self.max_held and not self._closing:
                    self._room.wait(1.0)
                self._held += 1
        self.metrics.received.inc()
        self.metrics.backlog.inc()  # prometheus gauges are thread-safe
        self.inbox.put(msg)

    def _release(self, count: int) -> None:
        if self.max_held:
            with self._room:
                self._held -= count
                self._room.notify_all()

    # -- the worker loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Process batches until `stop` is set, then flush what has already arrived."""
        try:
            while not stop.is_set():
                batch = self.collect(stop)
                if batch:
                    self.process(batch, stop)
            leftover = self.drain()
            if leftover:  # SIGTERM: store and acknowledge what we hold, with a short deadline
                log.info("stopping: flushing %d received messages", len(leftover))
                deadline = threading.Event()
                timer = threading.Timer(10.0, deadline.set)
                timer.start()
                try:
                    self.process(leftover, deadline)
                finally:
                    timer.cancel()
        except Stopped:
            log.warning(
                "stopped before the database came back; unacknowledged messages stay "
                "with the broker and will be redelivered"
            )
        finally:
            with self._room:  # a network thread held in offer() must not wait for us now
                self._closing = True
                self._room.notify_all()
            self.close()

    def collect(self, stop: threading.Event) -> list[InboundMessage]:
        """Up to one batch: flushed by message count, reading estimate, or age of the first."""
        return self.inbox.take(
            stop,
            max_messages=self.batch.max_messages,
            # ~40 bytes per reading is the leanest payload form: a cheap upper bound
            max_bytes=self.batch.max_readings * 40,
            wait=0.2,
            delay=self.batch.max_delay,
        )

    def drain(self) -> list[InboundMessage]:
        return self.inbox.drain()

    def validate(
        self, batch: list[InboundMessage], conn: psycopg.Connection[Any]
    ) -> list[ParseOutcome]:
        wanted = {t[1] for t in (parse_topic(m.topic, self.prefix) for m in batch) if t}
        devices = self.devices.get(conn, wanted)
        now = self.clock()
        return [
            parse_message(
                m,
                registry=self.registry,
                devices=devices,
                prefix=self.prefix,
                now=now,
                limits=self.limits,
            )
            for m in batch
        ]

    def process(self, batch: list[InboundMessage], stop: threading.Event) -> StoreResult:
        """Validate and store a batch, retrying through outages; then acknowledge it."""
        while True:
            try:
                conn = self.connection()
                started = time.perf_counter()
                outcomes = self.validate(batch, conn)
                result = self.store(conn, batch, outcomes)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                self.metrics.db_up.set(1)
                self.metrics.last_store.set_to_current_time()
                self._backoff.reset()
                break
            except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable) as exc:
                self.metrics.db_errors.inc()
                self.metrics.db_up.set(0)
                self.close()
                delay = self._backoff.delay()
                log.warning(
                    "database write failed (%s); %d messages held unacknowledged, "
                    "retrying in %.1f s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    len(batch),
                    delay,
                )
                if stop.wait(delay):
                    raise Stopped from exc
        self.metrics.stored.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        for outcome in outcomes:
            if outcome.reason is not None:
                self.metrics.quarantined.labels(reason=outcome.reason.value).inc()
        self._ack(batch)  # after the commit, in arrival order
        self.metrics.backlog.dec(len(batch))
        self._release(len(batch))
        return result

    def store(
        self,
        conn: psycopg.Connection[Any],
        batch: list[InboundMessage],
        outcomes: list[ParseOutcome],
    ) -> StoreResult:
        readings = [r for o in outcomes for r in o.readings]
        quarantine = [
            QuarantineEntry.of(m, o) for m, o in zip(batch, outcomes, strict=True) if o.quarantined
        ]
        try:
            return store_batch(conn, readings, quarantine)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            # Not an outage: some row was refused. Store message by message so that one bad
            # message cannot hold back the rest, and quarantine the one the database refuses.
            log.warning("batch refused by the database (%s); storing message by message", exc)
            return self.store_one_by_one(conn, batch, outcomes)

    def store_one_by_one(
        self,
        conn: psycopg.Connection[Any],
        batch: list[InboundMessage],
        outcomes: list[ParseOutcome],
    ) -> StoreResult:
        inserted = duplicates = quarantined = 0
        for msg, outcome in zip(batch, outcomes, strict=True):
            entry = [QuarantineEntry.of(msg, outcome)] if outcome.quarantined else []
            readings: list[Reading] = list(outcome.readings)
            try:
                res = store_batch(conn, readings, entry)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                rejection = Rejection(Reason.STORAGE_ERROR, str(exc).splitlines()[0])
                res = store_batch(
                    conn,
                    [],
                    [
                        QuarantineEntry(
                            msg.topic,
                            msg.payload,
                            msg.received_at,
                            (rejection, *outcome.rejections),
                            outcome.device_id,
                        )
                    ],
                )
            inserted += res.inserted
            duplicates += res.duplicates
            quarantined += res.quarantined
        return StoreResult(inserted, duplicates, quarantined)

    # -- connection -----------------------------------------------------------------------------
    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (DatabaseAuthError propagates: it is fatal)."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
