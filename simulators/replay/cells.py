"""Values and times out of raw cells (text from CSV; text, numbers or dates from Excel)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from simulators.replay.mapping import TimeSpec
from simulators.replay.readers import Cell


def text_of(cell: Cell) -> str:
    """A cell as text for templates and messages (an Excel 3.0 reads as 3)."""
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell)


def _integer(cell: Cell) -> int:
    if isinstance(cell, int | float):
        if float(cell).is_integer():
            return int(cell)
        raise ValueError(f"{cell!r} is not a whole number")
    return int(str(cell))


def parse_number(cell: Cell) -> float | int | None:
    """A finite number from a cell, or None when it is not one."""
    if type(cell) is str:  # the hot path: text files
        if cell.isascii() and cell.isdigit():
            return int(cell)
        try:
            value = float(cell)
        except ValueError:
            return None
        return value if value - value == 0 else None  # NaN and ±inf are not measurements
    if isinstance(cell, bool) or not isinstance(cell, int | float):
        return None
    return cell if math.isfinite(cell) else None


def read_wall_time(cells: dict[str, Cell], spec: TimeSpec) -> datetime:
    """The wall-clock time of a row (naive unless the data carries an offset)."""
    if spec.column is not None:
        raw = cells.get(spec.column)
        if isinstance(raw, datetime):
            return raw
        text = text_of(raw)
        if not text:
            raise ValueError("empty time")
        if spec.format == "iso":
            return datetime.fromisoformat(text)
        return datetime.strptime(text, spec.format)  # naive: the zone comes next
    parts = spec.parts
    assert parts is not None

    def part(column: str | None) -> int:
        return _integer(cells.get(column)) if column else 0

    return datetime(
        part(parts.year),
        part(parts.month),
        part(parts.day),
        part(parts.hour),
        part(parts.minute),
        part(parts.second),
    )


class MissingMarkers:
    """A source's missing-value markers, as text and (for numeric cells) as numbers."""

    def __init__(self, markers: Sequence[str]) -> None:
        self.text = frozenset(markers)
        self.numbers = {n: m for m in markers if (n := parse_number(m)) is not None}

    def marker(self, cell: Cell) -> str | None:
        if cell is None:
            return ""
        if isinstance(cell, str):
            return cell if cell in self.text else None
        if isinstance(cell, int | float) and not isinstance(cell, bool):
            return self.numbers.get(cell)
        return None


def describe_marker(marker: str) -> str:
    return "missing (empty)" if marker == "" else f"missing ({marker})"
