"""Air quality index per HJ 633-2012, from breakpoint tables held as versioned data.

`load_standard()` reads urbanpulse/rulefmt/standards/<name>.yaml; `compute()` turns one set of
pollutant concentrations into IAQI per pollutant, the AQI, the primary and exceeding pollutants
and the level with its category and colour, for an hourly (real-time) or a daily report.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbanpulse.yamlfile import load_yaml_model

Report = Literal["hourly", "daily"]
POLLUTANTS = ("so2", "no2", "pm10", "co", "o3", "pm25")


class Level(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max: int | None
    level: str
    category: str
    en: str
    colour: str = Field(pattern=r"^#[0-9A-F]{6}$")


class AqiStandard(BaseModel):
    """One version of the AQI rules: breakpoints, which table serves which report, levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    standard: str
    version: int
    iaqi: list[int]
    breakpoints: dict[str, list[float]]
    hourly: dict[str, str]
    daily: dict[str, str]
    fallback: dict[str, str] = Field(default_factory=dict)
    levels: list[Level]
    rounding: Literal["ceil", "round"] = "ceil"

    @model_validator(mode="after")
    def _consistent(self) -> AqiStandard:
        problems = []
        for name, bps in self.breakpoints.items():
            if len(bps) < 2 or len(bps) > len(self.iaqi):
                problems.append(f"breakpoints.{name}: needs 2..{len(self.iaqi)} values")
            if any(b >= a for a, b in zip(bps[1:], bps, strict=False)):
                problems.append(f"breakpoints.{name}: must increase")
        for report in ("hourly", "daily"):
            for pollutant, table in getattr(self, report).items():
                if table not in self.breakpoints:
                    problems.append(f"{report}.{pollutant}: no table {table!r}")
        for src, dst in self.fallback.items():
            if src not in self.breakpoints or dst not in self.breakpoints:
                problems.append(f"fallback.{src}: unknown table")
        if self.levels[-1].max is not None:
            problems.append("levels: the last level must be open-ended (max: null)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def level_of(self, aqi: int) -> Level:
        return next(lv for lv in self.levels if lv.max is None or aqi <= lv.max)


def standards() -> list[str]:
    """The names of the AQI standards held as data (urbanpulse/rulefmt/standards/<name>.yaml)."""
    folder = resources.files("urbanpulse.rulefmt").joinpath("standards")
    return sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".yaml"))


@functools.cache  # read once: every AQI record of every pass uses it (the model is frozen)
def load_standard(name: str = "hj633-2012") -> AqiStandard:
    folder = resources.files("urbanpulse.rulefmt").joinpath("standards")
    text = folder.joinpath(f"{name}.yaml").read_text("utf-8")
    where = f"urbanpulse/rulefmt/standards/{name}.yaml"
    return load_yaml_model(AqiStandard, text, where, "AQI standard")


def iaqi(
    std: AqiStandard, table: str, concentration: float, fallback: float | None = None
) -> int | None:
    """The IAQI of one concentration by one table (HJ 633 formula 1), rounded as configured.

    Above a table's last breakpoint: a table with a fallback (SO2 1 h, O3 8 h) defers to the
    other table with the `fallback` concentration (None if that is not given); a full table
    is capped at the index's top (500)."""
    if concentration < 0 or math.isnan(concentration):
        return None
    bps = std.breakpoints[table]
    if concentration > bps[-1]:
        if table in std.fallback:
            if fallback is None:
                return None
            return iaqi(std, std.fallback[table], fallback)
        return std.iaqi[len(bps) - 1]
    for i in range(1, len(bps)):
        if concentration <= bps[i]:
            lo, hi = bps[i - 1], bps[i]
            i_lo, i_hi = std.iaqi[i - 1], std.iaqi[i]
            value = (i_hi - i_lo) / (hi - lo) * (concentration - lo) + i_lo
            # guard against 100.00000000001 from binary arithmetic before rounding up
            value = round(value, 9)
            return math.ceil(value) if std.rounding == "ceil" else round(value)
    return None  # unreachable: concentration <= bps[-1]


@dataclass(frozen=True, slots=True)
class AqiResult:
    aqi: int | None
    iaqi: dict[str, int]
    primary: tuple[str, ...]  # 首要污染物: largest IAQI, only when AQI > 50
    exceeding: tuple[str, ...]  # 超标污染物: IAQI > 100
    level: Level | None


def compute(
    std: AqiStandard,
    concentrations: dict[str, float],
    report: Report = "hourly",
    fallbacks: dict[str, float] | None = None,
) -> AqiResult:
    """AQI of one station for one hour (or day). Missing pollutants are left out; an AQI over
    no pollutant at all is None. `fallbacks` holds the concentrations a fallback table needs
    (SO2 24 h mean for an hourly report, O3 daily maximum 1 h for a daily one)."""
    tables = std.hourly if report == "hourly" else std.daily
    fallbacks = fallbacks or {}
    values: dict[str, int] = {}
    for pollutant, conc in concentrations.items():
        if pollutant not in tables:
            continue
        got = iaqi(std, tables[pollutant], conc, fallbacks.get(pollutant))
        if got is not None:
            values[pollutant] = got
    if not values:
        return AqiResult(None, {}, (), (), None)
    top = max(values.values())
    primary = tuple(p for p in POLLUTANTS if values.get(p) == top) if top > 50 else ()
    exceeding = tuple(p for p in POLLUTANTS if values.get(p, 0) > 100)
    return AqiResult(top, values, primary, exceeding, std.level_of(top))
