"""`urbanpulse rules test`: rule unit tests written as input series and expected alerts.

A test file names the rule files it tests and lists cases. Each case gives series (one value
per `interval` from `start`; `_` for a missing reading) and what must be firing (and pending)
at given offsets. Evaluation runs every `interval`, as the runner would.

    rule_files: [../catalogue/flood.yaml]
    tests:
      - name: a storm ponds one point above 15 cm, and it drains
        start: 2026-06-01T16:00:00+08:00
        interval: 1m
        series:
          - {entity: fl-a, metric: depth, values: "0 5 16 18 17 11 8"}
        alerts:
          - {at: 2m, rule: flood.ponding_15cm, firing: [fl-a]}
          - {at: 6m, rule: flood.ponding_15cm, firing: []}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rules.evaluate import EntitySeries, evaluate, firing
from urbanpulse.alerts.lifecycle import Status
from urbanpulse.contract.registry import Registry
from urbanpulse.durations import Duration
from urbanpulse.errors import ContractError
from urbanpulse.rulefmt.model import Rule, load_rule_files
from urbanpulse.yamlfile import load_yaml_model

MISSING = "_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSeries(_Strict):
    entity: str
    metric: str
    values: str  # space-separated numbers, `_` for a missing reading
    interval_s: float | None = None  # declared reporting interval (no_data rules)

    def points(self, start: float, step: float) -> tuple[list[float], list[float]]:
        times: list[float] = []
        values: list[float] = []
        for i, word in enumerate(self.values.split()):
            if word == MISSING:
                continue
            try:
                values.append(float(word))
            except ValueError:
                raise ContractError(f"{self.entity}: {word!r} is not a number or _") from None
            times.append(start + i * step)
        return times, values


class Expected(_Strict):
    at: Duration
    rule: str
    firing: list[str]
    pending: list[str] | None = None


class Case(_Strict):
    name: str
    start: datetime
    interval: Duration = Field(60.0, gt=0)
    series: list[InputSeries]
    alerts: list[Expected] = Field(min_length=1)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a timezone, e.g. 2026-06-01T16:00:00+08:00")
        return value


class TestFile(_Strict):
    rule_files: list[str] = Field(min_length=1)
    tests: list[Case] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Failure:
    file: str
    case: str
    message: str


def run_case(case: Case, rules: dict[str, Rule]) -> list[str]:
    """Problems of one case (empty: it passed)."""
    problems: list[str] = []
    start = case.start.timestamp()
    for exp in case.alerts:
        rule = rules.get(exp.rule)
        if rule is None:
            problems.append(f"at {exp.at:g} s: no rule {exp.rule!r} in the rule files")
            continue
        series = []
        for s in case.series:
            if s.metric != rule.series.name:
                continue
            times, values = s.points(start, case.interval)
            series.append(EntitySeries(s.entity, times, values, s.interval_s))
        steps = int(exp.at // case.interval)
        ticks = [start + k * case.interval for k in range(steps + 1)]
        outcomes = evaluate(rule, series, ticks)
        got = firing(outcomes)
        if got != sorted(exp.firing):
            problems.append(
                f"at +{exp.at:g} s {exp.rule}: firing {got}, expected {sorted(exp.firing)}"
            )
        if exp.pending is not None:
            pending = sorted(e for e, o in outcomes.items() if o.state.status is Status.PENDING)
            if pending != sorted(exp.pending):
                want = sorted(exp.pending)
                problems.append(f"at +{exp.at:g} s {exp.rule}: pending {pending}, expected {want}")
    return problems


def run_test_files(paths: list[Path], registry: Registry) -> tuple[int, list[Failure]]:
    """Run every case of the files; returns (cases run, failures)."""
    cases = 0
    failures: list[Failure] = []
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ContractError(f"cannot read {path}: {exc}") from exc
        spec = load_yaml_model(TestFile, text, str(path), "rule test file")
        rule_paths = [(path.parent / f).resolve() for f in spec.rule_files]
        rules = {r.id: r for r in load_rule_files(rule_paths, registry)}
        for case in spec.tests:
            cases += 1
            failures.extend(Failure(str(path), case.name, p) for p in run_case(case, rules))
    return cases, failures
