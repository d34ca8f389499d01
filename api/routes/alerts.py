"""Alerts: listing and detail with their history; acknowledge, assign, comment and resolve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from api.alert_series import POINTS, alert_series
from api.deps import (
    AConn,
    ApiState,
    Conn,
    Operator,
    Principal,
    State,
    Viewer,
    audit,
    client_of,
    conflict,
    not_found,
)
from api.paging import CSV_MAX_ROWS, csv_response, decode_cursor, encode_cursor, json_page
from api.schemas import (
    AckCreate,
    AlertDetail,
    AlertEvent,
    AlertPublic,
    AlertSeries,
    AlertStatus,
    AssignCreate,
    CommentCreate,
    Ident,
    Instant,
    Name,
    Page,
    Problem,
    ResolveCreate,
    Severity,
)
from urbanpulse.alerts.store import execute_async, lock_alert, resolve_by_hand
from urbanpulse.rulefmt.describe import condition_text

router = APIRouter(tags=["alerts"])

AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]
OPEN = ("pending", "firing")

SELECT = """
    SELECT a.id, a.rule_id, a.entity, coalesce(d.zone, a.entity) AS zone, a.status, a.severity,
           a.owner, a.value, a.labels, a.pending_at, a.started_at, a.ended_at, a.flapping,
           a.assignee, a.opened_at, a.updated_at, k.acked_by, k.acked_at, k.note AS ack_note
      FROM alerts a
      LEFT JOIN devices d ON d.device_id = a.entity
      LEFT JOIN alert_acks k ON k.alert_id = a.id
"""

# one condition per filter given (the others are left out, so each combination gets a plan
# that uses its indexes); values are always bound parameters
CONDITIONS = {
    "status": "a.status = ANY(%(status)s)",
    "rule": "a.rule_id = %(rule)s",
    "owner": "a.owner = %(owner)s",
    "severity": "a.severity = ANY(%(severity)s)",
    "entity": "a.entity = %(entity)s",
    "zone": "coalesce((SELECT z.zone FROM devices z WHERE z.device_id = a.entity), a.entity)"
    " = %(zone)s",
    "since": "a.pending_at >= %(since)s",
    "until": "a.pending_at < %(until)s",
    "acked": "EXISTS (SELECT 1 FROM alert_acks x WHERE x.alert_id = a.id) = %(acked)s",
    "before": "a.id < %(before)s",
}


def where(params: dict[str, Any]) -> str:
    """The WHERE and ORDER BY of a listing with these filters (None: not filtered)."""
    conds = [CONDITIONS[k] for k, v in params.items() if k in CONDITIONS and v is not None]
    return f" WHERE {' AND '.join(conds) or 'true'} ORDER BY a.id DESC"


# The same alerts as `public()` gives, rendered by PostgreSQL: the page of ids is chosen first,
# then only its rows are rendered. `meta` holds each rule's titles, threshold and clause
# (ApiState.rule_meta).
RENDER = """
    SELECT json_build_object(
             'id', a.id, 'rule_id', a.rule_id,
             'title_zh', coalesce(m.v ->> 'title_zh', a.rule_id),
             'title_en', coalesce(m.v ->> 'title_en', a.rule_id),
             'entity', a.entity, 'status', a.status,
             'zone', coalesce((SELECT z.zone FROM devices z WHERE z.device_id = a.entity),
                              a.entity),
             'severity', a.severity, 'owner', a.owner, 'value', a.value,
             'threshold', coalesce(m.v ->> 'threshold', '-'),
             'clause', coalesce(m.v ->> 'clause', ''),
             'labels', a.labels, 'pending_at', a.pending_at, 'started_at', a.started_at,
             'ended_at', a.ended_at, 'flapping', a.flapping, 'assignee', a.assignee,
             'acknowledged', CASE WHEN k.alert_id IS NULL THEN NULL ELSE json_build_object(
                 'acked_by', k.acked_by, 'acked_at', k.acked_at, 'note', k.note) END,
             'opened_at', a.opened_at, 'updated_at', a.updated_at)::text,
           a.id
      FROM page a
      LEFT JOIN alert_acks k ON k.alert_id = a.id
     CROSS JOIN LATERAL (SELECT %(meta)s::jsonb -> a.rule_id AS v) m
     ORDER BY a.id DESC
