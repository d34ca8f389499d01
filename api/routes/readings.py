"""Readings, raw or bucketed, over a time range for one or many devices and metrics; and the
derived series the recording rules write (AQI, water balance, night flow, occupancy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from psycopg import sql
from psycopg.rows import tuple_row

from api.deps import Conn, State, Viewer, bad_request, not_found
from api.paging import csv_response, decode_cursor, encode_cursor, json_page
from api.schemas import Ident, Instant, Name, Page, Problem, Reading, SeriesInfo, SeriesPoint
from urbanpulse.durations import parse_offset

router = APIRouter(tags=["readings"])

MAX_RAW_SPAN = timedelta(days=31)  # raw readings over longer ranges: ask for buckets
MAX_BUCKETED_SPAN = timedelta(days=366 * 2)
MAX_BUCKETS = 100_000  # per device and metric, so a 1-minute bucket over two years is refused
MIN_BUCKET = timedelta(seconds=10)
AGG = {"avg": "avg", "min": "min", "max": "max", "sum": "sum", "count": "count"}
Format = Literal["json", "csv"]


def _range(
    now: datetime, start: datetime | None, end: datetime | None, default: timedelta
) -> tuple[Any, Any]:
    end = end or now
    start = start or end - default
    if start >= end:
        raise bad_request("start: must be before end")
    return start, end


def _bucket(bucket: str, start: datetime, end: datetime) -> timedelta:
    try:
        step = timedelta(seconds=parse_offset(bucket))
    except (ValueError, TypeError):
        raise bad_request("bucket: a duration such as 5m, 1h or 1d") from None
    if step < MIN_BUCKET:
        raise bad_request(f"bucket: at least {int(MIN_BUCKET.total_seconds())}s")
    if end - start > MAX_BUCKETED_SPAN:
        raise bad_request("start: a bucketed range spans at most two years")
    if (end - start) / step > MAX_BUCKETS:
        raise bad_request(f"bucket: too small for this range (at most {MAX_BUCKETS} buckets)")
    return step


def _query(
    devices: list[str],
    metrics: list[str] | None,
    start: datetime,
    end: datetime,
    step: timedelta | None,
    agg: str,
    after: list[Any] | None,
    limit: int | None,
    origin: datetime | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    params: dict[str, Any] = {
        "devices": devices,
        "metrics": metrics,
        "start": start,
        "end": end,
        "step": step,
        "limit": limit,
        # buckets start on the hour and at (local) midnight, whatever the range's start
        "origin": origin or datetime(2000, 1, 1, tzinfo=UTC),
    }
    keyset = sql.SQL("")
    if after:
        params["a_dev"], params["a_met"], params["a_ts"] = after
        keyset = sql.SQL("AND (device_id, metric, ts) > (%(a_dev)s, %(a_met)s, %(a_ts)s)")
    where = sql.SQL(
        "device_id = ANY(%(devices)s) AND ts >= %(start)s AND ts < %(end)s"
        " AND (%(metrics)s::text[] IS NULL OR metric = ANY(%(metrics)s))"
    )
    tail = sql.SQL("LIMIT %(limit)s") if limit is not None else sql.SQL("")
    if step is None:
        q = sql.SQL(
            "SELECT device_id, metric, ts, value, NULL::bigint AS count FROM readings "
            "WHERE {where} {keyset} ORDER BY device_id, metric, ts {tail}"
        ).format(where=where, keyset=keyset, tail=tail)
    else:
        fn = sql.SQL(AGG[agg])  # from a fixed table, never from the caller
        value = sql.SQL("count(*)::float8") if agg == "count" else sql.SQL("{}(value)").format(fn)
        q = sql.SQL(
            "SELECT * FROM (SELECT device_id, metric, "
            "date_bin(%(step)s, ts, %(origin)s) AS ts, {value} AS value, count(*) AS count "
            "FROM readings WHERE {where} GROUP BY 1, 2, 3) b WHERE true {keyset} "
            "ORDER BY device_id, metric, ts {tail}"
        ).format(value=value, where=where, keyset=keyset, tail=tail)
    return q, params


def rendered(q: sql.Composed) -> sql.Composed:
    """The readings of `q` rendered as JSON by PostgreSQL, with their keys for the cursor."""
    return sql.SQL(
        "SELECT json_build_object('device_id', device_id, 'metric', metric, 'ts', ts, "
        "'value', value, 'count', count)::text, device_id, metric, ts FROM ({}) r "
        "ORDER BY device_id, metric, ts"
    ).format(q)


@router.get(
    "/readings",
    response_model=Page[Reading],
    responses={
        200: {"content": {"text/csv": {}}, "description": "readings (JSON page or CSV export)"}
    },
    summary="Readings of devices over a time range, raw or bucketed",
)
async def readings(
    conn: Conn,
    state: State,
    _who: Viewer,
    device_id: Annotated[list[Ident], Query(min_length=1, max_length=100)],
    metric: Annotated[list[Ident] | None, Query(max_length=20)] = None,
    start: Annotated[Instant | None, Query(description="default: 24 h before end")] = None,
    end: Annotated[Instant | None, Query(description="default: now (exclusive)")] = None,
    bucket: Annotated[
        str | None,
        Query(pattern=r"^[1-9][0-9]{0,3}[smhd]$", description="e.g. 5m, 1h, 1d; absent: raw"),
    ] = None,
    agg: Annotated[Literal["avg", "min", "max", "sum", "count"], Query()] = "avg",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    format: Annotated[Format, Query(description="csv: the whole range as a file")] = "json",
) -> Any:
    lo, hi = _range(state.now(), start, end, timedelta(days=1))
    step = _bucket(bucket, lo, hi) if bucket else None
    if step is None and hi - lo > MAX_RAW_SPAN:
        raise bad_request("start: raw readings span at most 31 days; add a bucket")
    origin = datetime(2000, 1, 1, tzinfo=state.tz)
    devices = list(dict.fromkeys(device_id))
    metrics = list(dict.fromkeys(metric)) if metric else None
    if format == "csv":
        q, params = _query(devices, metrics, lo, hi, step, agg, None, None, origin)
        pool = state.pool

        async def rows() -> AsyncIterator[tuple[Any, ...]]:
            async with pool.connection() as c, c.transaction():
                cur = c.cursor(name="export", row_factory=None)  # type: ignore[call-overload]
                async for r in cur.stream(q, params):
                    yield (r["device_id"], r["metric"], r["ts"], r["value"], r["count"])

        return csv_response(("device_id", "metric", "ts", "value", "count"), rows(), "readings.csv")
    after = None
    if cursor:  # the window of the first page, whatever `end` defaults to now
        *key, lo, hi = decode_cursor(cursor, [str, str, datetime, datetime, datetime])
        after = key
    q, params = _query(devices, metrics, lo, hi, step, agg, after, limit + 1, origin)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(rendered(q), params)
        found = await cur.fetchall()
    nxt = None
    if len(found) > limit:
        _, dev, met, ts = found[limit - 1]
        nxt = encode_cursor(dev, met, ts, lo, hi)
    return json_page([r[0] for r in found], limit, nxt)


@router.get("/series", response_model=list[SeriesInfo], summary="The derived series")
async def series_list(state: State, _who: Viewer) -> list[SeriesInfo]:
    return [
        SeriesInfo(
            id=r.id,
            title_zh=r.title.zh,
            title_en=r.title.en,
            unit=r.unit,
            kind=r.kind,
            source=r.source,
        )
        for r in state.catalogue.records
    ]


@router.get(
    "/series/{series}",
    response_model=Page[SeriesPoint],
    responses={404: {"model": Problem}},
    summary="Values of a derived series (AQI, leakage, occupancy …) over a time range",
)
async def series_values(
    conn: Conn,
    state: State,
    _who: Viewer,
    series: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")],
    entity: Annotated[list[Name] | None, Query(max_length=100)] = None,
    start: Annotated[Instant | None, Query(description="default: 7 days before end")] = None,
    end: Annotated[Instant | None, Query(description="default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[SeriesPoint]:
    if series not in {r.id for r in state.catalogue.records}:
        raise not_found(f"series {series}")
    lo, hi = _range(state.now(), start, end, timedelta(days=7))
    if hi - lo > timedelta(days=366 * 5):
        raise bad_request("start: a range spans at most five years")
    after = decode_cursor(cursor, [str, datetime]) if cursor else None
    rows = await (
        await conn.execute(
            """
            SELECT series, entity, period_start, period_end, value, detail FROM recorded
             WHERE series = %(s)s AND (%(e)s::text[] IS NULL OR entity = ANY(%(e)s))
               AND period_end > %(lo)s AND period_end <= %(hi)s
               AND (%(a_e)s::text IS NULL OR (entity, period_start) > (%(a_e)s, %(a_t)s))
             ORDER BY entity, period_start LIMIT %(n)s
            """,
            {
                "s": series,
                "e": entity,
                "lo": lo,
                "hi": hi,
                "a_e": after[0] if after else None,
                "a_t": after[1] if after else None,
                "n": limit + 1,
            },
        )
    ).fetchall()
    items = [SeriesPoint.model_validate(r) for r in rows[:limit]]
    last = items[-1] if items else None
    nxt = encode_cursor(last.entity, last.period_start) if last and len(rows) > limit else None
    return Page(items=items, next=nxt)
