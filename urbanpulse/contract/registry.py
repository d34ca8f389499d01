"""The metric registry: canonical metric names, units, conversions and plausible ranges."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from urbanpulse.errors import ContractError


def normalise_unit(unit: str) -> str:
    """Fold the spellings devices use for one unit into one key (µg/m³ → ug/m3)."""
    return (
        unit.strip()
        .lower()
        .replace(" ", "")
        .replace("µ", "u")  # micro sign
        .replace("μ", "u")  # greek mu
        .replace("³", "3")
        .replace("²", "2")
    )


@dataclass(frozen=True, slots=True)
class Metric:
    """One canonical metric of the contract."""

    name: str
    domain: str
    unit: str
    description: str
    min: float
    max: float
    factors: dict[str, float]  # normalised unit spelling -> factor to the canonical unit

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """The value in the canonical unit, or None when the unit is not accepted."""
        if unit is None:
            return value
        factor = self.factors.get(normalise_unit(unit))
        if factor is None:
            return None
        return value * factor

    def in_range(self, value: float) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True, slots=True)
class Registry:
    """All domains and metrics, loaded once from metrics.yaml."""

    version: int
    domains: dict[str, str]
    metrics: dict[str, Metric]

    def metric(self, name: str) -> Metric | None:
        return self.metrics.get(name)

    def metrics_of(self, domain: str) -> list[Metric]:
        return [m for m in self.metrics.values() if m.domain == domain]


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ContractError(f"{where}: expected a finite number, got {raw!r}")
    return float(raw)


def parse_registry(doc: Any, source: str) -> Registry:
    """Validate a registry document strictly; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ContractError(f"{source}: expected a mapping at the top")
    unknown = set(doc) - {"version", "domains", "metrics"}
    if unknown:
        problems.append(f"unknown top-level keys {sorted(unknown)}")
    domains = doc.get("domains") or {}
    metrics: dict[str, Metric] = {}
    for name, spec in (doc.get("metrics") or {}).items():
        where = f"{source}: metric {name!r}"
        try:
            if not isinstance(spec, dict):
                raise ContractError(f"{where}: expected a mapping")
            extra = set(spec) - {"domain", "unit", "description", "min", "max", "units"}
            if extra:
                raise ContractError(f"{where}: unknown keys {sorted(extra)}")
            if spec.get("domain") not in domains:
                raise ContractError(f"{where}: domain {spec.get('domain')!r} is not declared")
            unit = str(spec["unit"])
            factors = {
                normalise_unit(str(u)): _number(f, f"{where} unit {u}")
                for u, f in (spec.get("units") or {}).items()
            }
            if factors.get(normalise_unit(unit)) != 1.0:
                raise ContractError(
                    f"{where}: canonical unit {unit!r} must be listed with factor 1"
                )
            lo, hi = _number(spec["min"], f"{where} min"), _number(spec["max"], f"{where} max")
            if lo > hi:
                raise ContractError(f"{where}: min {lo} is above max {hi}")
            metrics[name] = Metric(
                name, str(spec["domain"]), unit, str(spec.get("description", "")), lo, hi, factors
            )
        except KeyError as exc:
            problems.append(f"{where}: missing key {exc}")
        except ContractError as exc:
            problems.append(str(exc))
    if problems:
        raise ContractError("invalid metric registry:\n  " + "\n  ".join(problems))
    return Registry(
        int(doc.get("version", 1)), {str(k): str(v) for k, v in domains.items()}, metrics
    )


def load_registry(path: Path | None = None) -> Registry:
    """Load a registry file; without a path, the packaged contract."""
    if path is not None:
        return parse_registry(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    return default_registry()


@cache
def default_registry() -> Registry:
    text = resources.files("urbanpulse.contract").joinpath("metrics.yaml").read_text("utf-8")
    return parse_registry(yaml.safe_load(text), "urbanpulse/contract/metrics.yaml")