"""


def listing_json(params: dict[str, Any]) -> str:
    """The page query of /alerts (params: the filters, `limit` and `meta`)."""
    return (
        "WITH page AS MATERIALIZED (SELECT a.* FROM alerts a"
        + where(params)
        + " LIMIT %(limit)s)"
        + RENDER
    )


def public(state: ApiState, row: dict[str, Any]) -> dict[str, Any]:
    """An alert row with its rule's texts (the same as the SQL-rendered listings give)."""
    text = state.rule_text.get(row["rule_id"])
    return {
        **row,
        "title_zh": text["title_zh"] if text else row["rule_id"],
        "title_en": text["title_en"] if text else row["rule_id"],
        "threshold": text["threshold"] if text else condition_text(None),
        "clause": text["clause"] if text else "",
        "acknowledged": (
            {"acked_by": row["acked_by"], "acked_at": row["acked_at"], "note": row["ack_note"]}
            if row["acked_by"] is not None
            else None
        ),
    }


@router.get(
    "/alerts",
    response_model=Page[AlertPublic],
    responses={200: {"content": {"text/csv": {}}, "description": "alerts (JSON page or CSV)"}},
    summary="List alerts, newest first",
)
async def list_alerts(
    conn: Conn,
    state: State,
    _who: Viewer,
    status_: Annotated[list[AlertStatus] | None, Query(alias="status", max_length=4)] = None,
    rule_id: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")] = None,
    owner: Annotated[Name | None, Query(description="the department (牵头单位)")] = None,
    severity: Annotated[list[Severity] | None, Query(max_length=4)] = None,
    entity: Annotated[Ident | None, Query()] = None,
    zone: Annotated[Name | None, Query()] = None,
    since: Annotated[Instant | None, Query(description="breach began at or after")] = None,
    until: Annotated[Instant | None, Query(description="breach began before")] = None,
    acknowledged: Annotated[bool | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    params: dict[str, Any] = {
        "status": status_,
        "rule": rule_id,
        "owner": owner,
        "severity": severity,
        "entity": entity,
        "zone": zone,
        "since": since,
        "until": until,
        "acked": acknowledged,
        "before": None,
    }
    if format == "csv":
        return _csv(state, params)
    if cursor:
        params["before"] = decode_cursor(cursor, [int])[0]
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            listing_json(params),
            {**params, "limit": limit + 1, "meta": state.rule_meta},
        )
        rows = await cur.fetchall()
    nxt = encode_cursor(rows[limit - 1][1]) if len(rows) > limit else None
    return json_page([r[0] for r in rows], limit, nxt)


def _csv(state: ApiState, params: dict[str, Any]) -> Any:
    header = (
        "id",
        "rule_id",
        "title_zh",
        "entity",
        "zone",
        "status",
        "severity",
        "owner",
        "value",
        "threshold",
        "clause",
        "pending_at",
        "started_at",
        "ended_at",
        "assignee",
        "acked_by",
        "acked_at",
    )

    async def rows() -> AsyncIterator[list[Any]]:
        async with state.pool.connection() as c, c.transaction():
            cur = c.cursor(name="alerts_export")
            sql = SELECT + where(params) + f" LIMIT {CSV_MAX_ROWS}"
            async for r in cur.stream(sql, params):
                p = public(state, r)
                yield [p[h] for h in header]

    return csv_response(header, rows(), "alerts.csv")


async def _events(conn: AConn, alert_id: int) -> list[AlertEvent]:
    rows = await (
        await conn.execute(
            "SELECT id, kind, at, actor, detail FROM alert_feed WHERE alert_id = %s ORDER BY id",
            (alert_id,),
        )
    ).fetchall()
    return [AlertEvent.model_validate(r) for r in rows]


async def detail(conn: AConn, state: ApiState, alert_id: int) -> AlertDetail:
    row = await (await conn.execute(SELECT + " WHERE a.id = %s", (alert_id,))).fetchone()
    if row is None:
        raise not_found(f"alert {alert_id}")
    return AlertDetail.model_validate(
        {**public(state, row), "events": await _events(conn, alert_id)}
    )


@router.get(
    "/alerts/{alert_id}",
    response_model=AlertDetail,
    responses={404: {"model": Problem}},
    summary="One alert with its whole history",
)
async def get_alert(conn: Conn, state: State, _who: Viewer, alert_id: AlertId) -> AlertDetail:
    return await detail(conn, state, alert_id)


async def _lock(conn: AConn, who: Principal, alert_id: int) -> dict[str, Any]:
    """The alert's row, locked for this transaction; 404 or 403 when it is not the caller's."""
    row = await (
        await conn.execute(
            "SELECT id, rule_id, entity, status, owner FROM alerts WHERE id = %s FOR UPDATE",
            (alert_id,),
        )
    ).fetchone()
    if row is None:
        raise not_found(f"alert {alert_id}")
    may_act(who, alert_id, row["owner"])
    return row


def may_act(who: Principal, alert_id: int, owner: str) -> None:
    """403 unless the caller's token acts for the department that owns the alert."""
    if not who.may_act_for(owner):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"alert {alert_id} belongs to {owner}; your token acts for {who.department}",
        )


