"""The record models (strict YAML), the row a record writes, and what they share."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from urbanpulse.durations import Duration
from urbanpulse.rulefmt import aqi as hj633

HOUR = 3600.0
CITY = "全区"  # the whole district, beside each station, DMA or car park
ID_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Title(_Strict):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class _Record(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    title: Title
    unit: str = ""
    source: str = Field("", description="the clause or standard the computation follows")
    # how long after a period ends to wait for slow meters before computing it once
    delay: Duration = Field(0.0, ge=0)

    @property
    def reads(self) -> str | None:
        """The record this one is computed from, if any: it is computed no further than that."""
        return None


class AqiRecord(_Record):
    kind: Literal["aqi"]
    report: Literal["hourly", "rolling_24h", "daily"]
    standard: str = "hj633-2012"
    kinds: list[str] = Field(default_factory=lambda: ["aq_station"])
    # also the whole city (全区), from the stations' mean concentrations
    city: bool = False
    # GB 3095-2012 §7 data validity: a 24 h mean needs 20 hourly means, an 8 h mean 6
    min_hours_24h: int = Field(20, ge=1, le=24)
    min_hours_8h: int = Field(6, ge=1, le=8)

    @field_validator("standard")
    @classmethod
    def _known_standard(cls, value: str) -> str:
        known = hj633.standards()
        if value not in known:
            raise ValueError(
                f"no AQI standard {value!r} in urbanpulse/rulefmt/standards ({', '.join(known)})"
            )
        return value


class WarningLevel(_Strict):
    value: int = Field(ge=1)
    zh: str
    en: str
    above_200_h: float = Field(0, ge=0)  # hours in a row of rolling 24 h AQI > 200
    above_300_h: float = Field(0, ge=0)  # of which with AQI > 300
    reaches: float | None = None  # or: AQI at or above this, at once


class WarningRecord(_Record):
    kind: Literal["pollution_warning"]
    aqi: str = Field(pattern=ID_PATTERN)  # the rolling 24 h AQI record it reads
    levels: list[WarningLevel] = Field(min_length=1)

    @property
    def reads(self) -> str | None:
        return self.aqi


class Corrections(_Strict):
    """CJJ 92-2016 (2018 revision) §5.3 corrections of the leakage rate, in the DMA's terms."""

    residential_share: float = Field(0.0, ge=0, le=1)  # r: household-metered residential share
    pipe_length_km: float | None = Field(None, ge=0)  # L: pipes DN75 and larger (None: no R2)
    outlet_pressure_mpa: float | None = Field(None, ge=0)  # annual mean (None: no R3)
    frost_depth_m: float = Field(0.0, ge=0)

    def terms(self, supply_m3_per_year: float) -> dict[str, float]:
        """R1..R4 in percentage points."""
        r1 = 0.08 * self.residential_share * 100
        r2 = 0.0
        if self.pipe_length_km is not None and supply_m3_per_year > 0:
            a = self.pipe_length_km / (supply_m3_per_year / 10000)  # km per 10⁴ m³
            r2 = min(3.0, max(-3.0, 0.99 * (a - 0.0693) * 100))
        p = self.outlet_pressure_mpa
        r3 = 0.0 if p is None or p <= 0.35 else 0.5 if p <= 0.55 else 1.0 if p <= 0.75 else 2.0
        r4 = 1.0 if self.frost_depth_m > 1.4 else 0.0
        return {"r1": r1, "r2": r2, "r3": r3, "r4": r4}


class WaterBalanceRecord(_Record):
    kind: Literal["water_balance"]
    period: Literal["day", "month"]
    value: Literal["gross", "assessed"]  # R_WL or R_BL
    inlet_kinds: list[str] = Field(default_factory=lambda: ["inlet_meter"])
    customer_kinds: list[str] = Field(default_factory=lambda: ["customer_meter"])
    district_attribute: str | None = "district"
    corrections: Corrections = Corrections()
    zones: dict[str, Corrections] = Field(default_factory=dict)  # per-DMA corrections
    min_coverage: float = Field(0.9, gt=0, le=1)
    days: str | None = Field(None, pattern=ID_PATTERN)  # month: the day record it sums

    @model_validator(mode="after")
    def _month_sums_days(self) -> WaterBalanceRecord:
        if (self.period == "month") != (self.days is not None):
            raise ValueError("a month record sums a day record: give `days` for months only")
        return self

    def corrections_of(self, zone: str) -> Corrections:
        return self.zones.get(zone, self.corrections)

    @property
    def reads(self) -> str | None:
        return self.days


class NightFlowRecord(_Record):
    kind: Literal["night_flow"]
    value: Literal["mnf", "change_pct"]
    start: time = time(2, 0)
    end: time = time(5, 0)
    bin: Duration = Field(900.0, gt=0)
    moving: Duration = Field(3600.0, gt=0)
    baseline_days: int = Field(7, ge=1, le=60)
    min_baseline_days: int = Field(1, ge=1)
    inlet_kinds: list[str] = Field(default_factory=lambda: ["inlet_meter"])

    @model_validator(mode="after")
    def _window(self) -> NightFlowRecord:
        if self.end <= self.start:
            raise ValueError("end must be after start (the night window lies within one day)")
        if self.moving < self.bin or self.moving % self.bin:
            raise ValueError("moving must be a whole number of bins")
        if HOUR % self.bin or (self.start.minute * 60) % self.bin:
            raise ValueError("bin must divide an hour and start must fall on a bin")
        if self.min_baseline_days > self.baseline_days:
            raise ValueError("min_baseline_days must not exceed baseline_days")
        return self

    @property
    def window_s(self) -> float:
        return float(
            (self.end.hour - self.start.hour) * 3600 + (self.end.minute - self.start.minute) * 60
        )


class OccupancyRecord(_Record):
    kind: Literal["occupancy"]
    by: Literal["car_park", "zone"]
    period: Duration = Field(3600.0, gt=0)
    kinds: list[str] = Field(default_factory=lambda: ["car_park"])

    @field_validator("period")
    @classmethod
    def _divides_an_hour(cls, value: float) -> float:
        if value > HOUR or HOUR % value:
            raise ValueError("period must divide an hour (e.g. 15m, 30m, 1h)")
        return value


class PondingRecord(_Record):
    """Not a series: writes the table ponding_events."""

    kind: Literal["ponding_events"]
    threshold_cm: float = Field(15.0, gt=0)
    kinds: list[str] = Field(default_factory=lambda: ["depth_gauge"])


Record = Annotated[
    AqiRecord
    | WarningRecord
    | WaterBalanceRecord
    | NightFlowRecord
    | OccupancyRecord
    | PondingRecord,
    Field(discriminator="kind"),
]
