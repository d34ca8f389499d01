"""The physics of the four domains. Times are epoch seconds (UTC); shapes follow local time.

Each model answers "what does this device measure at time t" for the devices it owns. Where a
quantity must agree across processes (a DMA's inflow is the sum of its customers' use, rain is
the same for every point under a gauge) it is a pure function of (seed, t); where a series must
be autocorrelated (air, parking, ponding depth) the model keeps per-device state and is walked
in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from simulators import noise
from simulators.city import City, Dma, SimDevice, customer_id
from simulators.scenario import Burst, HolidayDay, Leakage, Scenario, Smog, Storm

HOUR = 3600.0
DAY = 86400.0


class LocalClock:
    """Local hour and day type of an instant (the city's timezone, holidays from the scenario)."""

    def __init__(self, tz: str, start: float, holidays: list[float]) -> None:
        self.tz = ZoneInfo(tz)
        # local midnight of each holiday, as local dates
        self.holidays = {self.date_of(start + at) for at in holidays}

    def date_of(self, t: float) -> str:
        return datetime.fromtimestamp(t, UTC).astimezone(self.tz).date().isoformat()

    @lru_cache(maxsize=4096)  # noqa: B019 - one clock per run, keyed by whole hours
    def _hour(self, hour_index: int) -> tuple[int, str]:
        local = datetime.fromtimestamp(hour_index * HOUR, UTC).astimezone(self.tz)
        date = local.date().isoformat()
        kind = (
            "holiday"
            if date in self.holidays
            else ("weekend" if local.weekday() >= 5 else "weekday")
        )
        return local.hour, kind

    def hour(self, t: float) -> tuple[int, str]:
        """(local hour 0..23, 'weekday' | 'weekend' | 'holiday') at t."""
        return self._hour(int(t // HOUR))

    def local_hours(self, t: float) -> float:
        """Local time of day in hours (0..24)."""
        local = datetime.fromtimestamp(t, UTC).astimezone(self.tz)
        return local.hour + local.minute / 60 + local.second / 3600


def curve_at(clock: LocalClock, t: float, curve_of: dict[str, list[float]]) -> float:
    """A 24-value hourly curve read at t, linear between hour centres (smooth across midnight)."""
    centre = t - HOUR / 2
    h0 = math.floor(centre / HOUR)
    frac = centre / HOUR - h0
    hour_a, kind_a = clock._hour(h0)
    hour_b, kind_b = clock._hour(h0 + 1)
    a = curve_of[kind_a][hour_a]
    b = curve_of[kind_b][hour_b]
    return a + (b - a) * frac


# --- water -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DmaState:
    dma: Dma
    bases: tuple[float, ...]  # every customer's mean use (m³/h), Σ = customers × mean_use
    keys: tuple[int, ...]
    mean_use: float  # Σ bases
    mean_p2: float  # mean of the squared demand pattern (for the mean pressure)


class WaterModel:
    """DMA inflow = Σ customer use + background leakage (pressure dependent) + bursts."""

    def __init__(
        self,
        city: City,
        scenario: Scenario,
        *,
        seed: int,
        start: float,
        counts: dict[str, int],
        clock: LocalClock,
    ) -> None:
        w = city.water
        self.w = w
        self.seed = seed
        self.start = start
        self.clock = clock
        patterns = {k: _normalised(getattr(w.demand, k)) for k in ("weekday", "weekend")}
        patterns["holiday"] = patterns["weekend"]
        self.pattern = patterns
        self.dmas: dict[str, _DmaState] = {}
        for dma in w.dmas:
            keys = tuple(noise.key(customer_id(dma.id, i)) for i in range(1, counts[dma.id] + 1))
            sigma = w.customer_spread
            raw = [math.exp(sigma * noise.gauss(seed, k, 0) - sigma * sigma / 2) for k in keys]
            scale = dma.mean_use_m3h * len(raw) / sum(raw)
            bases = tuple(r * scale for r in raw)
            mean_p2 = sum(v * v for v in patterns["weekday"]) / 24
            self.dmas[dma.id] = _DmaState(dma, bases, keys, sum(bases), mean_p2)
        self.bursts = scenario.of(Burst)
        self.leak_changes = sorted(scenario.of(Leakage), key=lambda e: e.at)
        self._hour_sum: dict[tuple[str, int], float] = {}
        self._factors: dict[tuple[str, int], list[float]] = {}
        self.volume: dict[str, tuple[float, float]] = {}  # customer → (t, m³)

    # demand pattern and its integral
    def p(self, t: float) -> float:
        return curve_at(self.clock, t, self.pattern)

    def p_integral(self, t0: float, t1: float) -> list[tuple[int, float]]:
        """∫p dt in hours over [t0, t1], split by whole hour: [(hour index, integral)]."""
        out: list[tuple[int, float]] = []
        a = t0
        while a < t1:
            b = min(t1, (math.floor(a / 1800) + 1) * 1800)  # p is linear between half hours
            area = (self.p(a) + self.p(b)) / 2 * (b - a) / HOUR
            h = int(a // HOUR)
            if out and out[-1][0] == h:
                out[-1] = (h, out[-1][1] + area)
            else:
                out.append((h, area))
            a = b
        return out

    def hourly_factor(self, k: int, hour_index: int) -> float:
        return max(0.05, 1.0 + self.w.hourly_noise * noise.gauss(self.seed, k, hour_index))

    def factors(self, dma_id: str, hour_index: int) -> list[float]:
        """Every customer's noise factor in that hour (cached: meters and inlet share them)."""
        got = self._factors.get((dma_id, hour_index))
        if got is None:
            got = [self.hourly_factor(k, hour_index) for k in self.dmas[dma_id].keys]
            stale = [key for key in self._factors if key[1] < hour_index - 2]
            for key in stale:
                del self._factors[key]
            self._factors[(dma_id, hour_index)] = got
            self._hour_sum[(dma_id, hour_index)] = sum(
                b * f for b, f in zip(self.dmas[dma_id].bases, got, strict=True)
            )
            if len(self._hour_sum) > 10000:
                self._hour_sum.clear()
        return got

    def consumption(self, dma_id: str, hour_index: int) -> float:
        """Σ_i base_i × noise_i(hour): the DMA's use at pattern 1 in that hour (m³/h)."""
        got = self._hour_sum.get((dma_id, hour_index))
        if got is None:
            self._factors.pop((dma_id, hour_index), None)
            self.factors(dma_id, hour_index)
            got = self._hour_sum[(dma_id, hour_index)]
        return got

    def leakage_share(self, dma_id: str, t: float) -> float:
        share = self.dmas[dma_id].dma.leakage
        for e in self.leak_changes:
            if e.dma == dma_id and self.start + e.at <= t:
                share = e.share
        return share

    def burst_flow(self, dma_id: str, t: float) -> float:
        return sum(
            e.flow_m3h
            for e in self.bursts
            if e.dma == dma_id
            and self.start + e.at <= t
            and (e.until is None or t < self.start + e.until)
        )

    def inlet(self, dev: SimDevice, t: float) -> dict[str, float]:
        """(flow m³/h, pressure MPa) at the DMA inlet."""
        st = self.dmas[dev.site]
        use = self.consumption(dev.site, int(t // HOUR)) * self.p(t)
        burst = self.burst_flow(dev.site, t)
        q_mean = st.mean_use
        dma = st.dma
        pressure = dma.pressure - dma.headloss * ((use + burst) / q_mean) ** 2
        mean_pressure = dma.pressure - dma.headloss * st.mean_p2
        share = self.leakage_share(dev.site, t)
        # FAVAD with N1 = 1: leakage proportional to pressure; mean share of inflow = `share`
        leak = share / (1 - share) * q_mean * max(0.0, pressure) / mean_pressure
        idx = int(t)
        flow = (use + leak + burst) * (
            1 + self.w.meter_noise * noise.gauss(self.seed, noise.key(dev.device_id), idx)
        )
        gauge = pressure + 0.002 * noise.gauss(self.seed, noise.key(dev.device_id) ^ 1, idx)
        return {"flow": max(0.0, flow), "pressure": max(0.0, gauge), "leak": leak, "use": use}

    def customer(self, dev: SimDevice, t: float) -> float:
        """The cumulative volume index (m³) of a customer meter at t."""
        index = int(dev.device_id.rsplit("c", 1)[1]) - 1
        base = self.dmas[dev.site].bases[index]
        last = self.volume.get(dev.device_id)
        if last is None:
            k = noise.key(dev.device_id)
            last = (self.start, 100.0 + 4000.0 * noise.unit(self.seed, k, 1))
        t0, v = last
        for hour_index, area in self.p_integral(t0, t):
            v += base * self.factors(dev.site, hour_index)[index] * area
        self.volume[dev.device_id] = (t, v)
        return v


def _normalised(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    return [v / mean for v in values]


# --- flooding ----------------------------------------------------------------------------------


class FloodModel:
    """Rain from design storms; ponding at low points as a bucket filled above drain capacity."""

    STEP = 10.0  # seconds of the rain and ponding integration

    def __init__(self, city: City, scenario: Scenario, seed: int, start: float) -> None:
        self.city = city
        self.seed = seed
        self.start = start
        self.storms = scenario.of(Storm)
        self.gauges = {g.id: g for g in city.flood.rain_gauges}
        self.points = {p.id: p for p in city.flood.points}
        self.depth: dict[str, tuple[float, float]] = {}

    def _chicago(self, storm: Storm, minutes: float) -> float:
        """Instantaneous intensity (mm/h) `minutes` into the storm (Chicago hyetograph)."""
        f = self.city.flood.storm_formula
        period = storm.return_period_y
        a = f.a1 * (1 + f.c * math.log10(period)) / 166.7  # mm/min
        b = f.b * period**f.b_exponent
        n = f.n
        total = storm.duration / 60
        r = storm.peak_ratio
        if minutes < 0 or minutes > total:
            return 0.0
        peak_at = r * total
        x = (peak_at - minutes) / r if minutes <= peak_at else (minutes - peak_at) / (1 - r)
        return float(60.0 * a * ((1 - n) * x + b) / (x + b) ** (1 + n))

    def intensity(self, gauge: str, t: float) -> float:
        """Rain intensity (mm/h) at a gauge at t."""
        g = self.gauges[gauge]
        total = 0.0
        for s in self.storms:
            if s.gauges is None or gauge in s.gauges:
                total += self._chicago(s, (t - self.start - s.at) / 60)
        return total * g.factor

    def rain(self, dev: SimDevice, t: float) -> dict[str, float]:
        """Rain (mm) over the gauge's reporting interval ending at t, and its mean rate (mm/h)."""
        interval = float(dev.interval_s)
        steps = max(1, int(interval / self.STEP))
        dt = interval / steps
        amount = sum(
            self.intensity(dev.site, t - interval + (i + 0.5) * dt) * dt / HOUR
            for i in range(steps)
        )
        return {"rainfall": amount, "rain_rate": amount * HOUR / interval}

    def ponding(self, dev: SimDevice, t: float) -> float:
        """Water depth (cm) at a low point, integrated from its previous report."""
        pt = self.points[dev.site]
        t0, depth = self.depth.get(dev.device_id, (self.start, 0.0))
        a = t0
        while a < t:
            b = min(t, a + self.STEP)
            i = self.intensity(pt.gauge, (a + b) / 2)
            dt_h = (b - a) / HOUR
            if i > pt.capacity:
                depth += pt.gain * (i - pt.capacity) * dt_h
            else:
                depth -= pt.drain * (1 - i / pt.capacity) * dt_h
            depth = max(0.0, depth)
            a = b
        self.depth[dev.device_id] = (t, depth)
        return depth


# --- air quality -------------------------------------------------------------------------------


class AirModel:
    """Hourly pollutant concentrations with seasons, diurnal cycles and smog episodes."""

    def __init__(
        self, city: City, scenario: Scenario, seed: int, start: float, clock: LocalClock
    ) -> None:
        self.stations = {s.id: s for s in city.air.stations}
        self.seed = seed
        self.start = start
        self.clock = clock
        self.smogs = scenario.of(Smog)
        self.state: dict[str, float] = {}

    def episode(self, station: str, t: float) -> float:
        """Weight 0..1 of smog episodes at t (ramp up, hold, ramp down)."""
        w = 0.0
        for e in self.smogs:
            if e.stations is not None and station not in e.stations:
                continue
            x = t - (self.start + e.at)
            if x < 0 or x > e.duration:
                continue
            up = min(1.0, x / e.ramp_up) if e.ramp_up else 1.0
            down = min(1.0, (e.duration - x) / e.ramp_down) if e.ramp_down else 1.0
            w = max(w, min(up, down))
        return w

    def peak(self, station: str, t: float) -> float:
        for e in self.smogs:
            if (
                e.stations is None or station in e.stations
            ) and self.start + e.at <= t <= self.start + e.at + e.duration:
                return e.peak_pm25
        return 0.0

    def sample(self, dev: SimDevice, t: float) -> dict[str, float]:
        st = self.stations[dev.site]
        rng = noise.stream(self.seed, f"{dev.device_id}:{int(t // HOUR)}")
        g = [rng.gauss(0, 1) for _ in range(7)]
        # AR(1) on the log of PM: persistence of weather; stationary sd 0.25
        phi, sd = 0.85, 0.25
        x = self.state.get(dev.device_id)
        x = sd * g[0] if x is None else phi * x + math.sqrt(1 - phi * phi) * sd * g[0]
        self.state[dev.device_id] = x
        local = datetime.fromtimestamp(t, UTC).astimezone(self.clock.tz)
        doy = local.timetuple().tm_yday
        h = local.hour + local.minute / 60
        season = 1 + 0.35 * math.cos(2 * math.pi * (doy - 15) / 365.25)
        diurnal = (
            1
            + 0.22 * math.cos(2 * math.pi * (h - 21) / 24)
            + 0.12 * math.exp(-(((h - 9) / 1.5) ** 2))
        )
        normal = st.pm25 * season * diurnal * math.exp(x - sd * sd / 2)
        w = self.episode(st.id, t)
        pm25 = (1 - w) * normal + w * self.peak(st.id, t) * math.exp(0.07 * g[1])
        pm10 = pm25 * (1.65 - 0.35 * w) * math.exp(0.05 * g[2])
        summer = 1 + 0.5 * math.cos(2 * math.pi * (doy - 196) / 365.25)
        o3 = (
            55
            * summer
            * (0.3 + math.exp(-(((h - 15) / 3.2) ** 2)))
            * (1 - 0.6 * w)
            * math.exp(0.1 * g[3])
        )
        no2 = (
            (
                18
                + 20 * math.exp(-(((h - 8.5) / 1.6) ** 2))
                + 24 * math.exp(-(((h - 18.5) / 2.2) ** 2))
            )
            * (1 + 0.6 * w)
            * math.exp(0.1 * g[4])
        )
        so2 = 7 * season**0.5 * (1 + 0.5 * w) * math.exp(0.2 * g[5])
        co = (0.55 + 0.004 * pm25) * math.exp(0.08 * g[6])
        return {
            "pm25": round(pm25),
            "pm10": round(pm10),
            "o3": round(max(2.0, o3)),
            "no2": round(no2),
            "so2": round(so2),
            "co": round(co, 2),
        }


# --- parking -----------------------------------------------------------------------------------


class ParkingModel:
    """Occupancy following a profile by day type, with autocorrelated noise, within capacity."""

    def __init__(self, city: City, seed: int, clock: LocalClock) -> None:
        p = city.parking
        self.noise = p.noise
        self.car_parks = {c.id: c for c in p.car_parks}
        self.curves: dict[str, dict[str, list[float]]] = {}
        for name, curves in p.profiles.items():
            holiday = p.holiday.curve if name in p.holiday.profiles else curves.weekend
            self.curves[name] = {
                "weekday": curves.weekday,
                "weekend": curves.weekend,
                "holiday": holiday,
            }
        self.seed = seed
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}

    def share(self, dev: SimDevice, t: float) -> float:
        cp = self.car_parks[dev.site]
        target = curve_at(self.clock, t, self.curves[cp.profile])
        rng = noise.stream(self.seed, f"{dev.device_id}:{int(t)}")
        last = self.state.get(dev.device_id)
        phi = 0.9
        if last is None:
            e = self.noise * rng.gauss(0, 1)
        else:
            steps = max(1.0, (t - last[0]) / dev.interval_s)
            phi_n = phi**steps
            e = phi_n * last[1] + math.sqrt(1 - phi_n * phi_n) * self.noise * rng.gauss(0, 1)
        self.state[dev.device_id] = (t, e)
        return min(1.0, max(0.0, target + e))

    def sample(self, dev: SimDevice, t: float) -> dict[str, float]:
        cap = self.car_parks[dev.site].capacity
        return {"occupied": float(round(cap * self.share(dev, t))), "capacity": float(cap)}


def local_midnight_before(t: float, tz: str) -> float:
    """The local midnight at or before t (epoch seconds)."""
    local = datetime.fromtimestamp(t, UTC).astimezone(ZoneInfo(tz))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


def holidays(scenario: Scenario) -> list[float]:
    return [e.at for e in scenario.of(HolidayDay)]
