"""From a dataset's files to the sorted messages a replay publishes, counting every row.

No broker and no database: reading, converting and selecting only. Each row either becomes
messages, or is counted with a reason (`Skip`); each published value that is odd but real
carries a `Quirk` so the summary can say what ingest will do with it.
"""

from __future__ import annotations

import fnmatch
import gc
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulators.replay.cells import (
    MissingMarkers,
    describe_marker,
    parse_number,
    read_wall_time,
    text_of,
)
from simulators.replay.errors import DatasetError
from simulators.replay.localtime import LocalClock, Resolved
from simulators.replay.mapping import Device, Mapping, MetricSpec, SourceSpec
from simulators.replay.model import Entry, Message, Quirk, Skip, Value
from simulators.replay.readers import Cell, Row, read_join, read_table
from simulators.replay.report import Tally
from simulators.replay.template import sanitise_id
from urbanpulse.contract.registry import Registry
from urbanpulse.db.devices import DeviceSpec

STRIPPED = "rows with stray whitespace (tab, spaces), stripped"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which part of a dataset to replay. Naive bounds are local times of each source's zone."""

    since: datetime | None = None
    until: datetime | None = None  # exclusive
    devices: tuple[str, ...] = ()  # fnmatch patterns of device ids
    limit: int | None = None  # messages, the earliest first


@dataclass
class Plan:
    """Everything a replay will publish, in measurement-time order."""

    mapping: Mapping
    folder: Path
    messages: list[Message]
    devices: dict[str, DeviceSpec]
    tally: Tally


