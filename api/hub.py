"""The live alert stream's source: one task per API worker follows the `alert_feed` table and
hands each new event to every connected stream.

PostgreSQL's LISTEN/NOTIFY (a trigger on alert_feed) wakes it at once; it also polls, so a lost
notification or a dropped listening connection delays events by at most POLL_S.

Feed ids are taken when a row is inserted but become visible when its transaction commits, so
id 100 can appear after id 101 (a rules runner's batch still open while an acknowledgement
commits). The hub hands events out strictly in id order and stops at a gap: it waits for the
missing id (its transaction still running) up to GAP_WAIT_S, after which the id is taken to
belong to a transaction that rolled back. `last` is therefore a position below which the feed
is final, and a reconnecting client is replayed from the table up to it, then follows live.

A stream whose client reads too slowly is closed rather than buffered without bound; its client
reconnects with Last-Event-ID and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger("urbanpulse.api.hub")

POLL_S = 2.0
GAP_POLL_S = 0.2  # while waiting for a missing id
GAP_WAIT_S = 30.0  # longer than any transaction that writes alert events
QUEUE_MAX = 1000  # events buffered per stream before it is closed as too slow
PAGE = 500
CHANNEL = "urbanpulse_alert_feed"

FEED_SQL = """
    SELECT f.id, f.alert_id, f.kind, f.at, f.actor, f.detail,
           a.rule_id, a.entity, a.status, a.severity, a.owner
      FROM alert_feed f JOIN alerts a ON a.id = f.alert_id
     WHERE f.id > %s ORDER BY f.id LIMIT %s
"""


class Overflow(Exception):
    """A stream fell too far behind."""


class Hub:
    def __init__(self, database_url: str, timezone: str) -> None:
        self._url = database_url
        self._tz = timezone
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._last = 0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._gap_since: float | None = None

    @property
    def streams(self) -> int:
        return len(self._queues)

    @property
    def last(self) -> int:
        """The id of the newest event handed out so far."""
        return self._last

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-feed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, row_factory=dict_row
        )
        await conn.execute("SELECT set_config('TimeZone', %s, false)", (self._tz,))
        await conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                async with await self._connect() as conn:
                    if not self._ready.is_set():
                        row = await (
                            await conn.execute("SELECT coalesce(max(id), 0) AS m FROM alert_feed")
                        ).fetchone()
                        self._last = int(row["m"]) if row else 0
                        self._ready.set()
                    delay = 1.0
                    while True:
                        await self._drain(conn)
                        # wake on the first notification or after the poll, whichever first
                        wait = POLL_S if self._gap_since is None else GAP_POLL_S
                        async for _ in conn.notifies(timeout=wait, stop_after=1):
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following the feed whatever happens
                log.warning("alert feed: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _drain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            rows = await (await conn.execute(FEED_SQL, (self._last, PAGE))).fetchall()
            for row in rows:
                if int(row["id"]) != self._last + 1 and not self._gap_over():
                    return  # an earlier id is not committed yet: wait for it
                self._gap_since = None
                self._publish(row)
                self._last = int(row["id"])
            if len(rows) < PAGE:
                return

    def _gap_over(self) -> bool:
        now = time.monotonic()
        if self._gap_since is None:
            self._gap_since = now
        if now - self._gap_since < GAP_WAIT_S:
            return False
        log.info("alert feed: ids after %d never committed; going on", self._last)
        return True

    def _publish(self, event: dict[str, Any]) -> None:
        for q in list(self._queues):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(None)  # tells the stream to close

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(q)
        try:
            yield q
        finally:
            self._queues.discard(q)
