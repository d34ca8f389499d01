"""Dataset mappings: strict YAML that says how a dataset's files become devices and readings.

A mapping names its files (glob), their format, the time column(s) with an IANA zone and a DST
policy, missing-value markers, and for each device template its id, metadata and metrics (column,
unit as the registry spells it). Unknown keys are errors; every problem is reported at once as
`file:line: location: message`. The mappings of the shipped datasets live in `mappings/`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators.replay.errors import MappingError
from simulators.replay.localtime import Ambiguous, Nonexistent
from simulators.replay.template import Template, parse_template
from urbanpulse.contract.registry import Registry, normalise_unit

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvFormat(_Strict):
    """Delimited text. Without a header row, `columns` names the fields in order."""

    type: Literal["csv"]
    header: bool = True
    columns: list[str] | None = None
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8-sig"

    @model_validator(mode="after")
    def _columns_without_header(self) -> CsvFormat:
        if not self.header and not self.columns:
            raise ValueError("a csv without a header row needs `columns`")
        return self


class XlsxFormat(_Strict):
    """An Excel sheet (first sheet by default) with a header row."""

    type: Literal["xlsx"]
    sheet: str | None = None
    header_row: int = Field(1, ge=1)


class TimeParts(_Strict):
    """The time spread over several columns (year, month, day, hour, ...)."""

    year: str
    month: str
    day: str
    hour: str | None = None
    minute: str | None = None
    second: str | None = None


class TimeSpec(_Strict):
    """Where the measurement time is, how to read it, and its zone and DST policy."""

    column: str | None = None
    parts: TimeParts | None = None
    format: str = Field("iso", description="`iso` or a strptime pattern such as %d/%m/%Y %H:%M")
    timezone: str
    ambiguous: Ambiguous = Ambiguous.FILE_ORDER
    nonexistent: Nonexistent = Nonexistent.SKIP

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TimeSpec:
        if (self.column is None) == (self.parts is None):
            raise ValueError("give exactly one of `column` or `parts`")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ProfileSpec(_Strict):
    """Row expansion: each metric column holds a JSON array, `offsets` the times from the row's."""

    offsets: str
    offset_unit: Literal["s", "ms", "min"] = "s"

    @property
    def offset_ms(self) -> int:
        return {"s": 1000, "ms": 1, "min": 60_000}[self.offset_unit]


