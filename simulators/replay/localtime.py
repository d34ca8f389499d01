"""Local wall-clock times to UTC, with an explicit policy for DST repeats and gaps.

Pure: no clock, no I/O. The autumn repeat (e.g. Europe/Rome 2021-10-31 02:00 twice) is read in
file order: within one series, the first occurrence is summer time and, once the wall clock has
gone back, the rest of the repeated hour is winter time. The spring gap (02:00 to 03:00 does not
exist) is skipped with a reason, or shifted forward by the length of the gap.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

from simulators.replay.model import Skip


class Ambiguous(StrEnum):
    FILE_ORDER = "file_order"  # first occurrence summer time, the repeat winter time
    EARLIER = "earlier"  # always the first (summer-time) instant
    LATER = "later"  # always the second (winter-time) instant
    SKIP = "skip"  # skip with reason dst_ambiguous


class Nonexistent(StrEnum):
    SKIP = "skip"  # skip with reason dst_gap
    SHIFT_FORWARD = "shift_forward"  # 02:30 in a one-hour gap becomes 03:30 summer time


class DstNote(StrEnum):
    """How a time in a DST transition was read (counted in the summary)."""

    REPEAT_SUMMER = "repeated hour read as summer time"
    REPEAT_WINTER = "repeated hour read as winter time"
    GAP_SHIFTED = "time in the spring gap shifted forward"


@dataclass(frozen=True, slots=True)
class Resolved:
    """The UTC instant of a wall-clock time, or why there is none; and how it was read."""

    instant: datetime | None
    skip: Skip | None = None
    note: DstNote | None = None


@dataclass(slots=True)
class _Repeat:
    """File-order state of one series in one repeated hour."""

    latest: datetime
    gone_back: bool = False


@dataclass(slots=True)
class LocalClock:
    """Converts naive wall-clock times of one zone to UTC, remembering file order per series."""

    zone: ZoneInfo
    ambiguous: Ambiguous = Ambiguous.FILE_ORDER
    nonexistent: Nonexistent = Nonexistent.SKIP
    _repeats: dict[tuple[Hashable, date], _Repeat] = field(default_factory=dict)

    def to_utc(self, wall: datetime, series: Hashable = None) -> Resolved:
        """The UTC instant of `wall` (naive: local time of the zone; aware: used as it is)."""
        if wall.tzinfo is not None:
            return Resolved(wall.astimezone(UTC))
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        off0, off1 = first.utcoffset(), second.utcoffset()
        if off0 == off1:
            return Resolved(first.astimezone(UTC))
        assert off0 is not None and off1 is not None
        if off0 < off1:  # PEP 495: in a gap, fold=0 uses the offset from before the jump
            if self.nonexistent is Nonexistent.SKIP:
                return Resolved(None, Skip.DST_GAP)
            return Resolved(first.astimezone(UTC), note=DstNote.GAP_SHIFTED)
        summer = Resolved(first.astimezone(UTC), note=DstNote.REPEAT_SUMMER)
        winter = Resolved(second.astimezone(UTC), note=DstNote.REPEAT_WINTER)
        if self.ambiguous is Ambiguous.SKIP:
            return Resolved(None, Skip.DST_AMBIGUOUS)
        if self.ambiguous is Ambiguous.EARLIER:
            return summer
        if self.ambiguous is Ambiguous.LATER:
            return winter
        key = (series, wall.date())
        state = self._repeats.get(key)
        if state is None:
            self._repeats[key] = _Repeat(wall)
            return summer
        if state.gone_back or wall <= state.latest:
            state.gone_back = True
            return winter
        state.latest = wall
        return summer

    def localize(self, wall: datetime) -> datetime:
        """A bound given in local time (e.g. --since): the earlier instant when ambiguous."""
        if wall.tzinfo is not None:
            return wall.astimezone(UTC)
        return wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
