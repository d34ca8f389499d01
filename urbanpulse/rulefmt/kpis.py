"""The plan KPIs as the rule files declare them (a rule file's `kpis:` section).

A KPI names its plan clause, owner, period (month or year) and target, and how it is measured
from recorded series or ponding events:

- `latest`: the latest value of a recorded series in the period (e.g. the month-to-date
  leakage rate R_BL per DMA and district);
- `days_where`: the number of local days whose daily value passes a test (heavy-pollution
  days: daily AQI > 200);
- `share_days`: the share (%) of days with a value that passes a test (good-air days: daily
  AQI ≤ 100);
- `hours_above`: the number of hourly values above a level (car-park hours above 85 %);
- `ponding_points`: the number of distinct flood points that ponded in the period.

The rule runner measures them (`rules.kpi`); `urbanpulse.db.scorecard` reads the scores back.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbanpulse.rulefmt.records import ID_PATTERN, Title

Op = Literal["<", "<=", ">", ">="]
_PY_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    better: Literal["lower", "higher"]
    op: Op | None = None  # None: the plan sets a direction only (e.g. 「逐步缓解」)
    value: float | None = None

    @model_validator(mode="after")
    def _both(self) -> Target:
        if (self.op is None) != (self.value is None):
            raise ValueError("give both op and value, or neither (a direction only)")
        return self

    def met(self, value: float | None) -> bool | None:
        if value is None or self.op is None or self.value is None:
            return None
        return bool(_PY_OPS[self.op](value, self.value))


class Latest(_Strict):
    kind: Literal["latest"]
    recorded: str = Field(pattern=ID_PATTERN)
    entities: list[str] | None = None  # None: every entity of the series


class DaysWhere(_Strict):
    kind: Literal["days_where", "share_days"]
    recorded: str = Field(pattern=ID_PATTERN)  # a daily series
    op: Op
    value: float


class HoursAbove(_Strict):
    kind: Literal["hours_above"]
    recorded: str = Field(pattern=ID_PATTERN)  # an hourly series
    value: float


class PondingPoints(_Strict):
    kind: Literal["ponding_points"]
    carriageway_only: bool = False
    record: str = Field("flood.ponding_events", pattern=ID_PATTERN)  # the events' record


Measure = Annotated[Latest | DaysWhere | HoursAbove | PondingPoints, Field(discriminator="kind")]


class Kpi(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    title: Title
    unit: str
    period: Literal["month", "year"]
    target: Target
    measure: Measure
    owner: str
    clause: str = Field(min_length=1)
    standard: str | None = None

    @property
    def recorded(self) -> str | None:
        return None if isinstance(self.measure, PondingPoints) else self.measure.recorded

    @property
    def source(self) -> str:
        """The record the KPI is scored from (it is scored as far as that record covers)."""
        m = self.measure
        return m.record if isinstance(m, PondingPoints) else m.recorded


def period_bounds(kpi: Kpi, day: date, tz: ZoneInfo) -> tuple[date, float, float]:
    """(first day, start, end) of the KPI's period that holds the local `day`."""
    first = day.replace(day=1) if kpi.period == "month" else day.replace(month=1, day=1)
    if kpi.period == "month":
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    else:
        nxt = date(first.year + 1, 1, 1)
    start = datetime.combine(first, time(0), tz).timestamp()
    end = datetime.combine(nxt, time(0), tz).timestamp()
    return first, start, end
