"""Durations and offsets as people write them in our files: `2d 01:30`, `36h`, `90m`, `45s`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_PART = re.compile(r"(?:(?P<n>\d+(?:\.\d+)?)(?P<u>[dhms]))|(?P<clock>\d{1,2}:\d{2})")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_offset(text: str | float) -> float:
    """Seconds in `2d 01:30`, `36h`, `1d 6h`, `90m`, `45s` (a bare number is seconds)."""
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("must not be negative")
        return float(text)
    s = text.strip()
    pos, total, clock_seen = 0, 0.0, False
    for m in _PART.finditer(s):
        if s[pos : m.start()].strip():
            break
        if m.group("clock"):
            if clock_seen:
                raise ValueError(f"{text!r}: two clock times")
            hh, mm = (int(x) for x in m.group("clock").split(":"))
            if hh > 23 or mm > 59:
                raise ValueError(f"{text!r}: {m.group('clock')} is not a time of day")
            total += hh * 3600 + mm * 60
            clock_seen = True
        else:
            total += float(m.group("n")) * _UNIT_S[m.group("u")]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"{text!r} is not a time offset like '2d 01:30', '36h', '90m' or '45s'")
    return total


def _coerce(value: Any) -> Any:
    return parse_offset(value) if isinstance(value, str | int | float) else value


# A duration field of our strict files: written `90m`, `2d 01:30`, or seconds; never negative.
Duration = Annotated[float, BeforeValidator(_coerce), Field(ge=0)]