class JoinSpec(_Strict):
    """A metadata file joined to each row; its columns are read as `<name>.<column>`."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    file: str
    key: str = Field(description="column of the joined file")
    match: str = Field(description="column of the data rows holding the same key")
    format: CsvFormat = CsvFormat(type="csv")


class MetricSpec(_Strict):
    """One metric of a device: the column it comes from and the unit it is in there."""

    column: str
    unit: str
    ceiling: float | None = Field(None, description="the instrument's upper limit, if any")
    upper_bound_column: str | None = Field(
        None, description="a column this value should not exceed (counted, published as-is)"
    )


class DeviceTemplate(_Strict):
    """A device per distinct rendered `id`; `each` repeats the entry with {each} substituted."""

    each: list[str] | None = None
    id: str
    domain: str
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)
    zone: str | None = None
    lat: str | None = None
    lon: str | None = None
    capacity: str | None = None
    report_interval_s: int = Field(300, gt=0)
    attributes: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, MetricSpec] = Field(min_length=1)


class PayloadSpec(_Strict):
    """`values`: one message per device and time; `batch`: a profile in chunks of readings."""

    form: Literal["values", "batch"] = "values"
    # 2000 readings of ~80 bytes stay well inside ingest's default 256 KiB payload limit
    max_readings: int = Field(500, ge=1, le=2000)


class SourceSpec(_Strict):
    files: str = Field(min_length=1, description="glob relative to the dataset folder")
    format: Annotated[CsvFormat | XlsxFormat, Field(discriminator="type")]
    time: TimeSpec
    missing: list[str] = Field(default_factory=lambda: [""])
    profile: ProfileSpec | None = None
    join: JoinSpec | None = None
    devices: list[DeviceTemplate] = Field(min_length=1)
    payload: PayloadSpec = PayloadSpec()
    ignore_columns: list[str] = Field(
        default_factory=list, description="columns deliberately not replayed"
    )


class Attribution(_Strict):
    """Where the data comes from and on what terms (shown by --list, cited in the docs)."""

    publisher: str
    url: str
    licence: str = Field(max_length=40, description="short name, e.g. CC BY 4.0")
    licence_url: str | None = None
    citation: str | None = None


class MappingSpec(_Strict):
    name: str
    title: str
    folder: str = Field(description="folder of the dataset, relative to the datasets directory")
    attribution: Attribution
    sources: list[SourceSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("name must be lower-case letters, digits and '-'")
        return value


# --- compiled form -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """A device template after `each` expansion, with its templates parsed."""

    spec: DeviceTemplate
    id: Template
    name: Template
    zone: Template | None
    lat: Template | None
    lon: Template | None
    capacity: Template | None
    attributes: tuple[tuple[str, Template], ...]
    metrics: tuple[tuple[str, MetricSpec], ...]

    @property
    def columns(self) -> set[str]:
        """Every column this device reads."""
        cols: set[str] = set()
        for t in (self.id, self.name, self.zone, self.lat, self.lon, self.capacity):
            if t is not None:
                cols.update(t.columns)
        for _, t in self.attributes:
            cols.update(t.columns)
        for _, m in self.metrics:
            cols.add(m.column)
            if m.upper_bound_column:
                cols.add(m.upper_bound_column)
        return cols


@dataclass(frozen=True, slots=True)
class Mapping:
    """A validated mapping, ready to read a dataset."""

    spec: MappingSpec
    path: str  # where it was loaded from, for messages
    devices: tuple[tuple[Device, ...], ...]  # per source

    @property
    def name(self) -> str:
        return self.spec.name

    def sources(self) -> Iterator[tuple[SourceSpec, tuple[Device, ...]]]:
        yield from zip(self.spec.sources, self.devices, strict=True)


# --- loading with locations ----------------------------------------------------------------------

Loc = tuple[str | int, ...]


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the YAML key or item at `loc`, or of its deepest existing parent."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                return line
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(node: yaml.Node | None, path: Loc = ()) -> list[tuple[Loc, str, int]]:
    """Keys given twice in one mapping: YAML loaders silently keep the last one."""
    found: list[tuple[Loc, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first:
                found.append(
                    ((*path, key.value), f"duplicate key (first at line {first[key.value]})", line)
                )
            else:
                first[key.value] = line
            found += _duplicate_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, (*path, i))
    return found


def _where(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _clean_loc(loc: Sequence[str | int]) -> Loc:
    """Pydantic's location without the tag of a discriminated union (format.csv.header)."""
    out: list[str | int] = []
    for part in loc:
        if out and out[-1] == "format" and part in {"csv", "xlsx"}:
            continue
        out.append(part)
    return tuple(out)


def _substitute(obj: Any, value: str) -> Any:
    if isinstance(obj, str):
        return obj.replace("{each}", value)
    if isinstance(obj, dict):
        return {k: _substitute(v, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, value) for v in obj]
    return obj


def _check_metrics(dev: DeviceTemplate, base: Loc, registry: Registry) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    if dev.domain not in registry.domains:
        known = ", ".join(registry.domains)
        problems.append(((*base, "domain"), f"unknown domain {dev.domain!r} (known: {known})"))
    for metric_name, m in dev.metrics.items():
        loc: Loc = (*base, "metrics", metric_name)
        metric = registry.metric(metric_name)
        if metric is None:
            problems.append((loc, f"unknown metric {metric_name!r} (see metrics.yaml)"))
            continue
        if metric.domain != dev.domain:
            problems.append(
                (loc, f"{metric_name} is a {metric.domain} metric, the device is {dev.domain}")
            )
        if normalise_unit(m.unit) not in metric.factors:
            problems.append(
                (
                    (*loc, "unit"),
                    f"unit {m.unit!r} is not accepted for {metric_name} "
                    f"(accepted: {', '.join(metric.factors)})",
                )
            )
    return problems


