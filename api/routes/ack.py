"""Acknowledgement links: a manager taps the link of a notification, sees the alert, confirms,
and it is acknowledged in their department's name, without signing in. The link's signature
and expiry are the credential (urbanpulse.links)."""

from __future__ import annotations

import html
import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse

from api.deps import Conn, Principal, State, client_of
from api.routes.alerts import acknowledge, detail
from api.schemas import AlertDetail, Problem
from urbanpulse.db.tokens import Role
from urbanpulse.links import LinkError, verify

router = APIRouter(tags=["ack links"])

Token = Annotated[
    str, Path(min_length=10, max_length=2048, pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
]


def _who(key: bytes, token: str) -> tuple[Principal, int]:
    try:
        claim = verify(key, token, time.time())
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
    _, alert_id = _who(state.link_key, token)
    return await detail(conn, state, alert_id)


@router.post(
    "/api/v1/ack/{token}",
    response_model=AlertDetail,
    responses={403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem}},
    summary="Acknowledge through a link (no token needed: the link is signed and expires)",
)
async def link_ack(conn: Conn, state: State, token: Token, request: Request) -> AlertDetail:
    who, alert_id = _who(state.link_key, token)
    await acknowledge(conn, who, alert_id, "", client_of(request))
    return await detail(conn, state, alert_id)


PAGE = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:1rem auto;padding:0 1rem;
color:#111}}dt{{font-weight:600}}button{{font-size:1.1rem;padding:.7rem 1.4rem;border:0;
border-radius:.4rem;background:#0b5cad;color:#fff}}button:focus{{outline:3px solid #f5a623}}
.note{{padding:.6rem;border-radius:.4rem;background:#eef4fb}}</style></head><body>{body}
</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), body=body), status_code=status)


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
    try:
        _, alert_id = _who(state.link_key, token)
        a = await detail(conn, state, alert_id)
    except HTTPException as exc:
        return _page("链接无效 / Invalid link", f"<p>{html.escape(str(exc.detail))}</p>", 403)
    if a.acknowledged:
        done = f"已由 {html.escape(a.acknowledged.acked_by)} 确认 / already acknowledged"
        return _page("已确认 / Acknowledged", f"<p class=note>{done}</p>{_describe(a)}")
    if a.status not in ("pending", "firing"):
        return _page("已结束 / Closed", f"<p class=note>{a.status}</p>{_describe(a)}")
    form = (
        '<form method="post"><button type="submit" autofocus>确认处理 / Acknowledge</button></form>'
    )
    return _page("确认告警 / Acknowledge alert", _describe(a) + form)


@router.post("/ack/{token}", response_class=HTMLResponse, include_in_schema=False)
async def ack_page_post(conn: Conn, state: State, token: Token, request: Request) -> HTMLResponse:
    try:
        who, alert_id = _who(state.link_key, token)
        await acknowledge(conn, who, alert_id, "", client_of(request))
        a = await detail(conn, state, alert_id)
    except HTTPException as exc:
        return _page(
            "未能确认 / Not acknowledged", f"<p>{html.escape(str(exc.detail))}</p>", exc.status_code
        )
    return _page("已确认 / Acknowledged", f"<p class=note>已确认 / Acknowledged</p>{_describe(a)}")
