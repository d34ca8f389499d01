"""The live alert stream (server-sent events) for screens that follow alerts as they happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import State, Viewer, bearer_secret, lookup
from api.hub import FEED_SQL
from api.metrics import STREAMS
from api.schemas import Name, StreamEvent

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RECHECK_S = 5.0  # the token is checked again this often: a revoked one's stream ends
REPLAY_MAX = 10_000  # events sent from history on (re)connection; older ones: use the listing


def _event(row: dict[str, Any]) -> ServerSentEvent:
    data = StreamEvent.model_validate(row).model_dump(mode="json")
    return ServerSentEvent(data=data, event="alert", id=str(row["id"]))


@router.get(
    "/events/alerts",
    response_class=EventSourceResponse,
    summary="Live alert events (server-sent events)",
    description="Each event is an alert transition (pending, firing, resolved, cancelled) or a "
    "person's action (acknowledged, assigned, commented), with the alert as it now stands. "
    "Event ids grow; a client reconnecting with `Last-Event-ID` (browsers do it by themselves) "
    "or `after` receives what it missed first. `data` is a StreamEvent.",
)
async def alert_stream(
    state: State,
    _who: Viewer,
    request: Request,
    owner: Annotated[Name | None, Query(description="one department's alerts")] = None,
    rule_id: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="resume after this id")
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> AsyncIterable[ServerSentEvent]:
    if after is None and last_event_id and last_event_id.isdigit():
        after = min(int(last_event_id), 2**63 - 1)

    def wanted(row: dict[str, Any]) -> bool:
        return (owner is None or row["owner"] == owner) and (
            rule_id is None or row["rule_id"] == rule_id
        )

    STREAMS.inc()
    try:
        async with state.hub.subscribe() as queue:
            horizon = state.hub.last  # below it the feed is final; above it, the queue has it
            last = horizon if after is None else after
            sent = 0
            while last < horizon:  # catch up from the table, then go live
                async with state.pool.connection() as conn:
                    rows = await (await conn.execute(FEED_SQL, (last, 500))).fetchall()
                rows = [r for r in rows if int(r["id"]) <= horizon]
                if not rows:
                    break
                for row in rows:
                    last = int(row["id"])
                    if wanted(row):
                        sent += 1
                        yield _event(row)
                if sent >= REPLAY_MAX:
                    return  # the client reconnects from here and gets the rest
            last = max(last, horizon)
            # the position travels with it: a client that saw no event yet resumes from here
            yield ServerSentEvent(comment="live", id=str(last), retry=3000)
            secret = bearer_secret(request)
            checked = quiet = time.monotonic()
            while True:
                item: dict[str, Any] | None
                now = time.monotonic()
                if now - checked >= RECHECK_S:
                    checked = now
                    if await lookup(state, secret) is None:
                        return  # revoked or expired: reconnecting is refused with 401
                try:
                    async with asyncio.timeout(RECHECK_S):
                        item = await queue.get()
                except TimeoutError:
                    if time.monotonic() - quiet >= KEEPALIVE_S:
                        quiet = time.monotonic()
                        yield ServerSentEvent(comment="keep-alive")
                    continue
                if item is None:
                    return  # too slow or shutting down: the client reconnects and catches up
                if int(item["id"]) <= last:
                    continue
                last = int(item["id"])
                if wanted(item):
                    quiet = time.monotonic()
                    yield _event(item)
    finally:
        STREAMS.dec()
