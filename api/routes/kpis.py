"""The plan's KPI scorecard: each KPI's latest period against its target, with its history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import ApiState, State, Viewer, not_found
from api.schemas import KpiLine, Name, Problem
from urbanpulse.db.scorecard import ScoreLine, scorecard
from urbanpulse.rulefmt.kpis import Kpi

router = APIRouter(tags=["kpis"])


def _target(kpi: Kpi) -> str:
    t = kpi.target
    if t.op is None or t.value is None:
        return f"{t.better} is better"
    return f"{t.op} {t.value:g}"


def _line(s: ScoreLine) -> KpiLine:
    return KpiLine(
        kpi_id=s.kpi.id,
        title_zh=s.kpi.title.zh,
        title_en=s.kpi.title.en,
        owner=s.kpi.owner,
        clause=s.kpi.clause,
        unit=s.kpi.unit,
        period=s.kpi.period,
        target=_target(s.kpi),
        entity=s.entity,
        period_start=s.period_start.isoformat(),
        value=s.value,
        compliant=s.compliant,
        previous=s.previous,
        trend=s.trend,
        history=[
            {"period_start": d.isoformat(), "value": v, "compliant": c} for d, v, c in s.history
        ],
    )


async def _score(state: ApiState, kpis: list[Kpi], history: int) -> list[ScoreLine]:
    def work() -> list[ScoreLine]:
        with state.sync_pool.connection() as conn:
            return scorecard(conn, kpis, history=history)

    return await run_in_threadpool(work)


@router.get("/kpis", response_model=list[KpiLine], summary="The plan KPI scorecard")
async def list_kpis(
    state: State,
    _who: Viewer,
    owner: Annotated[Name | None, Query(description="one department's KPIs")] = None,
    history: Annotated[int, Query(ge=1, le=120)] = 12,
) -> list[KpiLine]:
    kpis = [k for k in state.catalogue.kpis if owner is None or k.owner == owner]
    return [_line(s) for s in await _score(state, kpis, history)]


@router.get(
    "/kpis/{kpi_id}",
    response_model=list[KpiLine],
    responses={404: {"model": Problem}},
    summary="One KPI per entity, with up to `history` periods",
)
async def get_kpi(
    state: State,
    _who: Viewer,
    kpi_id: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")],
    history: Annotated[int, Query(ge=1, le=120)] = 36,
) -> list[KpiLine]:
    kpis = [k for k in state.catalogue.kpis if k.id == kpi_id]
    if not kpis:
        raise not_found(f"KPI {kpi_id}")
    return [_line(s) for s in await _score(state, kpis, history)]
