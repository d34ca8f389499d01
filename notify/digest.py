"""The daily digest of each department: the KPIs it owns against the plan's targets, its
alerts of the day before, and a bar chart (PNG, 800 × 400 px) of its KPI's latest value per
place against the target line (e.g. the leakage rate of each DMA against 10 %), red where the
target is not met and green where it is.

The chart is drawn with matplotlib (imported only when a chart is drawn; Agg canvas, no
pyplot, one chart at a time) in the first CJK font installed of CJK_FAMILIES, for the Chinese
titles and place names: Debian's fonts-wqy-microhei. Without one it is drawn all the same,
its Chinese text as boxes, and a warning is logged once."""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache, partial
from typing import Any
from zoneinfo import ZoneInfo

from notify.context import (
    Conn,
    Context,
    load_alerts,
    to_level,
)
from notify.core import (
    AlertInfo,
    Message,
    dept_tag,
    route,
)
from urbanpulse.db.scorecard import ScoreLine, scorecard
from urbanpulse.rulefmt.kpis import Kpi, Target
from urbanpulse.rulefmt.records import CITY

log = logging.getLogger(__name__)

MET, NOT_MET, NO_VERDICT = "#2e8b57", "#d0413e", "#9e9e9e"  # bar colours: target met, not, n/a
CJK_FAMILIES = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Source Han Sans SC")
_CJK_PACKAGE = "fonts-wqy-microhei"  # Debian's, for the first of CJK_FAMILIES
_INK, _MUTED, _GRID = "#262626", "#6b6b6b", "#e3e3e3"
_OPS = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}
_INCHES, _DPI = (8.0, 4.0), 100  # 800 × 400 px
_DASHES = (0, (5, 3))
MAX_BARS = 30  # more places than this: the chart shows the farthest from their target
_DRAW = threading.Lock()  # matplotlib's font caches are not thread-safe: one chart at a time


@cache
def _cjk_family() -> str | None:
    """The first of CJK_FAMILIES that is installed, or None (and a warning, once)."""
    from matplotlib import font_manager  # noqa: PLC0415 (lazy: most commands draw nothing)

    def first() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((f for f in CJK_FAMILIES if f in names), None)

    if (family := first()) is None:  # installed after matplotlib cached its font list?
        for font in font_manager.FontManager().ttflist:  # a fresh scan of the system's fonts
            if font.name in CJK_FAMILIES:
                font_manager.fontManager.addfont(font.fname)
        family = first()
    if family is None:
        log.warning(
            "no CJK font (%s): the Chinese text of digest charts shows as boxes; "
            "install one with `apt-get install -y %s`",
            ", ".join(CJK_FAMILIES),
            _CJK_PACKAGE,
        )
    return family


def _ems(text: str) -> float:
    """About how wide `text` is, in ems: a CJK character is about 1 em, a Latin one 0.6."""
    return sum(1.0 if ord(c) >= 0x2E80 else 0.6 for c in text)


def _num(value: float) -> str:
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def worst_first(lines: list[ScoreLine], target: Target, n: int = MAX_BARS) -> list[ScoreLine]:
    """The `n` places farthest on the wrong side of `target` (highest first where lower is
    better), in that order: a chart of a thousand bars reads as nothing."""
    higher_is_worse = target.better == "lower"

    def badness(s: ScoreLine) -> float:
        v = s.value if s.value is not None and math.isfinite(s.value) else None
        if v is None:
            return -math.inf
        return v if higher_is_worse else -v

    return sorted(lines, key=badness, reverse=True)[:n]


