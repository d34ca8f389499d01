"""Rules applied to series: pure functions from readings to evaluations and alert states.

The runner (database), `rules test` (series written in a test file) and backtests all call
these; only where the readings come from differs.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import UTC, datetime

from urbanpulse.alerts.lifecycle import Evaluation, Signal, State, Status, Transition, run
from urbanpulse.rulefmt.model import OPS, Rule


@dataclass(frozen=True, slots=True)
class EntitySeries:
    """One entity's readings of a rule's metric, sorted by measurement time (epoch seconds)."""

    entity: str
    times: list[float]
    values: list[float]
    interval_s: float | None = None  # the device's declared reporting interval (no_data)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    transitions: list[Transition] = field(default_factory=list)


def _window(series: EntitySeries, t: float, width: float) -> list[float]:
    lo = bisect.bisect_right(series.times, t - width)
    hi = bisect.bisect_right(series.times, t)
    return series.values[lo:hi]


def _compare(rule: Rule, value: float) -> Signal:
    cond = rule.condition
    assert cond is not None  # threshold and rate rules have one (checked on load)
    if OPS[cond.op](value, cond.value):
        return Signal.BREACH
    if cond.clear is None:
        return Signal.CLEAR
    below = cond.op in (">", ">=")
    back = value <= cond.clear if below else value >= cond.clear
    return Signal.CLEAR if back else Signal.BAND


def signal_at(rule: Rule, series: EntitySeries, t: float) -> Evaluation:
    """The evaluation of one entity at measurement time t."""
    when = datetime.fromtimestamp(t, UTC)
    if rule.type == "no_data":
        i = bisect.bisect_right(series.times, t)
        if i == 0 or not series.interval_s:
            return Evaluation(when, Signal.UNKNOWN)
        silent = t - series.times[i - 1]
        limit = rule.missing_intervals * series.interval_s
        return Evaluation(when, Signal.BREACH if silent > limit else Signal.CLEAR, silent)
    values = _window(series, t, rule.window)
    if rule.type == "stuck":
        if len(values) < rule.min_points:
            return Evaluation(when, Signal.UNKNOWN)
        spread = max(values) - min(values)
        flat = spread <= rule.tolerance
        return Evaluation(when, Signal.BREACH if flat else Signal.CLEAR, values[-1])
    if rule.type == "rate":
        lo = bisect.bisect_right(series.times, t - rule.window)
        hi = bisect.bisect_right(series.times, t)
        if hi - lo < 2:
            return Evaluation(when, Signal.UNKNOWN)
        dt_h = (series.times[hi - 1] - series.times[lo]) / 3600
        per_hour = (series.values[hi - 1] - series.values[lo]) / dt_h
        signal = _compare(rule, per_hour)
        low = rule.min_level is not None and series.values[hi - 1] < rule.min_level
        if signal is Signal.BREACH and low:
            signal = Signal.BAND  # rising fast, but not yet high enough to matter
        return Evaluation(when, signal, per_hour)
    if rule.aggregate == "count":
        return Evaluation(when, _compare(rule, float(len(values))), float(len(values)))
    if not values:
        return Evaluation(when, Signal.UNKNOWN)
    agg = {
        "last": values[-1],
        "mean": sum(values) / len(values),
        "max": max(values),
        "min": min(values),
    }[rule.aggregate]
    return Evaluation(when, _compare(rule, agg), agg)


def evaluate(
    rule: Rule,
    series: list[EntitySeries],
    ticks: list[float],
    states: dict[str, State] | None = None,
) -> dict[str, Outcome]:
    """Every entity's state after the evaluation ticks (in time order), with its transitions."""
    states = states or {}
    out: dict[str, Outcome] = {}
    for s in series:
        evaluations = [signal_at(rule, s, t) for t in ticks]
        state, transitions = run(evaluations, rule.timing, states.get(s.entity))
        out[s.entity] = Outcome(state, transitions)
    return out


def firing(outcomes: dict[str, Outcome]) -> list[str]:
    return sorted(e for e, o in outcomes.items() if o.state.status is Status.FIRING)
