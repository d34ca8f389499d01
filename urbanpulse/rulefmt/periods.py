"""Period boundaries in the city's local time: hours, days, months and a daily time of day.

Recording rules compute a value per period once the period has ended (its end is at or
before the watermark). These helpers list the period ends in (after, upto], in epoch seconds.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAY = 86400.0


def every(step_s: float, after: float, upto: float) -> list[float]:
    """Multiples of step_s (from the epoch) in (after, upto]. Hours and shorter steps line up
    with local hours in every timezone with a whole-hour offset (China's is +08:00)."""
    first = math.floor(after / step_s) * step_s + step_s
    out: list[float] = []
    t = first
    while t <= upto:
        out.append(t)
        t += step_s
    return out


def _local(tz: ZoneInfo, day: date, at: time) -> float:
    return datetime.combine(day, at, tzinfo=tz).timestamp()


def local_date(t: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(t, tz).date()


def daily_at(tz: ZoneInfo, at: time, after: float, upto: float) -> list[float]:
    """Each day's local `at` (e.g. 00:00 or 05:00) in (after, upto]."""
    if upto <= after:
        return []
    day = local_date(after, tz) - timedelta(days=1)
    last = local_date(upto, tz) + timedelta(days=1)
    out: list[float] = []
    while day <= last:
        t = _local(tz, day, at)
        if after < t <= upto:
            out.append(t)
        day += timedelta(days=1)
    return out


def day_start(t: float, tz: ZoneInfo) -> float:
    """The local midnight at or before t."""
    return _local(tz, local_date(t, tz), time(0))


def previous_midnight(end: float, tz: ZoneInfo) -> float:
    """The local midnight one day before the local midnight `end`."""
    return _local(tz, local_date(end - 1, tz), time(0))


def month_start(t: float, tz: ZoneInfo) -> float:
    d = local_date(t, tz)
    return _local(tz, d.replace(day=1), time(0))
