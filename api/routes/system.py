"""Liveness, readiness and Prometheus metrics: what a load balancer and a scraper ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.deps import State
from api.metrics import registry
from urbanpulse.db.migrate import migrations

root = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])


@root.get("/healthz", summary="The process is up (no dependencies checked)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@root.get(
    "/readyz",
    summary="Ready to serve: the database answers and its schema is current",
    responses={503: {"description": "not ready; `detail` says why"}},
)
async def readyz(state: State) -> Any:
    want = max(m.version for m in migrations())
    try:
        async with state.pool.connection(timeout=2) as conn:
            row = await (
                await conn.execute("SELECT max(version) AS v FROM schema_migrations")
            ).fetchone()
    except Exception as exc:  # any failure means "not ready", said plainly
        return JSONResponse(
            {"status": "unavailable", "detail": f"database: {type(exc).__name__}"}, 503
        )
    have = int(row["v"]) if row and row["v"] is not None else 0
    if have < want:
        return JSONResponse(
            {"status": "unavailable", "detail": f"schema {have} < {want}: urbanpulse db migrate"},
            503,
        )
    return {"status": "ok", "schema": have, "streams": state.hub.streams}


@root.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    body = generate_latest(registry) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