async def _feed(
    conn: AConn, alert_id: int, kind: str, who: Principal, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO alert_feed (alert_id, kind, at, actor, detail) VALUES (%s, %s, now(), %s, %s)",
        (alert_id, kind, who.name, Jsonb(detail)),
    )


async def acknowledge(
    conn: AConn, who: Principal, alert_id: int, note: str, client: str | None
) -> bool:
    """Acknowledge an open alert (True), or find it already acknowledged (False: harmless).
    A resolved or cancelled alert cannot be acknowledged (409)."""
    async with conn.transaction():
        row = await _lock(conn, who, alert_id)
        if row["status"] not in OPEN:
            raise conflict(f"alert {alert_id} is {row['status']}; it can no longer be acknowledged")
        done = await (
            await conn.execute(
                "INSERT INTO alert_acks (alert_id, acked_by, note) VALUES (%s, %s, %s) "
                "ON CONFLICT (alert_id) DO NOTHING RETURNING alert_id",
                (alert_id, who.name, note),
            )
        ).fetchone()
        if done is None:
            return False
        await _feed(conn, alert_id, "acknowledged", who, {"note": note})
        await audit(conn, who, "alert.acknowledge", f"alert:{alert_id}", {"note": note}, client)
    return True


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertDetail,
    responses={404: {"model": Problem}, 403: {"model": Problem}, 409: {"model": Problem}},
    summary="Acknowledge an alert (operator); doing it twice is harmless",
)
async def ack_alert(
    conn: Conn,
    state: State,
    who: Operator,
    alert_id: AlertId,
    request: Request,
    body: AckCreate | None = None,
) -> AlertDetail:
    await acknowledge(conn, who, alert_id, body.note if body else "", client_of(request))
    return await detail(conn, state, alert_id)


@router.post(
    "/alerts/{alert_id}/assign",
    response_model=AlertDetail,
    responses={404: {"model": Problem}, 403: {"model": Problem}, 409: {"model": Problem}},
    summary="Assign an open alert to someone (operator)",
)
async def assign_alert(
    conn: Conn, state: State, who: Operator, alert_id: AlertId, body: AssignCreate, request: Request
) -> AlertDetail:
    async with conn.transaction():
        row = await _lock(conn, who, alert_id)
        if row["status"] not in OPEN:
            raise conflict(f"alert {alert_id} is {row['status']}; there is nothing to assign")
        await conn.execute(
            "UPDATE alerts SET assignee = %s, assigned_at = now() WHERE id = %s",
            (body.assignee, alert_id),
        )
        await _feed(conn, alert_id, "assigned", who, {"assignee": body.assignee})
        await audit(
            conn,
            who,
            "alert.assign",
            f"alert:{alert_id}",
            {"assignee": body.assignee},
            client_of(request),
        )
    return await detail(conn, state, alert_id)


