"""The simulators: physics that keeps its promises, scenarios that raise the signals they
document, determinism, and faults that end exactly where the simulator says they will."""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from simulators.city import build_fleet, customers_per_dma, fleet_size, load_city
from simulators.engine import Message
from simulators.run import Plan, generate, make_plan, provision, run, write_fleet
from simulators.scenario import (
    Backlog,
    Burst,
    ClockSkew,
    Duplicate,
    Silent,
    Smog,
    Storm,
    Stuck,
    load_scenario,
    scenario_names,
)
from tests.pipeline import InThreadIngest, as_ingest, quarantined, settings_for, stored, wait_until
from tests.services import Mosquitto
from urbanpulse.contract import default_registry
from urbanpulse.db.devices import read_device_file
from urbanpulse.durations import parse_offset
from urbanpulse.errors import ConfigError, ContractError
from urbanpulse.settings import load_settings

# A fixed "now" so that every test sees the same simulated days: scenarios end by it.
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0
DAY = 86400.0
Series = list[tuple[float, float]]


def plan_for(name: str, *, seed: int = 7, processes: int = 1) -> Plan:
    settings = load_settings(topic_prefix="sim/v1")
    return make_plan(
        settings, load_scenario(name), seed=seed, fast=True, now=NOW, processes=processes
    )


@cache
def messages_of(name: str, seed: int = 7) -> tuple[Plan, list[Message]]:
    plan = plan_for(name, seed=seed)
    messages, _ = generate(plan)
    return plan, messages


def decode(
    plan: Plan, messages: Iterable[Message], devices: set[str] | None = None
) -> dict[tuple[str, str], Series]:
    """Every reading as ingest would store it (through the real contract), by device and metric."""
    out: dict[tuple[str, str], Series] = defaultdict(list)
    wanted = (m for m in messages if devices is None or m.device_id in devices)
    for _, got in as_ingest(plan, wanted):
        for r in got.readings:
            out[(r.device_id, r.metric)].append((r.ts.timestamp(), r.value))
    for series in out.values():
        series.sort()
    return out


def window(series: Series, a: float, b: float) -> list[float]:
    return [v for t, v in series if a <= t < b]


# --- files and fleet ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2d 01:30", 2 * DAY + 5400),
        ("36h", 36 * HOUR),
        ("1d 6h", 30 * HOUR),
        ("90m", 5400),
        ("45s", 45),
        ("00:00", 0),
        ("1.5h", 5400),
    ],
)
def test_offsets(text: str, seconds: float) -> None:
    assert parse_offset(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "25:00", "1d 2d junk", "01:00 02:00", "-1h"])
def test_bad_offsets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"offset|time"):
        parse_offset(text)


def test_every_packaged_scenario_loads() -> None:
    names = scenario_names()
    assert {
        "baseline",
        "leak-burst",
        "rainstorm",
        "smog",
        "holiday-parking",
        "device-faults",
        "demo",
    } <= set(names)
    fleet = {d.device_id for d in build_fleet(load_city())}
    for name in names:
        sc = load_scenario(name)
        for e in sc.device_faults():
            assert e.device in fleet, (name, e.device)


def test_scenario_files_are_strict_and_errors_say_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ntitle: {zh: 甲, en: a}\ndescription: d\nspan: 1d\n"
        "events:\n  - {kind: burst, dma: xlh, at: 1d, flow_m3h: 1, colour: red}\n"
        "  - {kind: storm, at: soon, duration: 2h, return_period_y: 5}\n"
    )
    with pytest.raises(ContractError) as err:
        load_scenario(str(bad))
    text = str(err.value)
    assert "bad.yaml:6: events.0.burst.colour: Extra inputs" in text
    assert "bad.yaml:7: events.1.storm.at" in text and "soon" in text
    with pytest.raises(ContractError, match="known: baseline"):
        load_scenario("no-such-scenario")


def test_city_file_is_checked(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "simulators" / "city.yaml").read_text()
    bad = tmp_path / "city.yaml"
    bad.write_text(text.replace("gauge: fhh,", "gauge: nowhere,", 1))
    with pytest.raises(ContractError, match="unknown gauge 'nowhere'"):
        load_city(bad)


