"""A first simulator of the four domains: smooth diurnal physics on an accelerated clock.

Measurement times are real (the moment of publishing); the *shape* of the day runs faster
(`speed` simulated seconds per real second) so that a one-minute demo shows a day's swing.
Every payload form of the contract is used: several-metrics objects (water inlets, air),
single readings (customer meters), SenML (flood) and batches (parking).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import yaml

# Yongchuan demand peaks at 07:30 and 19:30; the night minimum is around 03:30.
_DAY = 86400.0
LEAK_FRACTION = 0.08  # background leakage share of DMA inflow, below the 10 % plan target


def fleet() -> list[dict[str, Any]]:
    """The demo fleet as provisioned (simulators/fleet.yaml)."""
    text = resources.files("simulators").joinpath("fleet.yaml").read_text("utf-8")
    devices: list[dict[str, Any]] = yaml.safe_load(text)["devices"]
    return devices


def _diurnal(hour: float) -> float:
    """Relative water demand over the day (≈0.3 at night, ≈1.6 at the peaks)."""
    morning = math.exp(-((hour - 7.5) ** 2) / 2.0)
    evening = math.exp(-((hour - 19.5) ** 2) / 3.0)
    return 0.3 + 1.3 * morning + 1.0 * evening + 0.4 * math.exp(-((hour - 12.5) ** 2) / 4.0)


@dataclass
class Feed:
    """Generates (topic, payload) pairs for the fleet at a given real and simulated time."""

    devices: list[dict[str, Any]]
    prefix: str = "yc/v1"
    seed: int = 7
    speed: float = 600.0  # simulated seconds per real second
    rng: random.Random = field(init=False)
    volumes: dict[str, float] = field(init=False, default_factory=dict)
    depth: dict[str, float] = field(init=False, default_factory=dict)
    occupied: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - simulation, not cryptography
        for d in self.devices:
            if d["kind"] == "customer_meter":
                self.volumes[d["device_id"]] = 1000.0 + self.rng.random() * 500
            if d["kind"] == "depth_gauge":
                self.depth[d["device_id"]] = 0.0
            if d["kind"] == "car_park":
                self.occupied[d["device_id"]] = 0.3 * float(d.get("capacity") or 100)

    def topic(self, device: dict[str, Any]) -> str:
        return f"{self.prefix}/{device['domain']}/{device['device_id']}"

    def sim_hour(self, elapsed_s: float, start_hour: float) -> float:
        return (start_hour + elapsed_s * self.speed / 3600.0) % 24.0

    def rain_intensity(self, elapsed_s: float) -> float:
        """A storm in the middle of the run (mm/h), triangular hyetograph peaking at 80 mm/h."""
        sim_min = elapsed_s * self.speed / 60.0
        peak_at, half_width = 240.0, 90.0
        return max(0.0, 80.0 * (1 - abs(sim_min - peak_at) / half_width))

    def messages(
        self, now: datetime, elapsed_s: float, step_s: float, start_hour: float = 6.0
    ) -> list[tuple[str, bytes]]:
        hour = self.sim_hour(elapsed_s, start_hour)
        ts = int(now.timestamp() * 1000)
        sim_step_h = step_s * self.speed / 3600.0
        out: list[tuple[str, bytes]] = []
        demand = _diurnal(hour)
        zone_use: dict[str, float] = {}
        rain = self.rain_intensity(elapsed_s)
        for d in self.devices:
            dev, kind = d["device_id"], d["kind"]
            if kind == "customer_meter":
                use_m3h = 0.6 * demand * (0.8 + 0.4 * self.rng.random())
                self.volumes[dev] += use_m3h * sim_step_h
                zone_use[d["zone"]] = zone_use.get(d["zone"], 0.0) + use_m3h
                body: Any = {
                    "metric": "volume",
                    "value": round(self.volumes[dev], 4),
                    "unit": "m3",
                    "ts": ts,
                }
            elif kind == "inlet_meter":
                continue  # after the customers of its zone, below
            elif kind == "depth_gauge":
                capacity = 25.0  # mm/h the drains take away at this point
                level = self.depth[dev] + max(0.0, rain - capacity) * 0.35 * sim_step_h * 10
                level -= 12.0 * sim_step_h  # drain-down
                self.depth[dev] = max(0.0, level)
                body = [
                    {
                        "bn": f"urn:dev:yc:{dev}:",
                        "bt": ts / 1000.0,
                        "n": "depth",
                        "u": "cm",
                        "v": round(self.depth[dev] + self.rng.gauss(0, 0.2), 2),
                    }
                ]
            elif kind == "rain_gauge":
                body = {
                    "ts": ts,
                    "values": {
                        "rain_rate": round(rain, 2),
                        "rainfall": round(rain * sim_step_h, 3),
                    },
                }
            elif kind == "aq_station":
                base = 40 + 25 * math.cos((hour - 8) / 24 * 2 * math.pi)
                o3 = max(5.0, 60 + 80 * math.sin((hour - 9) / 24 * 2 * math.pi))
                body = {
                    "ts": ts,
                    "values": {
                        "pm25": round(base * (0.9 + 0.2 * self.rng.random()), 1),
                        "pm10": round(base * 1.6 * (0.9 + 0.2 * self.rng.random()), 1),
                        "so2": round(8 + 4 * self.rng.random(), 1),
                        "no2": round(25 + 20 * _diurnal(hour) / 1.6, 1),
                        "o3": round(o3, 1),
                        "co": {"value": round(700 + 300 * self.rng.random()), "unit": "ug/m3"},
                    },
                }
            elif kind == "car_park":
                cap = float(d.get("capacity") or 100)
                target = cap * min(0.97, 0.15 + 0.8 * math.exp(-((hour - 10) ** 2) / 18))
                cur = self.occupied[dev] + (target - self.occupied[dev]) * 0.3
                self.occupied[dev] = cur
                body = {
                    "readings": [
                        {"metric": "occupied", "value": round(cur), "ts": ts},
                        {"metric": "capacity", "value": cap, "ts": ts},
                    ]
                }
            else:
                continue
            out.append((self.topic(d), json.dumps(body, ensure_ascii=False).encode()))
        for d in self.devices:
            if d["kind"] == "inlet_meter":
                used = zone_use.get(d["zone"], 0.0)
                inflow_m3h = used / (1 - LEAK_FRACTION)
                body = {
                    "ts": ts,
                    "values": {
                        "flow": {"value": round(inflow_m3h / 3.6, 4), "unit": "L/s"},
                        "pressure": round(0.32 - 0.04 * demand / 1.6, 4),
                    },
                }
                out.append((self.topic(d), json.dumps(body).encode()))
        return out

    def faults(self, now: datetime) -> list[tuple[str, bytes]]:
        """Messages a broken field device would send; each must end in quarantine."""
        ts = int(now.timestamp() * 1000)
        return [
            (
                f"{self.prefix}/air/aq-unprovisioned",
                json.dumps({"metric": "pm25", "value": 50, "ts": ts}).encode(),
            ),
            (f"{self.prefix}/flood/fl-lc-honghe", b'{"metric": "depth", "value": 3,'),
            (
                f"{self.prefix}/parking/pk-school",
                json.dumps({"metric": "occupied", "value": -4, "ts": ts}).encode(),
            ),
        ]
