"""Rule files: strict YAML under urbanpulse/rulefmt/catalogue/, every problem reported at file:line.

An alerting rule reads one metric of a set of devices, reduces each device's readings over a
window of measurement time to one number, and compares it with a threshold (with a separate
clear threshold for hysteresis). `for` and `keep_firing_for` delay firing and resolving.
Types: `threshold` (an aggregate over the window), `rate` (change per hour over the window),
`stuck` (a flat line over the window), `no_data` (silent for `missing_intervals` of the
device's declared reporting interval).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from urbanpulse.alerts.lifecycle import Timing
from urbanpulse.contract.model import Reason
from urbanpulse.contract.registry import Registry
from urbanpulse.durations import Duration
from urbanpulse.errors import ContractError
from urbanpulse.rulefmt.kpis import Kpi
from urbanpulse.rulefmt.records import (
    AqiRecord,
    PondingRecord,
    Record,
    Title,
    WarningRecord,
    WaterBalanceRecord,
)
from urbanpulse.yamlfile import load_yaml_model

# The plan's 牵头单位 that own sensor-measurable targets (plan-thresholds.md, section 3).
DEPARTMENTS = (
    "区住房城乡建委",
    "区水利局",
    "区生态环境局",
    "区城市管理局",
    "区应急局",
    "区交通局",
    "区公安局",
    "区新城建管委",
    "区规划自然资源局",
    "区卫健委",
    "运维中心",  # the platform's own operations team: device health
)

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Series(_Strict):
    """What a rule reads: a metric of devices (readings), a recorded series (`recorded`), or
    the messages of devices quarantined for some reasons (`quarantine`, dated by arrival: a
    rejected message has no measurement time to trust). Each quarantined message counts 1."""

    metric: str | None = None
    recorded: str | None = None  # the id of a recording rule
    quarantine: list[Reason] | None = None  # quarantine reasons, e.g. [out_of_range]
    kinds: list[str] | None = None  # device kinds; None: every device with the metric
    where: dict[str, str | int | float | bool] = Field(default_factory=dict)  # attributes

    @model_validator(mode="after")
    def _one_source(self) -> Series:
        given = [x for x in (self.metric, self.recorded, self.quarantine) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of metric (readings), recorded (a record id) or quarantine "
                "(reasons)"
            )
        if self.metric is None and (self.kinds is not None or self.where):
            raise ValueError("kinds and where select the devices of a metric")
        return self

    @property
    def name(self) -> str:
        """The series name rule tests give inputs under (`quarantine` for quarantine rules)."""
        return self.metric or self.recorded or "quarantine"


class Condition(_Strict):
    op: Literal[">", ">=", "<", "<="]
    value: float
    clear: float | None = None  # hysteresis: resolve only once back beyond this

    @model_validator(mode="after")
    def _clear_side(self) -> Condition:
        if self.clear is None:
            return self
        if self.op in (">", ">=") and self.clear > self.value:
            raise ValueError(f"clear {self.clear} must not be above the threshold {self.value}")
        if self.op in ("<", "<=") and self.clear < self.value:
            raise ValueError(f"clear {self.clear} must not be below the threshold {self.value}")
        return self


class Implements(_Strict):
    clause: str = Field(min_length=1)  # the plan clause, e.g. 一、(三)
    standard: str | None = None  # the national standard, e.g. CJJ 92-2016


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    title: Title
    type: Literal["threshold", "rate", "stuck", "no_data"]
    series: Series
    # count: readings (or quarantined messages) in the window, 0 when there are none
    aggregate: Literal["last", "mean", "max", "min", "count"] = "last"
    window: Duration = Field(300.0, gt=0)
    condition: Condition | None = None
    tolerance: float = Field(0.0, ge=0)  # stuck: max − min at most this is "flat"
    # rate: a breach also needs the latest value at least this (a rise from 0 to 4 cm of
    # water is no flood, however fast)
    min_level: float | None = None
    min_points: int = Field(3, ge=2)  # stuck: readings needed in the window
    missing_intervals: float = Field(3.0, gt=0)  # no_data: silent this many intervals
    # no_data: measurement time (a gap in the data) or arrival time (nothing is coming in now,
    # even if a backlog later fills the gap)
    clock: Literal["measurement", "arrival"] = "measurement"
    for_: Duration = Field(0.0, alias="for")
    keep_firing_for: Duration = 0.0
    flap_window: Duration = 0.0
    severity: Literal["info", "warning", "major", "critical"]
    owner: str
    labels: dict[str, str] = Field(default_factory=dict)
    implements: Implements

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("owner")
    @classmethod
    def _known_owner(cls, value: str) -> str:
        if value not in DEPARTMENTS:
            raise ValueError(
                f"{value!r} is not a department of the plan ({', '.join(DEPARTMENTS)})"
            )
        return value

    @model_validator(mode="after")
    def _needs_condition(self) -> Rule:
        if self.type in ("threshold", "rate") and self.condition is None:
            raise ValueError(f"a {self.type} rule needs a condition")
        if self.type in ("stuck", "no_data") and self.condition is not None:
            raise ValueError(f"a {self.type} rule has no condition")
        if self.min_level is not None and self.type != "rate":
            raise ValueError("min_level is for rate rules")
        if self.clock == "arrival" and self.type != "no_data":
            raise ValueError("clock: arrival is for no_data rules")
        return self

    @property
    def timing(self) -> Timing:
        return Timing(
            for_s=self.for_, keep_firing_for_s=self.keep_firing_for, flap_window_s=self.flap_window
        )


class RuleFile(_Strict):
    records: list[Record] = Field(default_factory=list)  # recording rules, computed first
    rules: list[Rule] = Field(default_factory=list)  # alerting rules
    kpis: list[Kpi] = Field(default_factory=list)  # plan KPIs scored from the records

    @model_validator(mode="after")
    def _not_empty(self) -> RuleFile:
        if not self.records and not self.rules and not self.kpis:
            raise ValueError("a rule file needs records, rules or kpis")
        return self


@dataclass(frozen=True)
class RuleSet:
    """The records (in dependency order, as written) and alerting rules of some files."""

    records: list[Record] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    kpis: list[Kpi] = field(default_factory=list)


def catalogue_files() -> list[Path]:
    """The packaged rule catalogue (urbanpulse/rulefmt/catalogue/*.yaml)."""
    return sorted((Path(__file__).parent / "catalogue").glob("*.yaml"))


def rule_test_files() -> list[Path]:
    """The packaged rule unit tests (urbanpulse/rulefmt/tests/*_test.yaml)."""
    return sorted((Path(__file__).parent / "tests").glob("*_test.yaml"))


def load_rule_files(paths: list[Path], registry: Registry) -> list[Rule]:
    """Every alerting rule of the files, checked (see load_rules)."""
    return load_rules(paths, registry).rules


def load_rules(paths: list[Path], registry: Registry) -> RuleSet:
    """Every record and rule of the files, checked; ContractError lists every problem with
    file:line. A rule may read a record of any of the files; a record may read only records
    written before it."""
    rules: list[Rule] = []
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    rule_paths: dict[str, Path] = {}
    kpis: list[Kpi] = []
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        try:
            parsed = load_yaml_model(RuleFile, text, str(path), "rule file")
        except ContractError as exc:
            problems.extend(line.strip() for line in str(exc).splitlines()[1:] or [str(exc)])
            continue
        for rec in parsed.records:
            if rec.id in seen:
                problems.append(f"{path}: {rec.id}: id already used in {seen[rec.id]}")
            if isinstance(rec, WarningRecord):
                source = next((r for r in records if r.id == rec.aqi), None)
                if not isinstance(source, AqiRecord) or source.report != "rolling_24h":
                    problems.append(
                        f"{path}: {rec.id}: aqi {rec.aqi!r} must be a rolling_24h aqi record "
                        "written before it"
                    )
            if isinstance(rec, WaterBalanceRecord) and rec.days is not None:
                source = next((r for r in records if r.id == rec.days), None)
                if not isinstance(source, WaterBalanceRecord) or source.period != "day":
                    problems.append(
                        f"{path}: {rec.id}: days {rec.days!r} must be a day water_balance record "
                        "written before it"
                    )
            seen[rec.id] = str(path)
            records.append(rec)
        for rule in parsed.rules:
            metric = rule.series.metric
            if metric is not None and metric not in registry.metrics:
                problems.append(f"{path}: {rule.id}: unknown metric {metric!r}")
            if rule.id in seen:
                problems.append(f"{path}: {rule.id}: id already used in {seen[rule.id]}")
            if metric is None and rule.type in ("no_data", "stuck", "rate"):
                problems.append(f"{path}: {rule.id}: a {rule.type} rule reads device readings")
            seen[rule.id] = str(path)
            rule_paths[rule.id] = path
            rules.append(rule)
        for kpi in parsed.kpis:
            if kpi.id in seen:
                problems.append(f"{path}: {kpi.id}: id already used in {seen[kpi.id]}")
            if kpi.owner not in DEPARTMENTS:
                problems.append(f"{path}: {kpi.id}: {kpi.owner!r} is not a department of the plan")
            seen[kpi.id] = str(path)
            rule_paths[kpi.id] = path
            kpis.append(kpi)
    series = {r.id for r in records if not isinstance(r, PondingRecord)}
    for rule in rules:
        wanted = rule.series.recorded
        if wanted is not None and wanted not in series:
            problems.append(
                f"{rule_paths[rule.id]}: {rule.id}: no record {wanted!r} in the files given "
                "(add the file that records it)"
            )
    all_records = {r.id for r in records}
    for kpi in kpis:
        if kpi.source not in all_records:
            problems.append(
                f"{rule_paths[kpi.id]}: {kpi.id}: no record {kpi.source!r} in the files given"
            )
    if problems:
        raise ContractError("invalid rules:\n  " + "\n  ".join(problems))
    return RuleSet(records, rules, kpis)