def _compile_device(dev: DeviceTemplate, base: Loc) -> tuple[Device | None, list[tuple[Loc, str]]]:
    problems: list[tuple[Loc, str]] = []
    templates: dict[str, Template | None] = {}
    for key in ("id", "name", "zone", "lat", "lon", "capacity"):
        text = getattr(dev, key)
        try:
            templates[key] = parse_template(text) if text is not None else None
        except ValueError as exc:
            problems.append(((*base, key), str(exc)))
            templates[key] = None
    attrs: list[tuple[str, Template]] = []
    for k, text in dev.attributes.items():
        try:
            attrs.append((k, parse_template(text)))
        except ValueError as exc:
            problems.append(((*base, "attributes", k), str(exc)))
    ident, name = templates["id"], templates["name"]
    if ident is None or name is None or problems:
        return None, problems
    device = Device(
        dev,
        ident,
        name,
        templates["zone"],
        templates["lat"],
        templates["lon"],
        templates["capacity"],
        tuple(attrs),
        tuple(dev.metrics.items()),
    )
    return device, problems


def _compile(
    spec: MappingSpec, registry: Registry
) -> tuple[tuple[tuple[Device, ...], ...], list[tuple[Loc, str]]]:
    """Expand `each`, parse templates, check metrics, units and domains against the registry."""
    problems: list[tuple[Loc, str]] = []
    per_source: list[tuple[Device, ...]] = []
    for si, source in enumerate(spec.sources):
        devices: list[Device] = []
        for di, template in enumerate(source.devices):
            base: Loc = ("sources", si, "devices", di)
            problems += _check_metrics(template, base, registry)
            expanded = [
                DeviceTemplate.model_validate(_substitute(template.model_dump(), value))
                for value in template.each or ()
            ]
            for dev in expanded or [template]:
                compiled, found = _compile_device(dev, base)
                problems += found
                if compiled is not None:
                    devices.append(compiled)
        if source.profile and source.payload.form != "batch":
            problems.append(
                (("sources", si, "payload", "form"), "a profile source publishes `batch`")
            )
        per_source.append(tuple(devices))
    # the same problem once, even when `each` repeated it
    return tuple(per_source), list(dict.fromkeys(problems))


def parse_mapping(text: str, path: str, registry: Registry) -> Mapping:
    """Validate a mapping document; raises MappingError listing every problem with its line."""
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise MappingError(f"{path}:1: expected a mapping at the top")
    duplicates = _duplicate_keys(node)
    if duplicates:
        lines = [f"{path}:{line}: {_where(loc)}: {msg}" for loc, msg, line in duplicates]
        raise MappingError(
            f"invalid replay mapping, {len(lines)} problem(s):\n  " + "\n  ".join(lines)
        )
    try:
        spec = MappingSpec.model_validate(doc)
    except ValidationError as exc:
        problems: list[tuple[Loc, str]] = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            problems.append((loc, msg))
        raise MappingError(_report(path, node, problems)) from None
    devices, problems = _compile(spec, registry)
    if problems:
        raise MappingError(_report(path, node, problems))
    return Mapping(spec, path, devices)


def _report(path: str, node: yaml.Node | None, problems: Sequence[tuple[Loc, str]]) -> str:
    lines = [f"{path}:{_line_of(node, loc) or '?'}: {_where(loc)}: {msg}" for loc, msg in problems]
    return f"invalid replay mapping, {len(lines)} problem(s):\n  " + "\n  ".join(lines)


# --- finding mappings ----------------------------------------------------------------------------


def packaged_names() -> list[str]:
    """Names of the mappings shipped with UrbanPulse."""
    folder = resources.files("simulators.replay").joinpath("mappings")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_mapping(name_or_path: str, registry: Registry) -> Mapping:
    """A shipped mapping by name (`beijing-aq`), or a user's mapping file by path."""
    if name_or_path in packaged_names():
        res = (
            resources.files("simulators.replay")
            .joinpath("mappings")
            .joinpath(f"{name_or_path}.yaml")
        )
        return parse_mapping(
            res.read_text("utf-8"), f"simulators/replay/mappings/{name_or_path}.yaml", registry
        )
    path = Path(name_or_path)
    if not path.is_file():
        raise MappingError(
            f"no mapping {name_or_path!r}: not a shipped mapping "
            f"({', '.join(packaged_names())}) and not a file"
        )
    return parse_mapping(path.read_text("utf-8"), str(path), registry)
