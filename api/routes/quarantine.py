"""Quarantined messages: what could not be stored and why, and replay once the cause is fixed."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import Admin, Conn, State, Viewer, audit, client_of
from api.paging import decode_cursor, encode_cursor
from api.schemas import (
    Ident,
    Page,
    QuarantinePublic,
    QuarantineSummary,
    ReplayCreate,
    ReplayResultPublic,
)
from urbanpulse.contract import Limits
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.replay import replay

router = APIRouter(tags=["quarantine"])


@router.get(
    "/quarantine/summary",
    response_model=list[QuarantineSummary],
    summary="Quarantined messages counted by reason and state",
)
async def quarantine_summary(conn: Conn, _who: Viewer) -> list[QuarantineSummary]:
    rows = await (
        await conn.execute(
            "SELECT reason, state, count(*) AS messages, sum(occurrences) AS occurrences "
            "FROM quarantine GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ).fetchall()
    return [QuarantineSummary.model_validate(r) for r in rows]


@router.get(
    "/quarantine",
    response_model=Page[QuarantinePublic],
    summary="Quarantined messages, newest first",
)
async def list_quarantine(
    conn: Conn,
    _who: Viewer,
    reason: Annotated[Ident | None, Query(examples=["unknown_device"])] = None,
    state: Annotated[Literal["pending", "replayed", "failed", "discarded"] | None, Query()] = None,
    device_id: Annotated[Ident | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[QuarantinePublic]:
    before = decode_cursor(cursor, [int])[0] if cursor else 2**63 - 1
    rows = await (
        await conn.execute(
            """
            SELECT id, topic, reason, detail, device_id, received_at, last_received_at,
                   occurrences, stored_readings, state, replay_attempts,
                   length(payload) AS payload_size, substring(payload FROM 1 FOR 512) AS head
              FROM quarantine
             WHERE (%(reason)s::text IS NULL OR reason = %(reason)s)
               AND (%(state)s::text IS NULL OR state = %(state)s)
               AND (%(device)s::text IS NULL OR device_id = %(device)s)
               AND id < %(before)s
             ORDER BY id DESC LIMIT %(n)s
            """,
            {
                "reason": reason,
                "state": state,
                "device": device_id,
                "before": before,
                "n": limit + 1,
            },
        )
    ).fetchall()
    items = [
        QuarantinePublic.model_validate(
            {**r, "payload_preview": bytes(r["head"]).decode("utf-8", errors="replace")}
        )
        for r in rows[:limit]
    ]
    nxt = encode_cursor(items[-1].id) if len(rows) > limit else None
    return Page(items=items, next=nxt)


@router.post(
    "/quarantine/replay",
    response_model=ReplayResultPublic,
    summary="Replay quarantined messages after fixing their cause (admin)",
    description="Each message goes through validation again; what passes is stored (once), "
    "what still fails stays quarantined with its new reason.",
)
async def replay_quarantine(
    conn: Conn, state: State, who: Admin, request: Request, body: ReplayCreate | None = None
) -> ReplayResultPublic:
    body = body or ReplayCreate()
    settings = state.settings
    result = await run_in_threadpool(
        lambda: replay(
            settings.database_url,
            registry=default_registry(),
            prefix=settings.topic_prefix,
            limits=Limits.of(settings),
            reason=body.reason,
            device_id=body.device_id,
            include_failed=body.include_failed,
        )
    )
    out = ReplayResultPublic(
        replayed=result.replayed,
        still_failing=result.still_failing,
        readings_stored=result.readings_stored,
        duplicates=result.duplicates,
    )
    async with conn.transaction():
        await audit(
            conn,
            who,
            "quarantine.replay",
            "quarantine",
            {**body.model_dump(mode="json"), "result": out.model_dump()},
            client_of(request),
        )
    return out