@dataclass
class _SourceReader:
    """Converts the rows of one source; shared state: the tally and the devices seen."""

    mapping: Mapping
    source: SourceSpec
    devices: tuple[Device, ...]
    registry: Registry
    selection: Selection
    tally: Tally
    specs: dict[str, tuple[str, DeviceSpec]]  # device id -> (raw id, spec)
    matched: set[str]
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        tspec = self.source.time
        self.zone = tspec.zone
        self.clock = LocalClock(self.zone, tspec.ambiguous, tspec.nonexistent)
        self.missing = MissingMarkers(self.source.missing)
        self.since_ms = self._bound(self.selection.since)
        self.until_ms = self._bound(self.selection.until)
        self.factors = {
            name: self._factor(name, m) for dev in self.devices for name, m in dev.metrics
        }
        t = self.source.time
        self.time_columns = (
            (t.column,) if t.column else tuple(c for c in t.parts.model_dump().values() if c)  # type: ignore[union-attr]
        )
        # raw time cells -> instant: the same times recur across devices and files; a time in
        # a repeated hour is never cached, its reading depends on what came before it
        self._times: dict[tuple[Cell, ...], Resolved] = {}
        self._ids: dict[tuple[int, tuple[Cell, ...]], tuple[str, str]] = {}

    def _bound(self, bound: datetime | None) -> int | None:
        if bound is None:
            return None
        return round(self.clock.localize(bound).timestamp() * 1000)

    def _factor(self, name: str, m: MetricSpec) -> tuple[float, float, float]:
        metric = self.registry.metrics[name]
        factor = metric.to_canonical(1.0, m.unit)
        assert factor is not None  # checked when the mapping was loaded
        return factor, metric.min, metric.max

    def in_window(self, ts_ms: int) -> bool:
        return (self.since_ms is None or ts_ms >= self.since_ms) and (
            self.until_ms is None or ts_ms < self.until_ms
        )

    def wanted(self, device_id: str) -> bool:
        patterns = self.selection.devices
        if not patterns:
            return True
        hit = [p for p in patterns if fnmatch.fnmatchcase(device_id, p)]
        self.matched.update(hit)
        return bool(hit)

    # -- columns --------------------------------------------------------------------------------
    def check_columns(self, file: str, columns: Sequence[str]) -> None:
        needed: set[str] = set()
        t = self.source.time
        if t.column:
            needed.add(t.column)
        if t.parts:
            needed.update(c for c in t.parts.model_dump().values() if c)
        if self.source.profile:
            needed.add(self.source.profile.offsets)
        if self.source.join:
            needed.add(self.source.join.match)
        for dev in self.devices:
            needed |= dev.columns
        prefix = f"{self.source.join.name}." if self.source.join else None
        missing = sorted(
            c for c in needed if c not in columns and not (prefix and c.startswith(prefix))
        )
        if missing:
            raise DatasetError(
                f"{file}: columns {missing} named in {self.mapping.path} are not in the file "
                f"(it has {list(columns)})"
            )
        extra = [c for c in columns if c not in needed and c not in self.source.ignore_columns]
        if extra:
            self.tally.unmapped[file] = extra

    # -- devices --------------------------------------------------------------------------------
    def device_spec(self, dev: Device, device_id: str, text: dict[str, str]) -> DeviceSpec:
        """The registry entry of a device, from the first row that publishes for it."""

        def opt(t: Any) -> str | None:
            return (t.render(text) or None) if t is not None else None

        def num(t: Any) -> float | None:
            value = opt(t)
            return float(value) if value is not None else None

        attributes: dict[str, Any] = {k: v for k, t in dev.attributes if (v := t.render(text))}
        attributes["dataset"] = self.mapping.name
        try:
            spec = DeviceSpec(
                device_id=device_id,
                domain=dev.spec.domain,
                kind=dev.spec.kind,
                name=dev.name.render(text) or device_id,
                zone=opt(dev.zone),
                lat=num(dev.lat),
                lon=num(dev.lon),
                capacity=num(dev.capacity),
                report_interval_s=dev.spec.report_interval_s,
                attributes=attributes,
            )
        except (ValidationError, ValueError) as exc:
            raise DatasetError(
                f"{self.mapping.path}: device {device_id!r} cannot be provisioned: {exc}"
            ) from exc
        return spec

    # -- values ---------------------------------------------------------------------------------
    def value(
        self, name: str, m: MetricSpec, cell: Cell, cells: dict[str, Cell], where: str
    ) -> tuple[Value, tuple[Quirk, ...]] | None:
        """A cell as a value to publish with its quirks, or None (counted) for a missing one."""
        if type(cell) is str:
            if cell in self.missing.text:
                self.tally.values_skipped[(describe_marker(cell), name)] += 1
                return None
            number = parse_number(cell)
        else:
            marker = self.missing.marker(cell)
            if marker is not None:
                self.tally.values_skipped[(describe_marker(marker), name)] += 1
                return None
            number = parse_number(cell)
        if number is None:
            self._quirk(Quirk.NOT_A_NUMBER, name, where, cell)
            return text_of(cell), (Quirk.NOT_A_NUMBER,)
        factor, lo, hi = self.factors[name]
        if (
            (m.ceiling is None or number < m.ceiling)
            and m.upper_bound_column is None
            and lo <= number * factor <= hi
        ):
            return number, ()  # the common case
        quirks: list[Quirk] = []
        if m.ceiling is not None and number >= m.ceiling:
            quirks.append(Quirk.AT_CEILING)
            self._quirk(Quirk.AT_CEILING, name, where, cell)
        if m.upper_bound_column is not None:
            bound = parse_number(cells.get(m.upper_bound_column))
            if bound is not None and number > bound:
                quirks.append(Quirk.ABOVE_BOUND)
                self._quirk(Quirk.ABOVE_BOUND, name, where, f"{cell} > {bound}")
        if not lo <= number * factor <= hi:
            quirks.append(Quirk.OUT_OF_RANGE)
            self._quirk(Quirk.OUT_OF_RANGE, name, where, cell)
        return number, tuple(quirks)

    def _quirk(self, quirk: Quirk, metric: str, where: str, cell: Any) -> None:
        self.tally.example(f"{quirk}:{metric}", f"{where} ({cell})")

    # -- rows -----------------------------------------------------------------------------------
    def row(self, file: str, row: Row, join: dict[str, dict[str, Cell]] | None) -> None:
        where = f"{file}:{row.line}"
        if row.error is not None:
            self.tally.skip_row(Skip.BAD_ROW, f"{where} ({row.error})")
            return
        if row.stripped:
            self.tally.converted[STRIPPED] += 1
            self.tally.example(STRIPPED, where)
        cells = row.cells
        if self.source.join is not None and join is not None:
            extra = join.get(text_of(cells.get(self.source.join.match)))
            if extra is not None:
                cells = {**cells, **extra}
        records: list[tuple[Device, str, str]] = []
        for n, dev in enumerate(self.devices):
            id_key = (n, tuple(map(cells.get, dev.id.columns)))
            known = self._ids.get(id_key)
            if known is None:
                raw = {c: text_of(cells.get(c)) for c in dev.id.columns}
                # where the id comes from: two different sources of one id are an error
                origin = f"{dev.id.text} with " + ", ".join(f"{c}={v!r}" for c, v in raw.items())
                known = self._ids[id_key] = (sanitise_id(dev.id.render(raw)), origin)
            device_id, origin = known
            if not device_id:
                self.tally.skip_row(Skip.NO_DEVICE, f"{where} (id {dev.id.text!r} is empty)")
                continue
            records.append((dev, device_id, origin))
        if not records:
            return
        time_key = tuple(map(cells.get, self.time_columns))
        resolved = self._times.get(time_key)
        if resolved is None:
            try:
                wall = read_wall_time(cells, self.source.time)
            except (ValueError, TypeError, OverflowError) as exc:
                self.tally.skip_row(Skip.BAD_TIME, f"{where} ({exc})")
                return
            resolved = self.clock.to_utc(wall, records[0][1])
            if resolved.note is None:
                self._times[time_key] = resolved
        if resolved.instant is None:
            assert resolved.skip is not None
            self.tally.skip_row(resolved.skip, f"{where} ({'/'.join(map(text_of, time_key))})")
            return
        ts_ms = round(resolved.instant.timestamp() * 1000)
        if self.source.profile is None and not self.in_window(ts_ms):
            self.tally.filtered["rows outside the window"] += 1
            return
        if resolved.note is not None:
            self.tally.converted[str(resolved.note)] += 1
            self.tally.example(str(resolved.note), where)
        for dev, device_id, origin in records:
            if not self.wanted(device_id):
                self.tally.filtered["records of other devices"] += 1
                continue
            if self.source.profile is None:
                entries = self.values_record(dev, cells, ts_ms, where)
            else:
                entries = self.profile_record(dev, cells, ts_ms, where)
            if entries:
                self._register(dev, device_id, origin, cells)
                self.add_messages(dev, device_id, entries)

    def _register(self, dev: Device, device_id: str, origin: str, cells: dict[str, Cell]) -> None:
        known = self.specs.get(device_id)
        if known is None:
            text = {c: text_of(cells.get(c)) for c in dev.columns}
            self.specs[device_id] = (origin, self.device_spec(dev, device_id, text))
        elif known[0] != origin:
            raise DatasetError(
                f"{self.mapping.path}: device id {device_id!r} is made from both "
                f"{known[0]!r} and {origin!r}; make the id templates tell them apart"
            )

    def values_record(
        self, dev: Device, cells: dict[str, Cell], ts_ms: int, where: str
    ) -> list[Entry]:
        entries: list[Entry] = []
        for name, m in dev.metrics:
            got = self.value(name, m, cells.get(m.column), cells, where)
            if got is not None:
                entries.append(Entry(ts_ms, name, got[0], m.unit, got[1]))
        return entries

    def profile_record(
        self, dev: Device, cells: dict[str, Cell], start_ms: int, where: str
    ) -> list[Entry]:
        profile = self.source.profile
        assert profile is not None
        try:
            offsets = _json_list(cells.get(profile.offsets), profile.offsets)
            times = [start_ms + round(float(o) * profile.offset_ms) for o in offsets]
            series = {
                name: _json_list(cells.get(m.column), m.column, len(offsets))
                for name, m in dev.metrics
            }
        except (ValueError, TypeError) as exc:
            self.tally.skip_row(Skip.BAD_ROW, f"{where} ({exc})")
            return []
        entries: list[Entry] = []
        outside = 0
        for i, ts_ms in enumerate(times):
            if not self.in_window(ts_ms):
                outside += 1
                continue
            for name, m in dev.metrics:
                raw = series[name][i]
                cell: Cell = raw if isinstance(raw, int | float | str) or raw is None else str(raw)
                got = self.value(name, m, cell, cells, f"{where}[{i}]")
                if got is not None:
                    entries.append(Entry(ts_ms, name, got[0], m.unit, got[1]))
        if outside:
            self.tally.filtered["profile points outside the window"] += outside
        entries.sort(key=lambda e: e.ts_ms)
        return entries

    def add_messages(self, dev: Device, device_id: str, entries: list[Entry]) -> None:
        zone = self.zone
        if self.source.payload.form == "values":
            self.messages.append(
                Message(entries[0].ts_ms, device_id, dev.spec.domain, False, tuple(entries), zone)
            )
            return
        size = self.source.payload.max_readings
        for k in range(0, len(entries), size):
            chunk = tuple(entries[k : k + size])
            self.messages.append(
                Message(chunk[-1].ts_ms, device_id, dev.spec.domain, True, chunk, zone)
            )


