"""Silences: hold back the notifications of matching alerts for a while (they still fire)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from psycopg.types.json import Jsonb

from api.deps import Conn, Operator, State, Viewer, audit, client_of, conflict, not_found
from api.schemas import Problem, SilenceCreate, SilencePublic

router = APIRouter(tags=["silences"])

COLUMNS = (
    "id, matchers, starts_at, ends_at, author, reason, created_at, expired_at, "
    "(expired_at IS NULL AND starts_at <= now() AND ends_at > now()) AS active"
)


@router.get("/silences", response_model=list[SilencePublic], summary="Active and future silences")
async def list_silences(
    conn: Conn,
    _who: Viewer,
    include_ended: Annotated[bool, Query(description="also ended and expired ones")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[SilencePublic]:
    rows = await (
        await conn.execute(
            f"SELECT {COLUMNS} FROM silences WHERE %s OR (expired_at IS NULL AND ends_at > now()) "
            "ORDER BY starts_at DESC, id DESC LIMIT %s",
            (include_ended, limit),
        )
    ).fetchall()
    return [SilencePublic.model_validate(r) for r in rows]


@router.post(
    "/silences",
    response_model=SilencePublic,
    status_code=status.HTTP_201_CREATED,
    responses={403: {"model": Problem}},
    summary="Create a silence (operator)",
    description="A token that names a department silences only that department's alerts: "
    "`owner` is set to it when absent and must match it when given.",
)
async def create_silence(
    conn: Conn, state: State, who: Operator, body: SilenceCreate, request: Request
) -> SilencePublic:
    matchers: dict[str, Any] = dict(body.matchers)
    if (
        who.department
        and who.role.value != "admin"
        and matchers.setdefault("owner", who.department) != who.department
    ):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"matchers.owner: your token acts for {who.department} only",
        )
    starts = body.starts_at or state.now()
    if body.ends_at <= starts:
        raise HTTPException(422, detail="ends_at: must be after starts_at (default: now)")
    async with conn.transaction():
        row = await (
            await conn.execute(
                "INSERT INTO silences (matchers, starts_at, ends_at, author, reason) "
                f"VALUES (%s, %s, %s, %s, %s) RETURNING {COLUMNS}",
                (Jsonb(matchers), starts, body.ends_at, who.name, body.reason),
            )
        ).fetchone()
        assert row is not None
        await audit(
            conn,
            who,
            "silence.create",
            f"silence:{row['id']}",
            {**body.model_dump(mode="json"), "matchers": matchers},
            client_of(request),
        )
    return SilencePublic.model_validate(row)


@router.post(
    "/silences/{silence_id}/expire",
    response_model=SilencePublic,
    responses={404: {"model": Problem}, 409: {"model": Problem}},
    summary="End a silence now (operator)",
)
async def expire_silence(
    conn: Conn,
    who: Operator,
    silence_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
) -> SilencePublic:
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT id, matchers, expired_at, ends_at <= now() AS over FROM silences "
                "WHERE id = %s FOR UPDATE",
                (silence_id,),
            )
        ).fetchone()
        if row is None:
            raise not_found(f"silence {silence_id}")
        owner = row["matchers"].get("owner")
        if who.department and who.role.value != "admin" and owner != who.department:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"silence {silence_id} is not {who.department}'s"
            )
        if row["expired_at"] is not None or row["over"]:
            raise conflict(f"silence {silence_id} has already ended")
        await conn.execute("UPDATE silences SET expired_at = now() WHERE id = %s", (silence_id,))
        await audit(conn, who, "silence.expire", f"silence:{silence_id}", {}, client_of(request))
    out = await (
        await conn.execute(f"SELECT {COLUMNS} FROM silences WHERE id = %s", (silence_id,))
    ).fetchone()
    return SilencePublic.model_validate(out)
