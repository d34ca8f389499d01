"""Rules: the catalogue with each rule's, record's and KPI's health and last evaluation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.deps import ApiState, Conn, State, Viewer, not_found
from api.schemas import Problem, RulePublic
from urbanpulse.rulefmt.describe import condition_text

router = APIRouter(tags=["rules"])


def _catalogue(state: ApiState) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cat = state.catalogue
    for rec in cat.records:
        out.append(
            {
                "id": rec.id,
                "kind": "record",
                "title_zh": rec.title.zh,
                "title_en": rec.title.en,
                "owner": None,
                "severity": None,
                "clause": rec.source or None,
                "standard": None,
                "threshold": None,
            }
        )
    for rule in cat.rules:
        out.append(
            {
                "id": rule.id,
                "kind": "alert",
                "title_zh": rule.title.zh,
                "title_en": rule.title.en,
                "owner": rule.owner,
                "severity": rule.severity,
                "clause": rule.implements.clause,
                "standard": rule.implements.standard,
                "threshold": condition_text(rule),
            }
        )
    for kpi in cat.kpis:
        out.append(
            {
                "id": kpi.id,
                "kind": "kpi",
                "title_zh": kpi.title.zh,
                "title_en": kpi.title.en,
                "owner": kpi.owner,
                "severity": None,
                "clause": kpi.clause,
                "standard": kpi.standard,
                "threshold": None,
            }
        )
    return out


async def _health(conn: Conn) -> dict[str, dict[str, Any]]:
    rows = await (
        await conn.execute(
            "SELECT rule_id, watermark, last_eval_at, last_duration_ms, last_ok_at, last_error, "
            "last_error_at, evaluations, failures, "
            "(last_error_at IS NULL OR last_ok_at >= last_error_at) AS healthy FROM rule_health"
        )
    ).fetchall()
    return {str(r["rule_id"]): r for r in rows}


def _key(item: dict[str, Any]) -> list[str]:
    # the runner keeps records and KPIs under a prefixed id (record:…, kpi:…)
    kind = item["kind"]
    return [item["id"]] if kind == "alert" else [f"{kind}:{item['id']}", item["id"]]


@router.get("/rules", response_model=list[RulePublic], summary="Rules, records and KPIs")
async def list_rules(conn: Conn, state: State, _who: Viewer) -> list[RulePublic]:
    health = await _health(conn)
    out = []
    for item in _catalogue(state):
        h = next((health[k] for k in _key(item) if k in health), None)
        out.append(RulePublic.model_validate({**item, "health": h}))
    return out


@router.get(
    "/rules/{rule_id}",
    response_model=RulePublic,
    responses={404: {"model": Problem}},
    summary="One rule, record or KPI with its health",
)
async def get_rule(
    conn: Conn,
    state: State,
    _who: Viewer,
    rule_id: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")],
) -> RulePublic:
    for item in _catalogue(state):
        if item["id"] == rule_id:
            health = await _health(conn)
            h = next((health[k] for k in _key(item) if k in health), None)
            return RulePublic.model_validate({**item, "health": h})
    raise not_found(f"rule {rule_id}")
