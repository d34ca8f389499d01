"""The alert console: one page (`/console`) and its two assets, served by the API itself so a
department needs no other server. The page talks to the API with the user's token; the
acknowledgement links of notifications (`/ack/{token}`) open the same page on one alert.

Every response carries a strict Content-Security-Policy: the page runs only its own script
and styles and talks only to this origin, and the link pages send no referrer (the link's
token is in their address)."""

from __future__ import annotations

import functools
import gzip
import hashlib
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Response
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)

ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_SCRIPT = "告警台需要启用 JavaScript。/ The console needs JavaScript."


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and its entity tag (read once per process; they ship with the code)."""
    data = resources.files("api").joinpath("console", name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:16]


@functools.cache
def _gzipped(name: str) -> bytes:
    """The asset compressed once: a phone fetches about a third of the bytes."""
    return gzip.compress(_asset(name)[0], compresslevel=9, mtime=0)


@functools.cache
def _template() -> str:
    page = resources.files("api").joinpath("console", "index.html").read_text("utf-8")
    for name in ASSETS:  # a new release's assets are new addresses: no stale script or style
        page = page.replace(f"{{{{{name}}}}}", f"/console/{name}?v={_asset(name)[1]}")
    return page


def shell(fallback: str = "", status: int = 200, noscript: str = NO_SCRIPT) -> HTMLResponse:
    """The console's page. `fallback` (trusted HTML) is shown until the script replaces it, and
    stays where the script cannot run (too old a browser, a blocked asset); `noscript` is shown
    where scripts are off."""
    html = _template().replace("{{fallback}}", fallback).replace("{{noscript}}", noscript)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/console", status_code=307)


@router.get("/console", response_class=HTMLResponse)
async def console() -> HTMLResponse:
    return shell()


@router.get("/console/{name}")
async def asset(
    name: Annotated[str, Path(max_length=100)],
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
    accept_encoding: Annotated[str | None, Header(max_length=500)] = None,
) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, detail=f"no console asset {name}")
    data, etag = _asset(name)
    zipped = "gzip" in (accept_encoding or "").lower()
    if zipped:
        data, etag = _gzipped(name), etag + "-gz"  # another representation, another tag
    headers = {**HEADERS, "ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if if_none_match and f'"{etag}"' in if_none_match:
        return Response(status_code=304, headers=headers)
    if zipped:
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type=ASSETS[name], headers=headers)
