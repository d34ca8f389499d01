"""Request and response bodies. Create/Update/Public suffixes say which way a model travels.

Times travel as RFC 3339 with their offset (the city's, on the way out); a time without an
offset is refused, because "08:00" means nothing to a platform that serves several clients.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from urbanpulse.db.tokens import Role

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _sane_time(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError("time out of range (1970 to 2200)")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_sane_time)]
# free text people type (names, notes): no control characters PostgreSQL would refuse
Text = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^\x00-\x08\x0b-\x1f]*$")]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Severity = Literal["info", "warning", "major", "critical"]
AlertStatus = Literal["pending", "firing", "resolved", "cancelled"]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """An error: `detail` says what went wrong and, where it helps, what to do."""

    detail: Any = Field(examples=["alert 42 is resolved; it can no longer be acknowledged"])


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass `next` back as `cursor` for the following page."""

    items: list[T]
    next: str | None = Field(None, description="cursor of the next page (absent: last page)")


# --- devices ---------------------------------------------------------------------------------


class DeviceHealth(_Out):
    last_seen: datetime | None = Field(description="measurement time of the newest reading")
    state: Literal["ok", "stale", "offline", "never"] = Field(
        description="ok: heard within 2 reporting intervals; stale: within 12; offline: "
        "silent longer; never: no reading yet"
    )


class DevicePublic(_Out):
    device_id: str = Field(examples=["YC-AQ-001"])
    domain: str = Field(examples=["air"])
    kind: str = Field(examples=["aq_station"])
    name: str = Field(examples=["永川区环境监测站"])
    zone: str | None = Field(examples=["城区"])
    lat: float | None
    lon: float | None
    capacity: float | None
    report_interval_s: int
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    health: DeviceHealth


class DeviceCreate(_In):
    device_id: Ident = Field(examples=["YC-FL-101"])
    domain: Literal["water", "flood", "air", "parking"]
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        examples=["flood_gauge"]
    )
    name: Name = Field(examples=["人民广场下穿道积水点"])
    zone: Name | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    capacity: float | None = Field(None, ge=0, le=1e9)
    report_interval_s: int = Field(300, gt=0, le=86400 * 7)
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=50)


class DeviceUpdate(_In):
    """Only the fields given change; `null` clears an optional field."""

    name: Name | None = None
    zone: Name | None = None
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    capacity: float | None = Field(None, ge=0, le=1e9)
    report_interval_s: int | None = Field(None, gt=0, le=86400 * 7)
    attributes: dict[str, str | int | float | bool] | None = Field(None, max_length=50)


class LatestValue(_Out):
    device_id: str
    metric: str = Field(examples=["pm25"])
    ts: datetime
    value: float
    ingested_at: datetime


# --- readings and derived series ---------------------------------------------------------------


class Reading(_Out):
    device_id: str
    metric: str
    ts: datetime = Field(description="measurement time (the bucket's start when bucketed)")
    value: float
    count: int | None = Field(None, description="readings in the bucket (bucketed only)")


class SeriesPoint(_Out):
    series: str = Field(examples=["air.aqi_hourly"])
    entity: str = Field(examples=["YC-AQ-001"])
    period_start: datetime
    period_end: datetime
    value: float
    detail: dict[str, Any]


class SeriesInfo(_Out):
    id: str
    title_zh: str
    title_en: str
    unit: str
    kind: str
    source: str


# --- alerts ------------------------------------------------------------------------------------


class AckPublic(_Out):
    acked_by: str
    acked_at: datetime
    note: str


class AlertPublic(_Out):
    id: int
    rule_id: str = Field(examples=["flood.ponding_15cm"])
    title_zh: str
    title_en: str
    entity: str = Field(examples=["YC-FL-003"])
    zone: str | None
    status: AlertStatus
    severity: Severity
    owner: str = Field(
        description="牵头单位: the department responsible", examples=["区城市管理局"]
    )
    value: float | None
    threshold: str = Field(examples=["> 15 (clears at 10)"])
    clause: str = Field(examples=["二、(二)"])
    labels: dict[str, str]
    pending_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    flapping: bool
    assignee: str | None
    acknowledged: AckPublic | None
    opened_at: datetime
    updated_at: datetime


class AlertEvent(_Out):
    id: int = Field(description="the event stream's id of this event")
    kind: str = Field(
        examples=["firing"],
        description="pending, firing, resolved, cancelled, acknowledged, assigned, commented",
    )
    at: datetime
    actor: str | None = Field(description="who (absent: the rule engine)")
    detail: dict[str, Any]


class AlertDetail(AlertPublic):
    events: list[AlertEvent]


class AckCreate(_In):
    note: Annotated[Text, StringConstraints(max_length=2000)] = ""


class AssignCreate(_In):
    assignee: Annotated[Text, StringConstraints(min_length=1, max_length=100)] = Field(
        examples=["王工"]
    )


class CommentCreate(_In):
    body: Annotated[Text, StringConstraints(min_length=1, max_length=4000)] = Field(
        examples=["已派人现场排水"]
    )


