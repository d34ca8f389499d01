"""Devices: the registry with each device's health, provisioning, and latest values."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Path, Query, Request, Response, status
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from api.deps import Admin, Conn, Viewer, audit, bad_request, client_of, conflict, not_found
from api.paging import decode_cursor, encode_cursor, json_list
from api.schemas import (
    DeviceCreate,
    DevicePublic,
    DeviceUpdate,
    Ident,
    LatestValue,
    Name,
    Page,
    Problem,
)

router = APIRouter(tags=["devices"])

DeviceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]

# newest reading per device: a skip scan over the device's metrics (the primary key is
# (device_id, metric, ts)), so it costs a few index probes however much history there is
LAST_SEEN = """
    (WITH RECURSIVE m AS (
        (SELECT metric FROM readings WHERE device_id = d.device_id ORDER BY metric LIMIT 1)
        UNION ALL
        SELECT (SELECT r.metric FROM readings r WHERE r.device_id = d.device_id
                   AND r.metric > m.metric ORDER BY r.metric LIMIT 1)
          FROM m WHERE m.metric IS NOT NULL)
     SELECT max((SELECT r.ts FROM readings r WHERE r.device_id = d.device_id
                    AND r.metric = m.metric ORDER BY r.ts DESC LIMIT 1))
       FROM m WHERE m.metric IS NOT NULL)
"""

SELECT = f"""
    SELECT d.device_id, d.domain, d.kind, d.name, d.zone, d.lat, d.lon, d.capacity,
           d.report_interval_s, d.attributes, d.created_at, d.updated_at, s.last_seen,
           CASE WHEN s.last_seen IS NULL THEN 'never'
                WHEN s.last_seen >= now() - 2 * d.report_interval_s * interval '1 second'
                    THEN 'ok'
                WHEN s.last_seen >= now() - 12 * d.report_interval_s * interval '1 second'
                    THEN 'stale'
                ELSE 'offline' END AS state
      FROM devices d CROSS JOIN LATERAL (SELECT {LAST_SEEN} AS last_seen) s
