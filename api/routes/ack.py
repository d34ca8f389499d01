"""Acknowledgement links: a manager taps the link of a notification, sees the alert, confirms,
and it is acknowledged in their department's name, without signing in. The link's signature
and expiry are the credential (urbanpulse.links)."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse

from api.alert_series import alert_series
from api.deps import ApiState, Conn, Principal, State, client_of
from api.routes.alerts import acknowledge, detail
from api.routes.console import shell
from api.schemas import AlertDetail, AlertSeries, Problem
from urbanpulse.db.tokens import Role
from urbanpulse.links import LinkError, verify

router = APIRouter(tags=["ack links"])

Token = Annotated[
    str, Path(min_length=10, max_length=2048, pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
]


def _who(state: ApiState, token: str) -> tuple[Principal, int]:
    try:
        claim = verify(state.link_key, token, state.clock())
    except LinkError as exc:
        raise HTTPException(403, detail=str(exc)) from None
    # the link was sent to this department about this alert: it may acknowledge it
    return Principal(f"link:{claim.department}", Role.OPERATOR, None), claim.alert_id


@router.get(
    "/api/v1/ack/{token}",
    response_model=AlertDetail,
    responses={403: {"model": Problem}, 404: {"model": Problem}},
    summary="The alert an acknowledgement link is about",
)
async def link_alert(conn: Conn, state: State, token: Token) -> AlertDetail:
    _, alert_id = _who(state, token)
    return await detail(conn, state, alert_id)


@router.get(
    "/api/v1/ack/{token}/series",
    response_model=AlertSeries,
    responses={403: {"model": Problem}, 404: {"model": Problem}},
    summary="The series behind a link's alert, for its small chart",
)
async def link_series(conn: Conn, state: State, token: Token) -> AlertSeries:
    _, alert_id = _who(state, token)
    return await alert_series(conn, state, alert_id)


@router.post(
    "/api/v1/ack/{token}",
    response_model=AlertDetail,
    responses={403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}},
    summary="Acknowledge through a link (no token needed: the link is signed and expires)",
)
async def link_ack(conn: Conn, state: State, token: Token, request: Request) -> AlertDetail:
    who, alert_id = _who(state, token)
    await acknowledge(conn, who, alert_id, "", client_of(request))
    return await detail(conn, state, alert_id)


def _plain(body: str, status: int = 200) -> HTMLResponse:
    """The console on the link's alert; `body` is the plain page shown until its script runs,
    and instead of it where the script cannot run. Never cached: it holds the link's state."""
    page = shell(body, status=status, noscript="")
    page.headers["Cache-Control"] = "no-store"
    return page


def _describe(a: AlertDetail) -> str:
    e = html.escape
    rows = [
        ("告警 / Alert", f"{e(a.title_zh)} / {e(a.title_en)}"),
        ("对象 / Where", e(a.entity)),
        ("状态 / Status", e(a.status)),
        ("当前值 / Value", e("-" if a.value is None else f"{a.value:g}")),
        ("阈值 / Threshold", e(a.threshold)),
        ("开始 / Since", e(a.started_at.isoformat() if a.started_at else a.pending_at.isoformat())),
        ("依据 / Clause", e(a.clause)),
        ("责任单位 / Department", e(a.owner)),
    ]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


@router.get("/ack/{token}", response_class=HTMLResponse, include_in_schema=False)
async def ack_page(conn: Conn, state: State, token: Token) -> HTMLResponse:
    """The console opens the alert and acknowledges it with one tap; without scripts, the
    plain page below does the same with a form."""
    try:
        _, alert_id = _who(state, token)
        a = await detail(conn, state, alert_id)
    except HTTPException as exc:
        return _plain(f"<p>{html.escape(str(exc.detail))}</p>", exc.status_code)
    if a.acknowledged:
        done = f"已由 {html.escape(a.acknowledged.acked_by)} 确认 / already acknowledged"
        return _plain(f"<p class=note>{done}</p>{_describe(a)}")
    if a.status not in ("pending", "firing"):
        return _plain(f"<p class=note>{html.escape(a.status)}</p>{_describe(a)}")
    form = (
        '<form method="post"><button type="submit" class="btn primary big">'
        "确认处理 / Acknowledge</button></form>"
    )
    return _plain(_describe(a) + form)


@router.post("/ack/{token}", response_class=HTMLResponse, include_in_schema=False)
async def ack_page_post(conn: Conn, state: State, token: Token, request: Request) -> HTMLResponse:
    try:
        who, alert_id = _who(state, token)
        await acknowledge(conn, who, alert_id, "", client_of(request))
        a = await detail(conn, state, alert_id)
    except HTTPException as exc:
        why = html.escape(str(exc.detail))
        return _plain(f"<p>未能确认 / Not acknowledged: {why}</p>", exc.status_code)
    return _plain(f"<p class=note>已确认 / Acknowledged</p>{_describe(a)}")
