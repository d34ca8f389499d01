"""The API in the test process: the FastAPI application served through httpx's ASGI transport
(no server process, no socket), its lifespan run by hand, against a real PostgreSQL database.

`httpx.ASGITransport` sends requests only: it runs no lifespan, so `running` enters the
application's own lifespan (pools, the alert feed's hub, the rule catalogue) around the
requests, as uvicorn would. It buffers each response whole, so an endless stream (the live
alert stream) cannot be read through it: those tests stay with a real server
(tests/apiserver.py)."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.deps import TOKEN_CACHE_S, ApiState
from simulators.run import Plan
from tests.apiserver import make_tokens, seeded_database
from urbanpulse.settings import load_settings

BASE_URL = "http://testserver"  # what the application sees as its own address


@asynccontextmanager
async def running(
    db_url: str, *, clock: Callable[[], float] = time.time, **settings: object
) -> AsyncIterator[FastAPI]:
    """The application on `db_url` (settings from the environment as `urbanpulse api` reads
    them, `settings` winning), between its lifespan's start-up and shutdown; `clock` is the
    wall clock it reads "now" from."""
    app = create_app(load_settings(database_url=db_url, **settings), clock=clock)
    try:
        async with app.router.lifespan_context(app):
            yield app
    finally:
        # start-up freezes what it built out of the collector's way, which suits a server
        # process; here it would keep the rest of the test session's garbage for ever
        gc.unfreeze()


def client(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    """A client of `app` that calls it in-process, with `token` as its bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers, timeout=30
    )


def state_of(app: FastAPI) -> ApiState:
    """What the lifespan built (pools, token cache, link key, …)."""
    state: ApiState = app.state.api
    return state


def age_token_cache(app: FastAPI, seconds: float = TOKEN_CACHE_S) -> None:
    """Move the token cache's clock on by `seconds` (by default its whole life): what it
    holds expires, so the next call with each token is checked against the database again,
    as it is `TOKEN_CACHE_S` later on a real server. No sleeping."""
    for cached in state_of(app).tokens.values():
        cached.until -= seconds
        cached.used_written -= seconds


@dataclass
class InProcessApi:
    """The in-process counterpart of tests.apiserver.ApiServer."""

    app: FastAPI
    db_url: str
    plan: Plan
    tokens: dict[str, str]
    url: str = BASE_URL

    def client(self, who: str | None = None) -> httpx.AsyncClient:
        return client(self.app, self.tokens[who] if who else None)

    @property
    def state(self) -> ApiState:
        return state_of(self.app)


@asynccontextmanager
async def inprocess_api() -> AsyncIterator[InProcessApi]:
    """A database of its own holding the demo scenario (copied from the seeded template, as
    the real server's is), tokens per role, and the application running on it; the database
    is dropped afterwards."""
    with seeded_database() as (db_url, plan):
        tokens = make_tokens(db_url)
        async with running(db_url) as app:
            yield InProcessApi(app, db_url, plan, tokens)