"""


def _public(row: dict[str, Any]) -> DevicePublic:
    return DevicePublic.model_validate(
        {**row, "health": {"last_seen": row["last_seen"], "state": row["state"]}}
    )


async def _one(conn: Conn, device_id: str) -> DevicePublic:
    row = await (await conn.execute(SELECT + " WHERE d.device_id = %s", (device_id,))).fetchone()
    if row is None:
        raise not_found(f"device {device_id}")
    return _public(row)


@router.get("/devices", response_model=Page[DevicePublic], summary="List devices with health")
async def list_devices(
    conn: Conn,
    _who: Viewer,
    domain: Annotated[Literal["water", "flood", "air", "parking"] | None, Query()] = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
    zone: Annotated[Name | None, Query()] = None,
    state: Annotated[
        Literal["ok", "stale", "offline", "never"] | None,
        Query(description="only devices in this health state"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[DevicePublic]:
    after = decode_cursor(cursor, [str])[0] if cursor else ""
    rows = await (
        await conn.execute(
            f"""
            SELECT * FROM ({SELECT}
                WHERE (%(domain)s::text IS NULL OR d.domain = %(domain)s)
                  AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)
                  AND (%(zone)s::text IS NULL OR d.zone = %(zone)s)
                  AND d.device_id > %(after)s
                ORDER BY d.device_id) x
             WHERE %(state)s::text IS NULL OR x.state = %(state)s
             LIMIT %(limit)s
            """,
            {
                "domain": domain,
                "kind": kind,
                "zone": zone,
                "after": after,
                "state": state,
                "limit": limit + 1,
            },
        )
    ).fetchall()
    items = [_public(r) for r in rows[:limit]]
    nxt = encode_cursor(items[-1].device_id) if len(rows) > limit else None
    return Page(items=items, next=nxt)


@router.get(
    "/devices/{device_id}",
    response_model=DevicePublic,
    responses={404: {"model": Problem}},
    summary="One device with its health",
)
async def get_device(conn: Conn, _who: Viewer, device_id: DeviceId) -> DevicePublic:
    return await _one(conn, device_id)


@router.post(
    "/devices",
    response_model=DevicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": Problem}},
    summary="Provision a device (admin)",
)
async def create_device(
    conn: Conn, who: Admin, body: DeviceCreate, request: Request
) -> DevicePublic:
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO devices (device_id, domain, kind, name, zone, lat, lon, capacity, "
                "report_interval_s, attributes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    body.device_id,
                    body.domain,
                    body.kind,
                    body.name,
                    body.zone,
                    body.lat,
                    body.lon,
                    body.capacity,
                    body.report_interval_s,
                    Jsonb(body.attributes),
                ),
            )
            await audit(
                conn,
                who,
                "device.create",
                f"device:{body.device_id}",
                body.model_dump(mode="json"),
                client_of(request),
            )
    except psycopg.errors.UniqueViolation:
        raise conflict(f"device {body.device_id} exists; PATCH it to change it") from None
    return await _one(conn, body.device_id)


@router.patch(
    "/devices/{device_id}",
    response_model=DevicePublic,
    responses={404: {"model": Problem}},
    summary="Change a device (admin)",
)
async def update_device(
    conn: Conn, who: Admin, device_id: DeviceId, body: DeviceUpdate, request: Request
) -> DevicePublic:
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "report_interval_s"):
        if required in changes and changes[required] is None:
            raise bad_request(f"{required}: cannot be cleared")
    if "attributes" in changes and changes["attributes"] is None:
        changes["attributes"] = {}
    async with conn.transaction():
        sets = ", ".join(f"{k} = %({k})s" for k in changes)  # keys come from the model only
        params: dict[str, Any] = {
            k: Jsonb(v) if k == "attributes" and v is not None else v for k, v in changes.items()
        }
        params["device_id"] = device_id
        sql = f"UPDATE devices SET {sets + ', ' if sets else ''}updated_at = now() "
        cur = await conn.execute(sql + "WHERE device_id = %(device_id)s", params)
        if cur.rowcount == 0:
            raise not_found(f"device {device_id}")
        await audit(
            conn,
            who,
            "device.update",
            f"device:{device_id}",
            body.model_dump(mode="json", exclude_unset=True),
            client_of(request),
        )
    return await _one(conn, device_id)


LATEST = """
    WITH RECURSIVE m AS (
        (SELECT metric FROM readings WHERE device_id = %(d)s ORDER BY metric LIMIT 1)
        UNION ALL
        SELECT (SELECT r.metric FROM readings r WHERE r.device_id = %(d)s AND r.metric > m.metric
                 ORDER BY r.metric LIMIT 1) FROM m WHERE m.metric IS NOT NULL)
    SELECT %(d)s AS device_id, l.metric, l.ts, l.value, l.ingested_at
      FROM m CROSS JOIN LATERAL (
            SELECT r.metric, r.ts, r.value, r.ingested_at FROM readings r
             WHERE r.device_id = %(d)s AND r.metric = m.metric ORDER BY r.ts DESC LIMIT 1) l
     WHERE m.metric IS NOT NULL
     ORDER BY l.metric
"""


LATEST_JSON = f"""
    SELECT json_build_object('device_id', device_id, 'metric', metric, 'ts', ts, 'value', value,
                             'ingested_at', ingested_at)::text
      FROM ({LATEST}) x
"""  # callers add a filter, then ORDER BY metric


@router.get(
    "/devices/{device_id}/latest",
    response_model=list[LatestValue],
    responses={404: {"model": Problem}},
    summary="The newest value of each metric of a device",
)
async def device_latest(conn: Conn, _who: Viewer, device_id: DeviceId) -> Response:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(LATEST_JSON + " ORDER BY metric", {"d": device_id})
        rows = await cur.fetchall()
        if not rows:
            await cur.execute("SELECT 1 FROM devices WHERE device_id = %s", (device_id,))
            if await cur.fetchone() is None:
                raise not_found(f"device {device_id}")
    return json_list([r[0] for r in rows])


@router.get(
    "/latest",
    response_model=list[LatestValue],
    summary="The newest value of each metric of several devices",
)
async def latest(
    conn: Conn,
    _who: Viewer,
    device_id: Annotated[list[Ident], Query(min_length=1, max_length=200)],
    metric: Annotated[list[Ident] | None, Query(max_length=50)] = None,
) -> Response:
    sql = LATEST_JSON + " WHERE %(m)s::text[] IS NULL OR metric = ANY(%(m)s) ORDER BY metric"
    async with conn.pipeline():
        cursors = [
            await conn.cursor(row_factory=tuple_row).execute(sql, {"d": d, "m": metric})
            for d in dict.fromkeys(device_id)
        ]
    texts = [r[0] for cur in cursors for r in await cur.fetchall()]
    return json_list(texts)
