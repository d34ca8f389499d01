"""Pure decisions of alert delivery: who hears of an alert, whether a silence holds it back,
how alerts are grouped into one message, what the message says, when to retry.

No I/O and no clock reads: the service passes `now` and the rows it read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from notify.config import NotifyConfig


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """An alert with what routing, silences and messages need (rule text, place)."""

    id: int
    rule_id: str
    entity: str
    status: str
    severity: str
    owner: str
    labels: dict[str, str]
    value: float | None
    started_at: datetime | None
    ended_at: datetime | None
    title_zh: str = ""
    title_en: str = ""
    clause: str = ""
    condition: str = ""  # e.g. "≥ 15 (clears at 12)"
    unit: str = ""
    place: str = ""  # the device's or zone's name
    zone: str | None = None
    district: str | None = None

    def field(self, key: str) -> str | None:
        """The value a route or silence matcher compares against."""
        if key.startswith("labels."):
            return self.labels.get(key[len("labels.") :])
        if key == "domain":
            return self.labels.get("domain")
        if key == "zone":
            return self.zone or self.entity
        return {
            "rule_id": self.rule_id,
            "entity": self.entity,
            "severity": self.severity,
            "owner": self.owner,
            "district": self.district,
        }.get(key)


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    author: str
    reason: str


def matches(alert: AlertInfo, matchers: dict[str, str]) -> bool:
    """Every matcher holds (a value ending in * matches by prefix)."""
    for key, want in matchers.items():
        got = alert.field(key)
        if got is None:
            return False
        if want.endswith("*") and got.startswith(want[:-1]):
            continue
        if got != want:
            return False
    return True


def silenced_by(alert: AlertInfo, silences: Iterable[Silence], now: datetime) -> Silence | None:
    for s in silences:
        if s.starts_at <= now < s.ends_at and matches(alert, s.matchers):
            return s
    return None


def route(alert: AlertInfo, config: NotifyConfig) -> list[str]:
    """The departments that hear of the alert: its rule's owner unless a route sends it
    elsewhere (the first matching route with a department wins), plus every matching `also`.
    A department the notify file lacks is kept: the caller records it, it is not dropped."""
    main = alert.owner
    extra: list[str] = []
    redirected = False
    for r in config.routes:
        if not matches(alert, r.match):
            continue
        if r.department is not None and not redirected:
            main, redirected = r.department, True
        extra += r.also
    out = [main] + [d for d in extra if d != main]
    return [d for i, d in enumerate(out) if d not in out[:i]]


def backoff(config: NotifyConfig, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failures (doubling, capped)."""
    return float(min(config.backoff_max, config.backoff * 2 ** max(0, attempts - 1)))


def dept_tag(department: str) -> str:
    """A short ASCII tag of a department's name, for keys."""
    return hashlib.sha256(department.encode()).hexdigest()[:8]


def group_key(kind: str, department: str, channel: str, outbox_ids: list[int]) -> str:
    """The idempotency key of a grouped message: the same outbox rows to the same department
    and channel are one message, however often they are planned."""
    digest = hashlib.sha256(",".join(map(str, sorted(outbox_ids))).encode()).hexdigest()[:20]
    return f"{kind}:{channel}:{dept_tag(department)}:{digest}"


SEVERITY_ZH = {"critical": "紧急", "major": "重要", "warning": "警告", "info": "提示"}


def _when(t: datetime | None, tz: ZoneInfo) -> str:
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M") if t else "-"


def _value(a: AlertInfo) -> str:
    if a.value is None:
        return "-"
    return f"{a.value:.4g}{(' ' + a.unit) if a.unit else ''}"


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str  # markdown, Chinese first, English second
    alert_ids: list[int] = field(default_factory=list)


def render(
    kind: str,
    department: str,
    alerts: list[AlertInfo],
    config: NotifyConfig,
    tz: ZoneInfo,
    *,
    level: int = 0,
    people: list[str] | None = None,
    token: Callable[[int], str] | None = None,
) -> Message:
    """One message for a department about some alerts: what breached, where, the value and the
    threshold, since when, the plan clause and where to acknowledge it (`token` signs the
    acknowledgement link of an alert for this department)."""
    n = len(alerts)
    worst = max(alerts, key=lambda a: ("info", "warning", "major", "critical").index(a.severity))
    if kind == "resolved":
        title = f"【已恢复】{department} {n} 条告警已恢复 / {n} alert(s) resolved"
    elif kind == "escalation":
        title = (
            f"【升级{level}级·未确认】{worst.title_zh} 等 {n} 条 / "
            f"Escalation level {level}: {n} unacknowledged alert(s)"
        )
    else:
        title = (
            f"【{SEVERITY_ZH.get(worst.severity, worst.severity)}】{worst.title_zh}"
            f"{f' 等 {n} 条' if n > 1 else ''} / {worst.title_en}"
            f"{f' and {n - 1} more' if n > 1 else ''}"
        )
    to = f"（{'、'.join(people)}）" if people else ""
    zh: list[str] = [f"### {title.split(' / ')[0]}", f"责任单位：{department}{to}"]
    en: list[str] = ["---", f"### {title.split(' / ', 1)[-1]}", f"Department: {department}{to}"]
    for a in alerts[: config.max_alerts]:
        where = f"{a.place}（{a.entity}）" if a.place and a.place != a.entity else a.entity
        link = config.ack_url.format(alert_id=a.id, token=token(a.id) if token else "")
        if kind == "resolved":
            zh.append(
                f"- **{a.title_zh}**：{where}，{_when(a.started_at, tz)} 起，"
                f"{_when(a.ended_at, tz)} 恢复（{a.clause}）"
            )
            en.append(
                f"- **{a.title_en}** at {a.entity}: from {_when(a.started_at, tz)}, "
                f"resolved {_when(a.ended_at, tz)}"
            )
            continue
        zh.append(
            f"- **{a.title_zh}**：{where}，当前值 {_value(a)}，阈值 {a.condition}，"
            f"自 {_when(a.started_at, tz)} 起；依据 {a.clause}；确认处理：{link}"
        )
        en.append(
            f"- **{a.title_en}** at {a.entity}: value {_value(a)}, threshold {a.condition}, "
            f"since {_when(a.started_at, tz)}; {a.clause}; acknowledge: {link}"
        )
    if n > config.max_alerts:
        more = n - config.max_alerts
        zh.append(f"- ……另有 {more} 条，见告警列表")
        en.append(f"- … and {more} more: see the alert list")
    return Message(title, "\n".join([*zh, "", *en]), [a.id for a in alerts])
