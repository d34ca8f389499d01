"""The simulated city (simulators/city.yaml) and the device fleet derived from it.

The file is strict: an unknown key or a bad value is an error naming its place. The fleet is
derived, not listed: each site becomes one or more devices with stable ids (`wn-xlh-inlet`,
`wn-xlh-c00017`, `fl-lc-honghe`, `aq-fhh`, `pk-mall`), and `scale_to` adds customer meters so
that a fleet of 100 000 devices is the same city with denser metering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from urbanpulse.db.devices import DeviceSpec
from urbanpulse.errors import ContractError
from urbanpulse.yamlfile import load_yaml_model

SiteId = str
Hourly = list[float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hourly(values: list[float]) -> list[float]:
    if len(values) != 24:
        raise ValueError(f"needs 24 hourly values (00..23), got {len(values)}")
    if any(v < 0 for v in values):
        raise ValueError("hourly values must not be negative")
    return values


class DayCurves(_Strict):
    weekday: Hourly
    weekend: Hourly

    _check = field_validator("weekday", "weekend")(_hourly)


class Dma(_Strict):
    id: SiteId = Field(pattern=r"^[a-z0-9-]{1,20}$")
    name: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    customers: int = Field(ge=1)
    mean_use_m3h: float = Field(gt=0)
    leakage: float = Field(ge=0, lt=0.9)
    pressure: float = Field(gt=0, le=2.5)
    headloss: float = Field(ge=0)
    district: str

    @property
    def zone(self) -> str:
        return f"DMA-{self.id.upper()}"


class Water(_Strict):
    demand: DayCurves
    customer_spread: float = Field(ge=0, le=2)
    hourly_noise: float = Field(ge=0, le=1)
    meter_noise: float = Field(ge=0, le=0.2)
    dmas: list[Dma] = Field(min_length=1)
    inlet_interval_s: int = Field(gt=0)
    customer_interval_s: int = Field(gt=0)


class StormFormula(_Strict):
    a1: float = Field(gt=0)
    c: float = Field(ge=0)
    b: float = Field(ge=0)
    b_exponent: float = 0.0
    n: float = Field(gt=0, lt=1.5)


class RainGauge(_Strict):
    id: SiteId = Field(pattern=r"^[a-z0-9-]{1,20}$")
    name: str
    zone: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    factor: float = Field(gt=0)


class FloodPoint(_Strict):
    id: SiteId = Field(pattern=r"^[a-z0-9-]{1,30}$")
    name: str
    gauge: SiteId
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    capacity: float = Field(gt=0, description="mm/h the drains take")
    gain: float = Field(gt=0, description="cm of ponding per mm of rain above capacity")
    drain: float = Field(gt=0, description="cm/h drained once rain is below capacity")
    carriageway: bool


class Flood(_Strict):
    storm_formula: StormFormula
    rain_gauges: list[RainGauge] = Field(min_length=1)
    points: list[FloodPoint]
    gauge_interval_s: int = Field(gt=0)
    point_interval_s: int = Field(gt=0)


class Station(_Strict):
    id: SiteId = Field(pattern=r"^[a-z0-9-]{1,20}$")
    name: str
    zone: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    pm25: float = Field(gt=0)
    co_unit: Literal["mg/m3", "ug/m3"] = "mg/m3"


class Air(_Strict):
    stations: list[Station] = Field(min_length=1)
    interval_s: int = Field(gt=0)


class Holiday(_Strict):
    profiles: list[str]
    curve: Hourly

    _check = field_validator("curve")(_hourly)


class CarPark(_Strict):
    id: SiteId = Field(pattern=r"^[a-z0-9-]{1,20}$")
    name: str
    zone: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    capacity: int = Field(gt=0)
    profile: str


class Parking(_Strict):
    profiles: dict[str, DayCurves]
    holiday: Holiday
    noise: float = Field(ge=0, le=0.5)
    car_parks: list[CarPark]
    interval_s: int = Field(gt=0)


class City(_Strict):
    timezone: str
    water: Water
    flood: Flood
    air: Air
    parking: Parking

    def model_post_init(self, _context: Any) -> None:
        gauges = {g.id for g in self.flood.rain_gauges}
        problems = [
            f"flood.points: {p.id}: unknown gauge {p.gauge!r} (known: {sorted(gauges)})"
            for p in self.flood.points
            if p.gauge not in gauges
        ]
        problems += [
            f"parking.car_parks: {c.id}: unknown profile {c.profile!r}"
            for c in self.parking.car_parks
            if c.profile not in self.parking.profiles
        ]
        problems += [
            f"parking.holiday.profiles: unknown profile {p!r}"
            for p in self.parking.holiday.profiles
            if p not in self.parking.profiles
        ]
        if problems:
            raise ValueError("; ".join(problems))


def load_city(path: Path | None = None) -> City:
    """Read and validate a city file (default: the packaged Yongchuan city)."""
    if path is None:
        text = resources.files("simulators").joinpath("city.yaml").read_text("utf-8")
        where = "simulators/city.yaml"
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ContractError(f"cannot read city file {path}: {exc}") from exc
        where = str(path)
    return load_yaml_model(City, text, where, "city file")


# --- the fleet ---------------------------------------------------------------------------------

Kind = Literal[
    "inlet_meter", "customer_meter", "rain_gauge", "depth_gauge", "aq_station", "car_park"
]


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device: what is provisioned, plus which site of the city it models."""

    device_id: str
    domain: str
    kind: Kind
    name: str
    zone: str
    lat: float
    lon: float
    interval_s: int
    site: str  # DMA, gauge, point, station or car park id in the city file
    capacity: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> DeviceSpec:
        return DeviceSpec(
            device_id=self.device_id,
            domain=self.domain,
            kind=self.kind,
            name=self.name,
            lat=round(self.lat, 6),
            lon=round(self.lon, 6),
            zone=self.zone,
            capacity=self.capacity,
            report_interval_s=self.interval_s,
            attributes=self.attributes,
        )