def test_fleet_scales_to_exactly_the_size_asked(tmp_path: Path) -> None:
    city = load_city()
    base = build_fleet(city)
    assert len(base) == fleet_size(city)
    big = build_fleet(city, 100_000)
    assert len(big) == 100_000
    assert len({d.device_id for d in big}) == 100_000
    counts = customers_per_dma(city, 100_000)
    assert sum(counts.values()) == 100_000 - (
        fleet_size(city) - sum(d.customers for d in city.water.dmas)
    )
    assert max(counts.values()) - min(counts.values()) <= 1
    # the non-water part of the city is the same at any scale
    assert [d for d in big if d.domain != "water"] == [d for d in base if d.domain != "water"]
    # the fleet file round-trips through `urbanpulse devices import`
    path = tmp_path / "fleet.csv"
    write_fleet(path, base)
    specs = read_device_file(path, default_registry())
    assert [s.device_id for s in specs] == [d.device_id for d in base]
    assert specs[0].attributes == base[0].attributes


def test_a_scenario_may_not_end_in_the_future() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match="in the future"):
        make_plan(settings, load_scenario("baseline"), start=datetime.now(UTC), now=NOW)


# --- determinism and the contract --------------------------------------------------------------


def test_same_seed_same_bytes_and_shards_add_up() -> None:
    _, one = messages_of("device-faults")
    again, _ = generate(plan_for("device-faults"))
    assert [(m.topic, m.payload) for m in again] == [(m.topic, m.payload) for m in one]
    other, _ = generate(plan_for("device-faults", seed=8))
    assert [m.payload for m in other] != [m.payload for m in one]
    split = plan_for("device-faults", processes=3)
    shards = [m for i in range(3) for m in generate(split, i)[0]]
    assert Counter((m.topic, m.payload) for m in shards) == Counter(
        (m.topic, m.payload) for m in one
    )


@pytest.mark.parametrize("name", ["baseline", "device-faults"])
def test_what_ingest_would_do_is_what_the_simulator_says(name: str) -> None:
    """Every message parses as the simulator claims: these readings stored, or this reason."""
    plan, messages = messages_of(name)
    reasons: Counter[str] = Counter()
    for m, got in as_ingest(plan, messages):
        stored = {(r.metric, round(r.ts.timestamp() * 1000)) for r in got.readings}
        assert stored == set(m.stores) or (m.fault == "duplicate" and not m.stores), m
        if m.quarantine:
            assert got.rejections and got.rejections[0].reason == m.quarantine, (m, got)
            reasons[m.quarantine] += 1
        else:
            assert not got.rejections, (m, got.rejections)
    if name == "device-faults":
        assert reasons == {"bad_json": 3, "out_of_range": 2, "bad_timestamp": 3}
    else:
        assert not reasons


# --- the physics each scenario promises --------------------------------------------------------


def _interpolate(series: Series, t: float) -> float:
    for (t0, v0), (t1, v1) in pairwise(series):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    raise AssertionError(f"no readings around {t}")


def test_water_balance_gives_the_configured_leakage_rate() -> None:
    """inflow − Σ customer use over a day is the DMA's configured leakage share of inflow."""
    plan, messages = messages_of("leak-burst")
    city = plan.city
    water = decode(plan, (m for m in messages if "/water/" in m.topic))
    for dma in city.water.dmas:
        day = plan.start + 1 * DAY, plan.start + 2 * DAY  # the day before the burst
        flow = window(water[(f"wn-{dma.id}-inlet", "flow")], *day)
        inflow = sum(flow) * 60 / HOUR  # one reading a minute, m³/h → m³
        use = sum(
            _interpolate(series, day[1]) - _interpolate(series, day[0])
            for (dev, metric), series in water.items()
            if metric == "volume" and dev.startswith(f"wn-{dma.id}-c")
        )
        rate = (inflow - use) / inflow
        assert rate == pytest.approx(dma.leakage, abs=0.006), dma.id


def test_leak_burst_raises_that_dmas_night_flow_by_the_burst() -> None:
    plan, messages = messages_of("leak-burst")
    (burst,) = plan.scenario.of(Burst)
    water = decode(plan, (m for m in messages if m.device_id.endswith("-inlet")))

    def night_minimum(dma: str, night: int) -> float:
        a = plan.start + night * DAY + 2 * HOUR
        return min(window(water[(f"wn-{dma}-inlet", "flow")], a, a + 3 * HOUR))

    for dma in (d.id for d in plan.city.water.dmas):
        before = (night_minimum(dma, 0) + night_minimum(dma, 1)) / 2
        rise = night_minimum(dma, 2) - before
        if dma == burst.dma:
            assert rise == pytest.approx(burst.flow_m3h, abs=0.08)
            assert night_minimum(dma, 3) - before == pytest.approx(burst.flow_m3h, abs=0.08)
        else:
            assert abs(rise) < 0.08, dma
    # the step is at the burst time, not before
    xlh = water[("wn-xlh-inlet", "flow")]
    at = plan.start + burst.at
    assert max(window(xlh, at - 1800, at)) < min(window(xlh, at, at + 1800))


