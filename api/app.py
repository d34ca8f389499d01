"""The FastAPI application: settings, pools and the alert feed opened in the lifespan (never at
import), the routers, error handlers and request metrics."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AConn, ApiState, rule_texts
from api.hub import Hub
from api.metrics import LATENCY, REQUESTS
from api.routes import (
    ack,
    alerts,
    console,
    devices,
    events,
    kpis,
    quarantine,
    readings,
    rules_,
    silences,
    system,
    tokens,
)
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.connect import connect
from urbanpulse.links import link_key
from urbanpulse.rulefmt.model import catalogue_files, load_rules
from urbanpulse.settings import Settings, load_settings

log = logging.getLogger("urbanpulse.api")

API_PREFIX = "/api/v1"

DESCRIPTION = """
UrbanPulse's API for operators, managers and the systems around them: devices and their
readings, the derived series (AQI, leakage, occupancy), alerts and what people do about them,
silences, rules, the plan's KPI scorecard, quarantined messages and a live alert stream.

**Authentication**: `Authorization: Bearer <token>`, a token made with
`urbanpulse tokens create NAME --role viewer|operator|admin`. Viewers read; operators also
acknowledge, assign, comment, resolve and silence (for their department's alerts when their
token names one); admins also manage devices, tokens, quarantine replay and read the audit log.

**Times** are RFC 3339 with an offset, e.g. `2026-07-01T08:00:00+08:00`; a time without one
is refused. **Listings** are paged: pass a page's `next` back as `cursor`. Add `format=csv` to
export readings or alerts for a spreadsheet.
"""


def _pool(settings: Settings, size: int, name: str) -> AsyncConnectionPool[AConn]:
    async def configure(conn: AConn) -> None:
        await conn.execute("SELECT set_config('TimeZone', %s, false)", (settings.timezone,))

    return AsyncConnectionPool(
        settings.database_url,
        min_size=min(2, size),
        max_size=size,
        kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
        configure=configure,
        timeout=5.0,
        open=False,
        name=name,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    found = load_rules(catalogue_files(), default_registry())
    with connect(settings.database_url) as conn:
        key = link_key(conn, settings.link_secret)
    pool = _pool(settings, settings.api_pool_size, "api")
    auth_pool = _pool(settings, 2, "api-auth")
    await pool.open(wait=True, timeout=15)
    await auth_pool.open(wait=True, timeout=15)

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT set_config('TimeZone', %s, false)", (settings.timezone,))
        conn.commit()

    sync_pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=2,
        configure=configure,
        open=True,
        name="api-sync",
    )
    hub = Hub(settings.database_url, settings.timezone)
    await hub.start()
    app.state.api = ApiState(
        settings=settings,
        pool=pool,
        sync_pool=sync_pool,
        auth_pool=auth_pool,
        catalogue=found,
        tz=ZoneInfo(settings.timezone),
        link_key=key,
        hub=hub,
        rules={r.id: r for r in found.rules},
        rule_text=rule_texts({r.id: r for r in found.rules}),
        clock=app.state.clock,
    )
    # what start-up built lives as long as the process: keep it out of the collector's full
    # passes, which otherwise walk it all and stall requests (a p99 in tens of ms)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        await hub.stop()
        await pool.close()
        await auth_pool.close()
        sync_pool.close()


class _Measure:
    """Requests and latency per route (as mounted, so the labels stay bounded). A plain ASGI
    middleware: the decorator form costs a task and a stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                if scope["path"].startswith(API_PREFIX) and not path.startswith(API_PREFIX):
                    path = API_PREFIX + path
                LATENCY.labels(path).observe(time.perf_counter() - started)
                REQUESTS.labels(scope["method"], path, str(status[0])).inc()
            await send(message)

        await self.app(scope, receive, sending)


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The API application; `clock` is the wall clock it reads "now" from (see ApiState)."""
    settings = settings or load_settings()
    app = FastAPI(
        title="UrbanPulse API",
        version="1",
        description=DESCRIPTION,
        lifespan=_lifespan,
        responses={
            401: {"description": "missing, invalid, expired or revoked token"},
            422: {"description": "a field is invalid; `detail` names it"},
        },
    )
    app.state.settings = settings
    app.state.clock = clock
    origins = [o.strip() for o in settings.api_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )

    app.add_middleware(_Measure)

    @app.exception_handler(PoolTimeout)
    async def busy(_request: Request, _exc: PoolTimeout) -> Response:
        return JSONResponse(
            {"detail": "the database is busy or unreachable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(psycopg.OperationalError)
    async def unreachable(_request: Request, exc: psycopg.OperationalError) -> Response:
        log.warning("database error: %s", exc)
        return JSONResponse(
            {"detail": "the database is unreachable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(psycopg.DataError)
    async def bad_value(_request: Request, exc: psycopg.DataError) -> Response:
        return JSONResponse({"detail": f"invalid value: {str(exc)[:200]}"}, status_code=422)

    for module in (
        system,
        devices,
        readings,
        alerts,
        silences,
        rules_,
        kpis,
        quarantine,
        events,
        tokens,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(system.root)
    app.include_router(ack.router)
    app.include_router(console.router)
    return app