@router.post(
    "/alerts/{alert_id}/comments",
    response_model=AlertDetail,
    status_code=status.HTTP_201_CREATED,
    responses={404: {"model": Problem}, 403: {"model": Problem}},
    summary="Comment on an alert (operator)",
)
async def comment_alert(
    conn: Conn,
    state: State,
    who: Operator,
    alert_id: AlertId,
    body: CommentCreate,
    request: Request,
) -> AlertDetail:
    async with conn.transaction():
        await _lock(conn, who, alert_id)
        await conn.execute(
            "INSERT INTO alert_comments (alert_id, author, body) VALUES (%s, %s, %s)",
            (alert_id, who.name, body.body),
        )
        await _feed(conn, alert_id, "commented", who, {"body": body.body})
        await audit(
            conn, who, "alert.comment", f"alert:{alert_id}", {"body": body.body}, client_of(request)
        )
    return await detail(conn, state, alert_id)


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=AlertDetail,
    responses={404: {"model": Problem}, 403: {"model": Problem}, 409: {"model": Problem}},
    summary="Resolve an open alert by hand (operator)",
    description="For an alert the data cannot clear (a broken sensor, a fixed leak the meters "
    "have not caught up with). The rule starts afresh for that entity: if the condition "
    "still holds, a new alert opens after the rule's `for`.",
)
async def resolve_alert(
    conn: Conn,
    state: State,
    who: Operator,
    alert_id: AlertId,
    body: ResolveCreate,
    request: Request,
) -> AlertDetail:
    async with conn.transaction():
        # the runners' lock on this (rule, entity): no evaluation interleaves with us
        head = await execute_async(conn, lock_alert(alert_id))
        if head is None:
            raise not_found(f"alert {alert_id}")
        may_act(who, alert_id, head.owner)
        if head.status not in OPEN:
            raise conflict(f"alert {alert_id} is already {head.status}")
        await conn.execute("SELECT set_config('urbanpulse.actor', %s, true)", (who.name,))
        await execute_async(conn, resolve_by_hand(head, f"resolved by {who.name}: {body.note}"))
        await audit(
            conn, who, "alert.resolve", f"alert:{alert_id}", {"note": body.note}, client_of(request)
        )
    return await detail(conn, state, alert_id)


@router.get(
    "/alerts/{alert_id}/events",
    response_model=list[AlertEvent],
    responses={404: {"model": Problem}},
    summary="An alert's history: transitions and people's actions",
)
async def alert_events(conn: Conn, _who: Viewer, alert_id: AlertId) -> list[AlertEvent]:
    found = await (await conn.execute("SELECT 1 FROM alerts WHERE id = %s", (alert_id,))).fetchone()
    if found is None:
        raise not_found(f"alert {alert_id}")
    return await _events(conn, alert_id)


@router.get(
    "/alerts/{alert_id}/series",
    response_model=AlertSeries,
    responses={404: {"model": Problem}},
    summary="The series behind an alert, bucketed for a small chart",
    description="The readings or recorded values the rule read, from some hours before the "
    f"breach to its end (or now), in at most {POINTS} buckets; with the threshold and, for air "
    "alerts, the HJ 633 AQI level of the alert's value.",
)
async def get_alert_series(
    conn: Conn, state: State, _who: Viewer, alert_id: AlertId
) -> AlertSeries:
    return await alert_series(conn, state, alert_id)


__all__ = ["acknowledge", "detail", "router"]