def test_rainstorm_ponds_exactly_the_documented_points() -> None:
    plan, messages = messages_of("rainstorm")
    flood = decode(plan, (m for m in messages if "/flood/" in m.topic))
    promised = {e.entity for e in plan.scenario.expect if e.rule == "flood.ponding_15cm"}
    assert len(promised) == 3
    peaks = {dev: max(v for _, v in s) for (dev, metric), s in flood.items() if metric == "depth"}
    assert {d for d, v in peaks.items() if v >= 15} == promised
    assert all(v < 10 for d, v in peaks.items() if d not in promised)
    storm_at = plan.start + plan.scenario.of(Storm)[0].at
    for dev in promised:
        series = flood[(dev, "depth")]
        assert max(window(series, plan.start, storm_at)) == 0  # dry before
        above = [t for t, v in series if v >= 15]
        assert storm_at < above[0] < storm_at + 2 * HOUR
        assert window(series, plan.end - HOUR, plan.end)[-1] == 0  # drained by midnight
    for (dev, metric), series in flood.items():
        if metric == "rainfall":
            total = sum(v for _, v in series)
            assert 55 < total < 90, (dev, total)  # a 5-year, 2-hour storm


def test_smog_keeps_aqi_above_200_for_over_48_hours() -> None:
    plan, messages = messages_of("smog")
    air = decode(plan, (m for m in messages if "/air/" in m.topic))
    (episode,) = plan.scenario.of(Smog)
    for station in plan.city.air.stations:
        pm25 = air[(f"aq-{station.id}", "pm25")]
        assert len(pm25) == 5 * 24  # hourly, nothing missing
        run = longest = 0
        for _, v in pm25:
            run = run + 1 if v > 150 else 0  # PM2.5 IAQI > 200 above 150 µg/m³ (HJ 633)
            longest = max(longest, run)
        assert longest > 48, station.id
        days = [window(pm25, plan.start + d * DAY, plan.start + (d + 1) * DAY) for d in range(5)]
        means = [sum(d) / len(d) for d in days]
        assert means[2] > 150 and means[3] > 150  # heavy-pollution days 3 and 4
        assert means[0] < 75  # before the episode: within GB 3095 Grade II
        before = window(pm25, plan.start, plan.start + episode.at)
        assert max(before) < 115
        co = air[(f"aq-{station.id}", "co")]
        assert all(0.2 < v < 5 for _, v in co)  # mg/m³, whatever unit the station sent


def test_holiday_fills_the_shopping_and_scenic_car_parks() -> None:
    plan, messages = messages_of("holiday-parking")
    parking = decode(plan, (m for m in messages if "/parking/" in m.topic))
    promised = {e.entity for e in plan.scenario.expect}
    holiday = plan.start + DAY, plan.start + 2 * DAY
    for cp in plan.city.parking.car_parks:
        dev = f"pk-{cp.id}"
        occupied = parking[(dev, "occupied")]
        assert all(0 <= v <= cp.capacity for _, v in occupied)
        full = [t for t, v in occupied if v / cp.capacity >= 0.95]
        on_holiday = [t for t in full if holiday[0] <= t < holiday[1]]
        if dev in promised:
            assert len(on_holiday) * plan.city.parking.interval_s >= 6 * HOUR, dev
            assert len(full) == len(on_holiday), dev  # only on the holiday
        else:
            assert not full, dev