def bar_chart(
    title: str,
    unit: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    target: Target,
    *,
    day: date | None = None,
) -> bytes:
    """A PNG of 800 × 400 px: one bar per place (`labels`, left to right), green where its
    value meets `target`, red where it does not, grey where there is no verdict (no value, or a
    target with a direction only); the target as a dashed line labelled with its value; value
    labels on the bars; `title`, `unit` and `day` above. Chinese text needs a CJK font (Debian:
    fonts-wqy-microhei); without one the chart is drawn all the same, after one warning."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} values")
    # a value that is not a number (NaN, ±inf) is drawn as no data, never fails the digest
    values = [v if v is not None and math.isfinite(v) else None for v in values]
    with _DRAW, warnings.catch_warnings():
        cjk = _cjk_family()
        if cjk is None:  # warned once already, not once per missing glyph
            warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        font = [cjk, "DejaVu Sans"] if cjk else ["DejaVu Sans"]  # DejaVu: matplotlib's own
        return _draw(title, unit, labels, values, target, day=day, font=font)


def _draw(
    title: str,
    unit: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    target: Target,
    *,
    day: date | None,
    font: list[str],
) -> bytes:
    # lazy, like _cjk_family: importing matplotlib takes a third of a second
    from matplotlib import figure, lines, patches, transforms  # noqa: PLC0415
    from matplotlib.backends import backend_agg  # noqa: PLC0415

    n = len(labels)
    colours = [{True: MET, False: NOT_MET, None: NO_VERDICT}[target.met(v)] for v in values]
    heights = [0.0 if v is None else v for v in values]
    line = target.value if target.op is not None else None
    size = 10.0 if n <= 8 else 8.5 if n <= 16 else 7.0
    em = size * _DPI / 72  # px
    widest = max((_ems(s) * em for s in labels), default=0)
    slot = _INCHES[0] * _DPI * 0.8 / max(n, 1)  # px per bar
    # names wider than their slot slant, steeper where the slots are narrow
    angle = 0 if widest < 0.9 * slot else 30 if slot > 3.2 * em else 45 if slot > 2.3 * em else 90

    fig = figure.Figure(figsize=_INCHES, dpi=_DPI, facecolor="white")
    backend_agg.FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.87, top=0.8, bottom=0.13)
    ax = fig.add_subplot()
    heading = min(15.0, 0.92 * _INCHES[0] * 72 / max(_ems(title), 1))  # pt: fit the width
    fig.text(0.04, 0.935, title, fontfamily=font, fontsize=heading, color=_INK, va="center")
    sub = [day.isoformat()] if day else []
    sub += [f"单位：{unit}"] if unit else []
    fig.text(0.04, 0.865, " · ".join(sub), fontfamily=font, fontsize=9.5, color=_MUTED, va="center")

    xs = list(range(n))
    bars = ax.bar(xs, heights, width=0.6, color=colours, linewidth=0, zorder=2)
    values_text = ax.bar_label(
        bars,
        labels=["无数据" if v is None else _num(v) for v in values],
        padding=3,
        fontfamily=font,
        fontsize=size - 1,
        color=_INK,
        zorder=4,
    )
    for text in values_text:  # legible where the target line crosses it
        text.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.set_xticks(xs, labels, fontfamily=font, fontsize=size, color=_INK)
    ax.set_xlim(-0.6, max(n, 1) - 0.4)
    top, bottom = max([*heights, line or 0.0, 0.0]), min([*heights, line or 0.0, 0.0])
    ax.set_ylim(bottom * 1.18, top * 1.18 if top > 0 else 1.0)
    if line is not None:
        ax.axhline(line, color=_INK, linestyle=_DASHES, linewidth=1.3, zorder=3)
        ax.text(
            1.01,
            line,
            f"目标 {_OPS[target.op or '<']} {_num(line)}",
            transform=transforms.blended_transform_factory(ax.transAxes, ax.transData),
            fontfamily=font,
            fontsize=9,
            color=_INK,
            verticalalignment="center",
        )
    if n == 0:
        ax.text(
            0.5,
            0.5,
            "无数据 no data",
            transform=ax.transAxes,
            fontfamily=font,
            fontsize=12,
            color=_MUTED,
            horizontalalignment="center",
            verticalalignment="center",
        )
    ax.grid(axis="y", color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(_MUTED)
    ax.tick_params(axis="y", length=0, labelsize=8.5, labelcolor=_MUTED)
    ax.tick_params(axis="x", length=0)

    names = {MET: "达标", NOT_MET: "未达标", NO_VERDICT: "无判定"}
    keys: list[patches.Patch | lines.Line2D] = [
        patches.Patch(color=c, label=names[c]) for c in names if c in colours
    ]
    if line is not None:
        keys.append(lines.Line2D([], [], color=_INK, linestyle=_DASHES, label="目标"))
    if keys:  # on the line under the title, right-aligned
        fig.legend(
            handles=keys,
            loc="center right",
            bbox_to_anchor=(0.98, 0.865),
            ncols=len(keys),
            frameon=False,
            prop={"family": font, "size": 9},
            handlelength=1.6,
            borderaxespad=0,
        )
    if angle:
        for tick in ax.get_xticklabels():
            tick.set(rotation=angle, ha="right", va="center", rotation_mode="anchor")
        for _ in range(3):  # make room below the axes, and on the left for the first name
            fig.draw_without_rendering()
            boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
            below = ax.bbox.y0 - min(b.y0 for b in boxes) + 8
            past = 8 - min(b.x0 for b in boxes)
            left = fig.subplotpars.left + max(0.0, past) / fig.bbox.width
            fig.subplots_adjust(left=min(left, 0.4), bottom=min(below / fig.bbox.height, 0.6))
            if past <= 0:
                break
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=_DPI, metadata={"Software": None})
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Digest:
    department: str
    title: str
    body: str
    chart: bytes | None


def _line(s: ScoreLine) -> str:
    t = s.kpi.target
    target = f"{t.op} {t.value:g}" if t.op and t.value is not None else f"{t.better} is better"
    value = "-" if s.value is None else f"{s.value:.2f}"
    verdict = {True: "达标 met", False: "未达标 NOT MET", None: ""}[s.compliant]
    return f"- {s.kpi.title.zh}（{s.entity}）：{value} {s.kpi.unit}，目标 {target} {verdict}"


def build(
    conn: Conn, department: str, kpis: list[Kpi], day: date, *, tz: ZoneInfo, alerts: list[Any]
) -> Digest | None:
    """The department's digest for the local `day`: its KPIs and the alerts routed to it that
    were firing that day (None: it owns no KPI and had no alert)."""
    owned = [k for k in kpis if k.owner == department]
    lines = scorecard(conn, owned, history=1) if owned else []
    if not lines and not alerts:
        return None
    zh = [f"### {department} 每日简报 {day.isoformat()}", "**规划指标 Plan KPIs**"]
    zh += [_line(s) for s in lines if s.entity == CITY or s.compliant is False] or ["- （无）"]
    zh.append(f"**当日告警 Alerts of the day（{len(alerts)}）**")
    for a in alerts[:30]:
        until = (
            a.ended_at.astimezone(tz).strftime("%H:%M") if a.ended_at else "仍在告警 still firing"
        )
        since = a.started_at.astimezone(tz).strftime("%m-%d %H:%M") if a.started_at else "-"
        zh.append(f"- {a.rule_id} {a.entity} {since} → {until}")
    if len(alerts) > 30:
        zh.append(f"- ……另有 {len(alerts) - 30} 条 / and {len(alerts) - 30} more")
    chart = None
    for kpi in owned:  # the first KPI measured per place gets the chart
        per_place = [
            s for s in lines if s.kpi.id == kpi.id and s.entity != CITY and s.value is not None
        ]
        if len(per_place) > 1:
            shown = worst_first(per_place, kpi.target) if len(per_place) > MAX_BARS else per_place
            names = [s.entity for s in shown]
            values = [s.value for s in shown]
            title = kpi.title.zh
            if len(shown) < len(per_place):
                title += f"（{len(per_place)} 处中差距最大的 {len(shown)} 处）"
            chart = bar_chart(title, kpi.unit, names, values, kpi.target, day=day)
            t = kpi.target
            key = (
                f"虚线为目标 {t.op} {t.value:g}，绿色达标、红色未达标"
                if t.op and t.value is not None
                else "目标无数值，不作判定"
            )
            zh.append(f"图：{kpi.title.zh}，从左到右 {'、'.join(names)}；{key}")
            break
    title = f"【每日简报】{department} {day.isoformat()} / Daily digest"
    return Digest(department, title, "\n".join(zh), chart)


def digest_key(channel: str, department: str, day: date) -> str:
    return f"digest:{channel}:{dept_tag(department)}:{day.isoformat()}"


def plan_digests(conn: Conn, ctx: Context, day: date, now: datetime) -> int:
    """Each department's digest of the local `day` to the channels of its first level, once
    per day, department and channel, due at `now`; returns the notifications created. A
    department hears of the alerts routed to it, as it did when they fired."""
    keys = {
        (dept, ch): digest_key(ch, dept, day)
        for dept, spec in ctx.config.departments.items()
        for ch in spec.levels[0]
    }
    done = {
        str(k)
        for (k,) in conn.execute(
            "SELECT idempotency_key FROM notifications WHERE idempotency_key = ANY(%s)",
            (list(keys.values()),),
        ).fetchall()
    }
    conn.commit()
    missing = {dept for (dept, _), key in keys.items() if key not in done}
    if not missing:
        return 0
    start = datetime.combine(day, datetime.min.time(), ctx.tz)
    ids = [
        int(i)
        for (i,) in conn.execute(
            "SELECT id FROM alerts WHERE status IN ('firing', 'resolved') AND started_at < %s "
            "AND (ended_at IS NULL OR ended_at >= %s) ORDER BY started_at",
            (start + timedelta(days=1), start),
        ).fetchall()
    ]
    routed: dict[str, list[AlertInfo]] = defaultdict(list)
    for info in load_alerts(conn, ctx, ids).values():
        for dept in route(info, ctx.config):
            routed[dept].append(info)
    created = 0
    for dept in sorted(missing):
        alerts = sorted(routed.get(dept, []), key=lambda a: (a.started_at or start, a.id))
        got = build(conn, dept, list(ctx.kpis), day, tz=ctx.tz, alerts=alerts)
        if got is None:
            continue
        msg = Message(got.title, got.body)
        chart = (f"digest-{day.isoformat()}.png", got.chart) if got.chart else None
        with conn.transaction():
            created += to_level(
                conn,
                ctx,
                dept,
                0,
                kind="digest",
                msg=msg,
                key=partial(digest_key, department=dept, day=day),
                due=now,
                attachment=chart,
            )
    return created


def digest_day(ctx: Context, now: datetime) -> date | None:
    """The day whose digest is due (the day before, once `digest.at` has passed)."""
    if not ctx.config.digest.enabled:
        return None
    local = now.astimezone(ctx.tz)
    hour, minute = map(int, ctx.config.digest.at.split(":"))
    if (local.hour, local.minute) < (hour, minute):
        return None
    return local.date() - timedelta(days=1)