def _json_list(cell: Cell, column: str, length: int | None = None) -> list[Any]:
    try:
        value = json.loads(text_of(cell))
    except ValueError:
        raise ValueError(f"{column} is not a JSON array") from None
    if not isinstance(value, list):
        raise ValueError(f"{column} is not a JSON array")
    if length is not None and len(value) != length:
        raise ValueError(f"{column} has {len(value)} values for {length} times")
    return value


def source_files(folder: Path, source: SourceSpec) -> list[Path]:
    files = sorted(p for p in folder.glob(source.files) if p.is_file())
    if not files:
        raise DatasetError(f"no file matches {source.files!r} in {folder}")
    return files


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector while building a million small acyclic objects.

    Each generation-2 pass walks every live object; with a full dataset held in memory those
    passes took about 40 % of the build. Nothing here makes reference cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_plan(
    mapping: Mapping,
    folder: Path,
    selection: Selection,
    registry: Registry,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> Plan:
    """Read every file of the mapping and produce the messages to publish, sorted by time."""
    if not folder.is_dir():
        raise DatasetError(
            f"dataset folder {folder} is missing; set --data-dir or URBANPULSE_DATASETS "
            "to the folder that holds it"
        )
    tally = Tally(mapping.name)
    specs: dict[str, tuple[str, DeviceSpec]] = {}
    matched: set[str] = set()
    messages: list[Message] = []
    with _without_cyclic_gc():
        for source, devices in mapping.sources():
            reader = _SourceReader(
                mapping, source, devices, registry, selection, tally, specs, matched
            )
            join = read_join(folder, source.join) if source.join else None
            for path in source_files(folder, source):
                name = str(path.relative_to(folder))
                progress(f"reading {name}")
                table = read_table(path, source.format)
                rows = 0
                try:
                    reader.check_columns(name, table.columns)
                    for row in table.rows:
                        rows += 1
                        reader.row(name, row, join)
                finally:
                    table.close()
                tally.files[name] = rows
            messages.extend(reader.messages)
    unmatched = [p for p in selection.devices if p not in matched]
    if unmatched:
        known = ", ".join(sorted(specs)[:10]) or "none in the window"
        tally.notes.append(f"--devices {', '.join(unmatched)} matched no device (e.g. {known})")
    # stable: equal times keep file order, files keep the mapping's order
    messages.sort(key=lambda m: m.due_ms)
    if selection.limit is not None and len(messages) > selection.limit:
        tally.filtered["messages after --limit"] += len(messages) - selection.limit
        del messages[selection.limit :]
    wanted = {m.device for m in messages}
    return Plan(
        mapping,
        folder,
        messages,
        {d: spec for d, (_, spec) in sorted(specs.items()) if d in wanted},
        tally,
    )


def shift_to_now(messages: Iterable[Message], now: datetime) -> int:
    """Milliseconds to add so the last reading lands at `now`, in whole minutes (never after)."""
    last = max((m.due_ms for m in messages), default=None)
    if last is None:
        return 0
    delta = round(now.astimezone(UTC).timestamp() * 1000) - last
    return (delta // 60_000) * 60_000