class ResolveCreate(_In):
    note: Annotated[Text, StringConstraints(min_length=1, max_length=2000)] = Field(
        examples=["传感器被杂物覆盖，已清理"]
    )


class SeriesValue(_Out):
    ts: datetime = Field(description="the bucket's start")
    value: float = Field(description="the mean of the bucket")


class AqiBand(_Out):
    """An HJ 633-2012 AQI level (Table 2) with the colour of the standard's appendix."""

    aqi: int = Field(examples=[168])
    level: str = Field(examples=["四级"])
    category: str = Field(examples=["中度污染"])
    en: str = Field(examples=["Moderately polluted"])
    colour: str = Field(examples=["#FF0000"])


class AlertSeries(_Out):
    """What the rule read around the breach, bucketed for a small chart."""

    alert_id: int
    kind: Literal["metric", "recorded", "none"] = Field(
        description="a device metric's readings, a recorded series, or nothing to draw"
    )
    name: str | None = Field(examples=["pm25"])
    unit: str = Field(examples=["µg/m³"], description="of the series drawn")
    value_unit: str = Field(
        examples=["µg/m³"], description="of the alert's value (a rate rule's is per hour)"
    )
    start: datetime
    end: datetime
    step_s: int = Field(description="bucket width in seconds")
    threshold: float | None = Field(None, description="a threshold rule's limit (else absent)")
    clear: float | None = Field(None, description="where the alert clears (hysteresis)")
    aqi: AqiBand | None = Field(None, description="air alerts: the AQI level of the value")
    points: list[SeriesValue]


class StreamEvent(AlertEvent):
    """One event of the live stream: what happened, and the alert as it now stands."""

    alert_id: int
    rule_id: str
    entity: str
    status: AlertStatus
    severity: Severity
    owner: str


# --- silences ----------------------------------------------------------------------------------


MatcherKey = Annotated[
    str,
    StringConstraints(
        pattern=r"^(rule_id|entity|severity|owner|zone|district|domain|labels\.[A-Za-z0-9_]{1,64})$"
    ),
]
MatcherValue = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
]


class SilenceCreate(_In):
    matchers: dict[MatcherKey, MatcherValue] = Field(
        min_length=1,
        max_length=10,
        examples=[{"zone": "DMA-XLH", "rule_id": "water.*"}],
        description="every key must match; a value ending in * matches by prefix",
    )
    starts_at: Instant | None = Field(None, description="default: now")
    ends_at: Instant
    reason: Annotated[Text, StringConstraints(min_length=1, max_length=2000)] = Field(
        examples=["管网维修，计划停水"]
    )


class SilencePublic(_Out):
    id: int
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    author: str
    reason: str
    created_at: datetime
    expired_at: datetime | None
    active: bool


# --- rules, KPIs, quarantine ------------------------------------------------------------------


class RuleHealth(_Out):
    healthy: bool = Field(description="false when the last evaluation failed")
    watermark: datetime | None
    last_eval_at: datetime | None
    last_duration_ms: float | None
    last_ok_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    evaluations: int
    failures: int


class RulePublic(_Out):
    id: str
    kind: Literal["alert", "record", "kpi"]
    title_zh: str
    title_en: str
    owner: str | None
    severity: str | None
    clause: str | None
    standard: str | None
    threshold: str | None
    health: RuleHealth | None = Field(description="absent: never evaluated yet")


class KpiHistory(_Out):
    period_start: str
    value: float | None
    compliant: bool | None


class KpiLine(_Out):
    kpi_id: str
    title_zh: str
    title_en: str
    owner: str
    clause: str
    unit: str
    period: str
    target: str = Field(examples=["< 10"])
    entity: str
    period_start: str
    value: float | None
    compliant: bool | None
    previous: float | None
    trend: str
    history: list[KpiHistory]


class QuarantinePublic(_Out):
    id: int
    topic: str
    reason: str
    detail: Any
    device_id: str | None
    received_at: datetime
    last_received_at: datetime
    occurrences: int
    stored_readings: int
    state: str
    replay_attempts: int
    payload_size: int
    payload_preview: str = Field(description="the first 512 bytes, undecodable bytes replaced")


class QuarantineSummary(_Out):
    reason: str
    state: str
    messages: int
    occurrences: int


class ReplayCreate(_In):
    reason: Ident | None = None
    device_id: Ident | None = None
    include_failed: bool = False


class ReplayResultPublic(_Out):
    replayed: int
    still_failing: int
    readings_stored: int
    duplicates: int


# --- tokens and audit --------------------------------------------------------------------------


class TokenCreate(_In):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    role: Role
    department: Name | None = None
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenPublic(_Out):
    id: int
    name: str
    role: Role
    department: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown once, store it now")


class AuditEntry(_Out):
    id: int
    at: datetime
    actor: str
    role: str
    action: str = Field(examples=["alert.acknowledge"])
    target: str = Field(examples=["alert:42"])
    detail: dict[str, Any]
    client: str | None


class Me(_Out):
    name: str
    role: Role
    department: str | None