def customer_id(dma: str, index: int) -> str:
    return f"wn-{dma}-c{index:05d}"


def customers_per_dma(city: City, scale_to: int | None) -> dict[str, int]:
    """Customer meters in each DMA; with `scale_to`, enough to make the fleet that large."""
    counts = {d.id: d.customers for d in city.water.dmas}
    if scale_to is None:
        return counts
    others = fleet_size(city) - sum(counts.values())
    wanted = scale_to - others
    base = sum(counts.values())
    if wanted <= base:
        return counts
    factor = wanted / base
    scaled = {k: math.floor(v * factor) for k, v in counts.items()}
    # hand out the remainder one by one, in file order, so the total is exact
    for dma in list(scaled)[: wanted - sum(scaled.values())]:
        scaled[dma] += 1
    return scaled


def fleet_size(city: City) -> int:
    """Devices of the unscaled fleet."""
    return (
        sum(d.customers + 1 for d in city.water.dmas)
        + len(city.flood.rain_gauges)
        + len(city.flood.points)
        + len(city.air.stations)
        + len(city.parking.car_parks)
    )


def _jitter(lat: float, lon: float, index: int) -> tuple[float, float]:
    """Customer meters spread on a small spiral around their DMA's centre (≈ within 800 m)."""
    angle = index * 2.399963  # golden angle
    radius = 0.0072 * math.sqrt((index % 997) / 997)
    return lat + radius * math.sin(angle), lon + radius * math.cos(angle)


def build_fleet(city: City, scale_to: int | None = None) -> list[SimDevice]:
    """Every device of the city, in a stable order (the same for the same file and scale)."""
    w, f, a, p = city.water, city.flood, city.air, city.parking
    devices: list[SimDevice] = []
    counts = customers_per_dma(city, scale_to)
    for dma in w.dmas:
        attrs = {"dma": dma.zone, "district": dma.district}
        devices.append(
            SimDevice(
                f"wn-{dma.id}-inlet",
                "water",
                "inlet_meter",
                f"{dma.name}DMA进水表",
                dma.zone,
                dma.lat,
                dma.lon,
                w.inlet_interval_s,
                dma.id,
                attributes={**attrs, "role": "inlet"},
            )
        )
        for i in range(1, counts[dma.id] + 1):
            lat, lon = _jitter(dma.lat, dma.lon, i)
            devices.append(
                SimDevice(
                    customer_id(dma.id, i),
                    "water",
                    "customer_meter",
                    f"{dma.name}用户水表{i:05d}",
                    dma.zone,
                    lat,
                    lon,
                    w.customer_interval_s,
                    dma.id,
                    attributes={**attrs, "role": "customer"},
                )
            )
    gauge_zone = {g.id: g.zone for g in f.rain_gauges}
    for g in f.rain_gauges:
        devices.append(
            SimDevice(
                f"fl-{g.id}-rain",
                "flood",
                "rain_gauge",
                g.name,
                g.zone,
                g.lat,
                g.lon,
                f.gauge_interval_s,
                g.id,
            )
        )
    for pt in f.points:
        devices.append(
            SimDevice(
                f"fl-{pt.id}",
                "flood",
                "depth_gauge",
                pt.name,
                gauge_zone[pt.gauge],
                pt.lat,
                pt.lon,
                f.point_interval_s,
                pt.id,
                attributes={
                    "carriageway": pt.carriageway,
                    "rain_gauge": f"fl-{pt.gauge}-rain",
                    "drain_capacity_mm_h": pt.capacity,
                },
            )
        )
    for st in a.stations:
        devices.append(
            SimDevice(
                f"aq-{st.id}",
                "air",
                "aq_station",
                st.name,
                st.zone,
                st.lat,
                st.lon,
                a.interval_s,
                st.id,
            )
        )
    for cp in p.car_parks:
        devices.append(
            SimDevice(
                f"pk-{cp.id}",
                "parking",
                "car_park",
                cp.name,
                cp.zone,
                cp.lat,
                cp.lon,
                p.interval_s,
                cp.id,
                capacity=float(cp.capacity),
                attributes={"profile": cp.profile},
            )
        )
    return devices
