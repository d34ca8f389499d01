"""API tokens and the audit log (admin): who may call the API, and what they changed."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from api.deps import Admin, Conn, State, Viewer, audit, client_of, conflict, not_found
from api.paging import decode_cursor, encode_cursor
from api.schemas import (
    AuditEntry,
    Instant,
    Me,
    Page,
    Problem,
    TokenCreate,
    TokenCreated,
    TokenPublic,
)
from urbanpulse.db.tokens import create_token, list_tokens
from urbanpulse.errors import ConfigError

router = APIRouter(tags=["access"])

TokenName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]


@router.get("/me", response_model=Me, summary="Who the token belongs to")
async def me(who: Viewer) -> Me:
    return Me(name=who.name, role=who.role, department=who.department)


@router.get("/tokens", response_model=list[TokenPublic], summary="API tokens (admin)")
async def get_tokens(state: State, _who: Admin, include_revoked: bool = False) -> list[TokenPublic]:
    def work() -> list[TokenPublic]:
        with state.sync_pool.connection() as conn:
            return [
                TokenPublic.model_validate(t)
                for t in list_tokens(conn, include_revoked=include_revoked)
            ]

    return await run_in_threadpool(work)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": Problem}},
    summary="Create a token (admin); the secret is in this answer only",
)
async def post_token(
    conn: Conn, state: State, who: Admin, body: TokenCreate, request: Request
) -> TokenCreated:
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None

    def work() -> TokenCreated:
        with state.sync_pool.connection() as c:
            secret, info = create_token(
                c, body.name, body.role, department=body.department, expires_in=expires
            )
        return TokenCreated.model_validate(
            {**TokenPublic.model_validate(info).model_dump(), "token": secret}
        )

    try:
        created = await run_in_threadpool(work)
    except ConfigError as exc:
        raise conflict(str(exc)) from None
    async with conn.transaction():
        await audit(
            conn,
            who,
            "token.create",
            f"token:{body.name}",
            body.model_dump(mode="json"),
            client_of(request),
        )
    return created


@router.delete(
    "/tokens/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": Problem}},
    summary="Revoke a token (admin); it stops working within seconds",
)
async def delete_token(
    conn: Conn, state: State, who: Admin, name: TokenName, request: Request
) -> None:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
            (name,),
        )
        if cur.rowcount == 0:
            raise not_found(f"active token {name}")
        await audit(conn, who, "token.revoke", f"token:{name}", {}, client_of(request))
    state.tokens.clear()  # this worker forgets it at once; others within the cache's life


@router.get(
    "/audit", response_model=Page[AuditEntry], summary="The audit log, newest first (admin)"
)
async def get_audit(
    conn: Conn,
    _who: Admin,
    actor: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$")] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z_]+\.[a-z_]+$")] = None,
    target: Annotated[
        str | None, Query(max_length=200, pattern=r"^[^\x00]+$", examples=["alert:42"])
    ] = None,
    since: Annotated[Instant | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[AuditEntry]:
    before = decode_cursor(cursor, [int])[0] if cursor else 2**63 - 1
    rows = await (
        await conn.execute(
            """
            SELECT id, at, actor, role, action, target, detail, client FROM audit_log
             WHERE (%(actor)s::text IS NULL OR actor = %(actor)s)
               AND (%(action)s::text IS NULL OR action = %(action)s)
               AND (%(target)s::text IS NULL OR target = %(target)s)
               AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)
               AND id < %(before)s
             ORDER BY id DESC LIMIT %(n)s
            """,
            {
                "actor": actor,
                "action": action,
                "target": target,
                "since": since,
                "before": before,
                "n": limit + 1,
            },
        )
    ).fetchall()
    items = [AuditEntry.model_validate(r) for r in rows[:limit]]
    nxt = encode_cursor(items[-1].id) if len(rows) > limit else None
    return Page(items=items, next=nxt)
