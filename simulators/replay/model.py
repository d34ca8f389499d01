"""The replay's own types: why something was skipped, which quirks went out as-is, messages."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple
from zoneinfo import ZoneInfo


class Skip(StrEnum):
    """Why a row or a value was not published (counted, never silent)."""

    MISSING = "missing"  # a missing-value marker (NA, NaN, empty cell): not a measurement
    BAD_TIME = "bad_time"  # the time cannot be parsed: the server never invents one
    DST_GAP = "dst_gap"  # a local time that does not exist (spring forward)
    DST_AMBIGUOUS = "dst_ambiguous"  # a repeated local time, with the policy `skip`
    BAD_ROW = "bad_row"  # wrong number of fields, or a profile that is not a JSON array
    NO_DEVICE = "no_device"  # the device id template renders empty


class Quirk(StrEnum):
    """Messy values published as they are; the summary says what ingest will do with them."""

    OUT_OF_RANGE = "out_of_range"  # outside the registry's plausible range: ingest quarantines
    NOT_A_NUMBER = "not_a_number"  # published as text: ingest quarantines it as bad_value
    AT_CEILING = "at_ceiling"  # the instrument's upper limit: stored, a lower bound of the truth
    ABOVE_BOUND = "above_bound"  # above another column of the row (occupancy above capacity)
    DUPLICATE = "duplicate"  # same device, metric and time again, same value: ingest keeps one
    CONFLICT = "conflicting_duplicate"  # same key, another value: ingest keeps the first


Value = float | str  # a float, or the raw text of a value published as-is


class Entry(NamedTuple):
    """One reading to publish: measurement time (epoch ms, UTC), metric, value, unit.

    A NamedTuple rather than a frozen dataclass: a full replay makes a million of them.
    """

    ts_ms: int
    metric: str
    value: Value
    unit: str
    quirks: tuple[Quirk, ...] = ()


class Message(NamedTuple):
    """One MQTT message to publish, in the `values` form (one time) or `batch` form."""

    due_ms: int  # when it is published on the measurement clock: its latest reading
    device: str
    domain: str
    batch: bool
    entries: tuple[Entry, ...]
    zone: ZoneInfo  # the source's zone: times are published with its local offset