def test_device_faults_bend_the_data_as_documented() -> None:
    plan, messages = messages_of("device-faults")
    sc = plan.scenario
    data = decode(plan, messages)
    # stuck: one value for the whole window
    stuck = next(e for e in sc.of(Stuck) if e.device == "wn-xlh-inlet")
    a = plan.start + stuck.at
    assert len(set(window(data[("wn-xlh-inlet", "flow")], a, a + stuck.duration))) == 1
    assert len(set(window(data[("wn-xlh-inlet", "flow")], a - HOUR, a))) > 30
    # silent: no message in the window
    silent = next(e for e in sc.of(Silent) if e.device == "pk-school")
    a = plan.start + silent.at
    assert not window(data[("pk-school", "occupied")], a, a + silent.duration)
    # backlog: one batch, sent when the device is back, holding every reading of the outage
    backlog = next(e for e in sc.of(Backlog) if e.device == "fl-snh-square")
    a = plan.start + backlog.at
    batches = [m for m in messages if m.fault == "backlog"]
    assert len(batches) == 1 and batches[0].sent_at >= a + backlog.duration
    assert batches[0].readings == backlog.duration / 60
    assert len(window(data[("fl-snh-square", "depth")], a, a + backlog.duration)) == 300
    # out of order: later measurements go out first
    sent = [m for m in messages if m.device_id == "wn-lc-inlet"]
    times = [json.loads(m.payload)["ts"] for m in sent]
    assert sum(1 for x, y in pairwise(times) if y < x) == 15
    # clock skew: the readings land 8 hours early; the duplicate window sends twice
    skew = next(e for e in sc.of(ClockSkew) if e.device == "pk-hospital")
    occupied = data[("pk-hospital", "occupied")]
    a = plan.start + skew.at
    assert not window(occupied, a, a + skew.duration)
    assert len(window(occupied, a + skew.offset_s, a + skew.offset_s + skew.duration)) == 48
    dup = next(e for e in sc.of(Duplicate) if e.device == "pk-mall")
    a = plan.start + dup.at
    in_window = [
        m for m in messages if m.device_id == "pk-mall" and a <= m.sent_at < a + dup.duration
    ]
    assert len(in_window) == 2 * len({m.payload for m in in_window}) == 24


def test_reporting_intervals_are_kept() -> None:
    plan, messages = messages_of("baseline")
    per_device = Counter(m.device_id for m in messages)
    for d in plan.fleet():
        assert per_device[d.device_id] == DAY / d.interval_s, d.device_id
    # measurement times never go past the scenario's end (nor into the future)
    last = max(json.loads(m.payload).get("ts", 0) for m in messages if m.payload[:1] == b"{")
    assert last / 1000 < plan.end <= NOW
    assert math.isclose(plan.end - plan.start, DAY)
    local_start = datetime.fromtimestamp(plan.start, ZoneInfo("Asia/Shanghai"))
    assert (local_start.hour, local_start.minute, local_start.second) == (0, 0, 0)


# --- end to end: simulator → Mosquitto → ingest → PostgreSQL -------------------------------------


def test_device_faults_end_to_end_store_exactly_what_the_simulator_says(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    settings = settings_for(db_url, broker.url, prefix)
    plan = make_plan(settings, load_scenario("device-faults"), fast=True, now=NOW)
    ledger, _ = generate(plan)
    expected = {(m.device_id, metric, ts) for m in ledger for metric, ts in m.stores}
    reasons = Counter(m.quarantine for m in ledger if m.quarantine)
    provision(db_url, plan.fleet())
    with InThreadIngest(settings):
        result = run(plan)
        assert result.messages == len(ledger)
        assert result.readings == sum(m.readings for m in ledger)
        wait_until(
            lambda: (
                len(stored(db_url)) >= len(expected)
                and sum(quarantined(db_url).values()) >= sum(reasons.values())
            ),
            timeout=120,
            what=f"{len(expected)} readings",
        )
        time.sleep(1.0)  # anything extra would show now
    assert stored(db_url) == expected
    assert quarantined(db_url) == reasons == {"bad_json": 3, "out_of_range": 2, "bad_timestamp": 3}
    with psycopg.connect(db_url) as conn:
        # the out-of-range messages kept their other readings (5 of them: 1 + 5 - 1 pollutants)
        kept = conn.execute("SELECT sum(stored_readings) FROM quarantine").fetchone()
        stuck = plan.scenario.of(Stuck)[0]
        a = datetime.fromtimestamp(plan.start + stuck.at, UTC)
        flat = conn.execute(
            "SELECT count(*), count(DISTINCT value) FROM readings WHERE device_id = %s "
            "AND metric = 'flow' AND ts >= %s AND ts < %s",
            (stuck.device, a, a + timedelta(seconds=stuck.duration)),
        ).fetchone()
    assert kept == (5,)
    assert flat == (180, 1)
