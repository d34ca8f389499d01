"""`urbanpulse replay` of the four public datasets, checked against counts computed here.

The expected numbers are derived independently of the replay code: with pandas over the same
files (its own CSV and Excel readers, its own DST inference), never with the code under test.
Full-file dry runs check every row; end-to-end runs go through a private Mosquitto and a real
ingest worker into a scratch database, over windows chosen to contain each dataset's quirks.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.replay.localtime import DstNote
from simulators.replay.mapping import load_mapping
from simulators.replay.model import Quirk
from simulators.replay.plan import STRIPPED, Selection
from simulators.replay.report import Tally
from simulators.replay.run import ReplayOptions, ReplayResult, run_replay
from tests.pipeline import InThreadIngest, quarantined, settings_for, wait_until
from tests.services import Mosquitto
from urbanpulse.contract import default_registry
from urbanpulse.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("URBANPULSE_DATASETS") or ROOT.parent / "shared" / "datasets")
REGISTRY = default_registry()

pytestmark = pytest.mark.skipif(
    not DATASETS.is_dir(),
    reason=f"the public datasets are not at {DATASETS} (set URBANPULSE_DATASETS)",
)

BEIJING = {
    "pm25": "PM2.5",
    "pm10": "PM10",
    "so2": "SO2",
    "no2": "NO2",
    "co": "CO",
    "o3": "O3",
}
DMAS = [f"DMA {i} (L/s)" for i in range(1, 11)]
TIME_COL = "Date-time CET-CEST (DD/MM/YYYY HH:mm)"


def ms(ts: pd.Timestamp | datetime) -> int:
    return round(ts.timestamp() * 1000)


# --- the datasets as pandas reads them -----------------------------------------------------------


@cache
def beijing() -> pd.DataFrame:
    files = sorted((DATASETS / "beijing-multisite-aq").glob("PRSA_Data_*.csv"))
    df = pd.concat(
        [pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True
    )
    local = pd.to_datetime(df[["year", "month", "day", "hour"]].astype(int))
    df["utc"] = local.dt.tz_localize("Asia/Shanghai").dt.tz_convert("UTC")
    return df


@cache
def birmingham() -> pd.DataFrame:
    df = pd.read_csv(
        DATASETS / "birmingham-parking" / "dataset.csv",
        header=None,
        names=["code", "cap", "occ", "when"],
        dtype=str,
        keep_default_na=False,
    )
    df["raw_when"] = df["when"]
    df["when"] = df["when"].str.strip()
    local = pd.to_datetime(df["when"], format="%Y-%m-%d %H:%M:%S")
    df["utc"] = local.dt.tz_localize("Europe/London").dt.tz_convert("UTC")
    df["occ"] = df["occ"].astype(int)
    df["cap"] = df["cap"].astype(int)
    return df


@cache
def bwdf(name: str) -> pd.DataFrame:
    df = pd.read_excel(
        DATASETS / "bwdf-dma-inflows" / f"{name}.xlsx", dtype=object, keep_default_na=False
    )
    local = pd.to_datetime(df[TIME_COL], format="%d/%m/%Y %H:%M")
    # pandas infers the repeated autumn hour from the order of the rows
    df["utc"] = local.dt.tz_localize("Europe/Rome", ambiguous="infer").dt.tz_convert("UTC")
    return df


@cache
def floodnet() -> list[tuple[str, int, float, int]]:
    """(sensor, epoch ms, depth in inches, event row) for every profile point."""
    df = pd.read_csv(DATASETS / "nyc-floodnet" / "flood-events.csv", dtype=str)
    points = []
    for i, row in df.iterrows():
        start = pd.Timestamp(row["flood_start_time"], tz="UTC")
        depths = json.loads(row["flood_profile_depth_inches"])
        offsets = json.loads(row["flood_profile_time_secs"])
        assert len(depths) == len(offsets)
        for d, o in zip(depths, offsets, strict=True):
            points.append((row["sensor_id"], ms(start) + o * 1000, float(d), int(str(i))))
    return points


def in_window(df: pd.DataFrame, since: str, until: str, zone: str) -> pd.DataFrame:
    lo = pd.Timestamp(since).tz_localize(zone)
    hi = pd.Timestamp(until).tz_localize(zone)
    return df[(df["utc"] >= lo) & (df["utc"] < hi)]


# --- running a replay ----------------------------------------------------------------------------


def dry(name: str, selection: Selection | None = None) -> Tally:
    mapping = load_mapping(name, REGISTRY)
    result = run_replay(
        mapping,
        DATASETS / mapping.spec.folder,
        ReplayOptions(selection or Selection(), dry_run=True),
        load_settings(),
        REGISTRY,
        err=io.StringIO(),
    )
    return result.plan.tally


def replay(name: str, db_url: str, broker: Mosquitto, prefix: str, **sel: Any) -> ReplayResult:
    mapping = load_mapping(name, REGISTRY)
    selection = Selection(
        since=datetime.fromisoformat(sel["since"]) if "since" in sel else None,
        until=datetime.fromisoformat(sel["until"]) if "until" in sel else None,
        devices=tuple(sel.get("devices", ())),
    )
    return run_replay(
        mapping,
        DATASETS / mapping.spec.folder,
        ReplayOptions(selection),
        settings_for(db_url, broker.url, prefix),
        REGISTRY,
        err=io.StringIO(),
    )


def stored_rows(db_url: str) -> dict[tuple[str, str, int], float]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM readings"
        ).fetchall()
    return {(str(d), str(m), int(t)): float(v) for d, m, t, v in rows}


def wait_for(db_url: str, readings: int, quarantine: Counter[str], timeout: float = 60) -> None:
    """Until ingest has stored and quarantined what it should; then a moment for any extra."""
    wait_until(
        lambda: (
            len(stored_rows(db_url)) >= readings
            and sum(quarantined(db_url).values()) >= sum(quarantine.values())
        ),
        timeout,
        f"{readings} readings and {sum(quarantine.values())} quarantined",
    )
    time.sleep(0.5)


def assert_values(stored: dict[tuple[str, str, int], float], expected: dict[Any, float]) -> None:
    assert stored.keys() == expected.keys()
    off = [k for k, v in expected.items() if not math.isclose(stored[k], v, rel_tol=1e-9)]
    assert not off, [(k, stored[k], expected[k]) for k in off[:5]]


# --- full-file dry runs --------------------------------------------------------------------------


def test_beijing_full_dry_run_counts_every_row() -> None:
    df = beijing()
    tally = dry("beijing-aq")
    columns = {**BEIJING, "rainfall": "RAIN"}
    assert tally.rows_read == len(df) == 140_256
    assert not tally.rows_skipped
    missing = {m: int((df[c] == "NA").sum()) for m, c in columns.items()}
    assert {m: n for (_, m), n in tally.values_skipped.items()} == missing
    assert set(tally.values_skipped) == {("missing (NA)", m) for m in columns}
    assert tally.per_metric() == {m: len(df) - missing[m] for m in columns}
    pollutants = df[list(BEIJING.values())]
    aq_messages = int((pollutants != "NA").any(axis=1).sum())
    assert tally.total_messages == aq_messages + int((df["RAIN"] != "NA").sum())
    co = pd.to_numeric(df["CO"], errors="coerce")
    pm10 = pd.to_numeric(df["PM10"], errors="coerce")
    pm25 = pd.to_numeric(df["PM2.5"], errors="coerce")
    assert tally.quirks == {
        (Quirk.AT_CEILING, "co"): int((co >= 10000).sum()),  # 20
        (Quirk.AT_CEILING, "pm10"): int((pm10 >= 999).sum()),  # 1
        **({(Quirk.AT_CEILING, "pm25"): int((pm25 >= 999).sum())} if (pm25 >= 999).any() else {}),
    }
    assert tally.expected_stored == tally.total_readings
    assert not tally.quarantine_expected
    assert tally.unmapped == {}


def test_birmingham_full_dry_run_counts_every_quirk() -> None:
    df = birmingham()
    tally = dry("birmingham-parking")
    assert tally.rows_read == len(df) == 35_717
    assert not tally.rows_skipped and not tally.values_skipped
    assert tally.converted == {STRIPPED: int((df["raw_when"] != df["when"]).sum())} == {STRIPPED: 1}
    dups = int(df.duplicated(["code", "cap", "occ", "when"]).sum())
    negative = int((df["occ"] < 0).sum())
    above = int((df["occ"] > df["cap"]).sum())
    assert (dups, negative, above) == (216, 12, 373)  # as the datasets README says
    assert tally.total_messages == len(df)
    assert tally.per_metric() == {"occupied": len(df), "capacity": len(df)}
    assert tally.quirks == {
        (Quirk.DUPLICATE, "occupied"): dups,
        (Quirk.DUPLICATE, "capacity"): dups,
        (Quirk.OUT_OF_RANGE, "occupied"): negative,
        (Quirk.ABOVE_BOUND, "occupied"): above,
    }
    distinct = df.drop_duplicates(["code", "cap", "occ", "when"])
    assert tally.quarantine_expected == {"out_of_range": int((distinct["occ"] < 0).sum())}
    assert tally.expected_stored == 2 * len(distinct) - int((distinct["occ"] < 0).sum())
    assert len(tally.messages) == df["code"].nunique() == 30


def test_bwdf_full_dry_run_counts_nan_text_and_dst_repeats() -> None:
    inflow, weather = bwdf("InflowData"), bwdf("WeatherData")
    tally = dry("bwdf-dma")
    assert tally.files == {"InflowData.xlsx": len(inflow), "WeatherData.xlsx": len(weather)}
    assert len(inflow) == len(weather) == 19_679
    nan_text = int((inflow[DMAS] == "NaN").sum().sum())
    assert tally.values_skipped == {("missing (NaN)", "flow"): nan_text}
    assert tally.per_metric() == {
        "flow": len(inflow) * 10 - nan_text,
        "rainfall": int((weather["Rainfall depth (mm)"] != "NaN").sum()),
    }
    assert tally.total_messages == tally.total_readings  # one metric per device and hour
    for name, df in (("InflowData", inflow), ("WeatherData", weather)):
        repeats = df[TIME_COL].value_counts()
        assert sorted(repeats[repeats > 1].index) == ["30/10/2022 02:00", "31/10/2021 02:00"], name
    assert tally.converted == {DstNote.REPEAT_SUMMER: 4, DstNote.REPEAT_WINTER: 4}
    # hourly in UTC without a hole or a clash: 2021-01-01 00:00 CET .. 2023-03-31 23:00 CEST
    utc = inflow["utc"]
    assert utc.is_monotonic_increasing and utc.is_unique
    assert (utc.iloc[-1] - utc.iloc[0]) / pd.Timedelta(hours=1) == len(inflow) - 1
    assert not tally.rows_skipped and not tally.quirks


def test_floodnet_full_dry_run_expands_every_profile_point() -> None:
    points = floodnet()
    tally = dry("nyc-floodnet")
    events = pd.read_csv(DATASETS / "nyc-floodnet" / "flood-events.csv", dtype=str)
    assert tally.rows_read == len(events) == 2256
    assert tally.total_readings == len(points) == 282_351
    per_event = Counter(p[3] for p in points)
    assert tally.total_messages == sum(math.ceil(n / 500) for n in per_event.values())
    distinct: dict[tuple[str, int], float] = {}
    conflicts = 0
    for sensor, t, depth, _ in points:
        if distinct.setdefault((sensor, t), depth) != depth:
            conflicts += 1
    assert conflicts == 0
    assert tally.quirks == {(Quirk.DUPLICATE, "depth"): len(points) - len(distinct)}  # 26
    assert len(tally.messages) == events["sensor_id"].nunique() == 232
    assert not tally.rows_skipped and not tally.values_skipped


# --- end to end: replay → Mosquitto → ingest → PostgreSQL ----------------------------------------


def test_beijing_rainstorm_and_smog_end_to_end(db_url: str, broker: Mosquitto, prefix: str) -> None:
    windows = [("2016-07-19", "2016-07-22"), ("2015-12-01", "2015-12-02")]  # rainstorm; smog
    df = pd.concat([in_window(beijing(), a, b, "Asia/Shanghai") for a, b in windows])
    expected: dict[tuple[str, str, int], float] = {}
    for _, row in df.iterrows():
        station = str(row["station"]).lower()
        for metric, column in {**BEIJING, "rainfall": "RAIN"}.items():
            if row[column] != "NA":
                device = f"bj-{station}-rain" if metric == "rainfall" else f"bj-{station}"
                factor = 0.001 if metric == "co" else 1.0  # µg/m³ in the file, mg/m³ stored
                expected[(device, metric, ms(row["utc"]))] = float(row[column]) * factor
    assert 0 < len(expected) < len(df) * 7  # the windows hold NA values
    with InThreadIngest(settings_for(db_url, broker.url, prefix)):
        for since, until in windows:
            replay("beijing-aq", db_url, broker, prefix, since=since, until=until)
        wait_for(db_url, len(expected), Counter())
    stored = stored_rows(db_url)
    assert_values(stored, expected)
    assert quarantined(db_url) == Counter()
    # the CO ceiling (10000 µg/m³) is stored as 10 mg/m³, Aotizhongxin 2015-12-01 06:00 +08:00
    assert stored[("bj-aotizhongxin", "co", ms(datetime(2015, 11, 30, 22, tzinfo=UTC)))] == 10.0
    rain = pd.to_numeric(df["RAIN"], errors="coerce").groupby(df["station"]).sum()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, sum(value) FROM readings WHERE metric = 'rainfall' GROUP BY 1"
        ).fetchall()
    totals = {str(d): float(v) for d, v in rows}
    assert totals.keys() == {f"bj-{str(s).lower()}-rain" for s in rain.index}
    for station in rain.index:
        assert math.isclose(totals[f"bj-{str(station).lower()}-rain"], float(rain[station]))


def test_birmingham_quirks_end_to_end(db_url: str, broker: Mosquitto, prefix: str) -> None:
    since, until = "2016-10-04", "2016-10-17"
    df = in_window(birmingham(), since, until, "Europe/London")
    distinct = df.drop_duplicates(["code", "cap", "occ", "when"])
    # the window holds every kind of quirk of the file
    assert (df["raw_when"] != df["when"]).sum() == 1  # the stray tab
    assert len(df) - len(distinct) > 0 and (df["occ"] < 0).sum() > 0
    assert (df["occ"] > df["cap"]).sum() > 0
    expected: dict[tuple[str, str, int], float] = {}
    for _, row in distinct.iterrows():
        device = "bhm-" + str(row["code"]).lower().replace(" ", "-")
        t = ms(row["utc"])
        expected[(device, "capacity", t)] = float(row["cap"])
        if row["occ"] >= 0:
            expected[(device, "occupied", t)] = float(row["occ"])
    negatives = int((distinct["occ"] < 0).sum())
    with InThreadIngest(settings_for(db_url, broker.url, prefix)):
        result = replay("birmingham-parking", db_url, broker, prefix, since=since, until=until)
        wait_for(db_url, len(expected), Counter({"out_of_range": negatives}))
    assert result.published == len(df)  # duplicates too: ingest absorbs them
    stored = stored_rows(db_url)
    assert_values(stored, expected)
    assert quarantined(db_url) == Counter({"out_of_range": negatives})
    tab = ms(datetime(2016, 10, 4, 12, 29, 45, tzinfo=UTC))  # 13:29:45 BST, the stray-tab line
    assert stored[("bhm-bhmbccmkt01", "occupied", tab)] == 263
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, stored_readings, detail->0->>'reason' FROM quarantine"
        ).fetchall()
        capacity = conn.execute(
            "SELECT capacity FROM devices WHERE device_id = 'bhm-nia-north'"
        ).fetchone()
    assert {(str(d), int(n), str(r)) for d, n, r in rows} == {("bhm-nia-north", 1, "out_of_range")}
    assert capacity == (480.0,)


def test_bwdf_across_both_dst_transitions_end_to_end(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    windows = [("2021-10-30", "2021-11-01"), ("2022-03-26", "2022-03-28")]
    expected: dict[tuple[str, str, int], float] = {}
    for since, until in windows:
        inflow = in_window(bwdf("InflowData"), since, until, "Europe/Rome")
        for i, column in enumerate(DMAS, start=1):
            for t, v in zip(inflow["utc"], inflow[column], strict=True):
                if v != "NaN":
                    expected[(f"bwdf-dma-{i}", "flow", ms(t))] = float(v) * 3.6  # L/s → m³/h
        weather = in_window(bwdf("WeatherData"), since, until, "Europe/Rome")
        for t, v in zip(weather["utc"], weather["Rainfall depth (mm)"], strict=True):
            expected[("bwdf-rain", "rainfall", ms(t))] = float(v)
    with InThreadIngest(settings_for(db_url, broker.url, prefix)):
        for since, until in windows:
            replay("bwdf-dma", db_url, broker, prefix, since=since, until=until)
        wait_for(db_url, len(expected), Counter())
    stored = stored_rows(db_url)
    assert_values(stored, expected)
    assert quarantined(db_url) == Counter()
    # the two 02:00 rows of 2021-10-31 are an hour apart in UTC; 2022-03-27 jumps 01:00 → 03:00
    dma1 = sorted(t for d, _, t in stored if d == "bwdf-dma-1")
    hour = 3_600_000
    autumn = ms(datetime(2021, 10, 30, 23, tzinfo=UTC))  # 01:00 CEST
    assert [autumn + k * hour in dma1 for k in range(4)] == [True] * 4
    assert stored[("bwdf-dma-1", "flow", autumn + hour)] == pytest.approx(6.55 * 3.6)
    assert stored[("bwdf-dma-1", "flow", autumn + 2 * hour)] == pytest.approx(6.4825 * 3.6)
    spring = ms(datetime(2022, 3, 27, 0, tzinfo=UTC))  # 01:00 CET, then 03:00 CEST
    assert spring in dma1 and spring + hour in dma1


def test_floodnet_overlapping_events_end_to_end(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    sensors = {"Q-155th-ave-79th-st-215zzc", "Q-russell-st-2-07zt40"}
    points = [p for p in floodnet() if p[0] in sensors]
    expected = {
        (f"nyc-{s.lower()}", "depth", t): round(d * 2.54, 9) for s, t, d, _ in points
    }  # inches → cm; overlapping events and a repeated offset give the same key twice
    assert len(points) - len(expected) == 26
    devices = [f"nyc-{s.lower()}" for s in sorted(sensors)]
    with InThreadIngest(settings_for(db_url, broker.url, prefix)):
        result = replay("nyc-floodnet", db_url, broker, prefix, devices=devices)
        wait_for(db_url, len(expected), Counter())
    assert result.plan.tally.total_readings == len(points)
    assert_values(stored_rows(db_url), expected)
    assert quarantined(db_url) == Counter()
    with psycopg.connect(db_url) as conn:
        meta = conn.execute(
            "SELECT zone, lat, lon FROM devices WHERE device_id = 'nyc-q-155th-ave-79th-st-215zzc'"
        ).fetchone()
    assert meta == ("Queens", 40.66403, -73.85473)


# --- pacing and the command line -----------------------------------------------------------------


def test_speed_paces_by_measurement_time_and_max_gap_caps_waits(
    broker: Mosquitto, prefix: str
) -> None:
    mapping = load_mapping("birmingham-parking", REGISTRY)
    settings = load_settings(mqtt_url=broker.url, topic_prefix=prefix)
    # the first four rows of BHMBCCMKT01 span 07:59:42 .. 09:32:46, 5584 s of data
    sel = Selection(devices=("bhm-bhmbccmkt01",), limit=4)
    timings = []
    # someone takes the messages: with no subscriber the broker answers "no matching
    # subscribers" and the publisher sends them again until its flush gives up
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pace-{prefix}", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(bytes(m.payload))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        for max_gap in (None, 0.1):
            options = ReplayOptions(sel, speed=3600, provision=False, max_gap_s=max_gap)
            result = run_replay(
                mapping,
                DATASETS / mapping.spec.folder,
                options,
                settings,
                REGISTRY,
                err=io.StringIO(),
            )
            assert result.published == 4
            timings.append(result.publishing_s)
        wait_until(lambda: len(got) >= 8, 10, "both replays' messages")
    finally:
        sub.disconnect()
        sub.loop_stop()
    # paced: 5584 s of data at 3600× is 1.55 s (a loaded machine only adds to it)
    assert 5584 / 3600 - 0.05 < timings[0] < 5584 / 3600 + 3.0
    assert timings[1] < 0.3 + 1.0  # three waits capped at 0.1 s each


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the tests read the return code
        [sys.executable, "-m", "urbanpulse.cli", "replay", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "URBANPULSE_DATASETS": str(DATASETS), **(env or {})},
    )


def test_cli_lists_dry_runs_and_explains_bad_input(tmp_path: Path) -> None:
    out = cli("--list")
    assert out.returncode == 0, out.stderr
    for name in ("beijing-aq", "birmingham-parking", "bwdf-dma", "nyc-floodnet"):
        assert name in out.stdout
    out = cli("birmingham-parking", "--since", "2016-10-16", "--until", "2016-10-17", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "out_of_range: 2" in out.stdout and "ingest quarantines it" in out.stdout
    out = cli(
        "birmingham-parking",
        "--since",
        "2016-10-16",
        "--until",
        "2016-10-17",
        "--dry-run",
        "--json",
    )
    doc = json.loads(out.stdout)
    day = birmingham()[birmingham()["when"].str.startswith("2016-10-16")]
    assert doc["messages"] == len(day) and doc["readings"] == 2 * len(day)
    assert doc["expected"]["messages_quarantined"] == {"out_of_range": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntitle: t\nfolder: f\nattribution: {}\nsources: []\nextra: 1\n")
    out = cli(str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{bad}:6: extra: unknown key 'extra'" in out.stderr
    assert f"{bad}:4: attribution.publisher: Field required" in out.stderr
    out = cli("beijing-aq", "--dry-run", env={"URBANPULSE_DATASETS": str(tmp_path)})
    assert out.returncode == 1 and "URBANPULSE_DATASETS" in out.stderr
    out = cli("beijing-aq", "--since", "yesterday", "--dry-run")
    assert out.returncode == 1 and "--since 'yesterday'" in out.stderr


def test_cli_replay_publishes_through_the_broker(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    settings = settings_for(db_url, broker.url, prefix)
    env = {
        "URBANPULSE_DATABASE_URL": db_url,
        "URBANPULSE_MQTT_URL": broker.url,
        "URBANPULSE_TOPIC_PREFIX": prefix,
    }
    day = birmingham()[
        birmingham()["code"].eq("NIA North") & birmingham()["when"].str.startswith("2016-10-16")
    ]
    with InThreadIngest(settings):
        out = cli(
            "birmingham-parking",
            "--devices",
            "bhm-nia-north",
            "--since",
            "2016-10-16",
            "--until",
            "2016-10-17",
            "--shift-to-now",
            env=env,
        )
        assert out.returncode == 0, out.stderr
        negatives = int((day["occ"] < 0).sum())
        wait_for(db_url, 2 * len(day) - negatives, Counter({"out_of_range": negatives}))
    finished = datetime.now(UTC)
    assert f"published {len(day)} messages with {2 * len(day)} readings for 1 devices" in out.stdout
    assert "provisioned 1 devices (1 new, 0 updated)" in out.stdout
    # shifted by whole minutes so the last reading is at most a minute before now, never after
    stored = stored_rows(db_url)
    last = max(t for _, _, t in stored)
    assert ms(finished) - 60_000 - 30_000 < last <= ms(finished)
    span = ms(day["utc"].max()) - ms(day["utc"].min())
    assert last - min(t for _, _, t in stored) == span
    assert (last - ms(day["utc"].max())) % 60_000 == 0


def test_wrong_broker_credentials_are_explained(tmp_path: Path, prefix: str) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "replay", "right-secret"],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(tmp_path / "broker", password_file=passwords)
    broker.start()
    try:
        url = f"mqtt://replay:wrong-secret@127.0.0.1:{broker.port}"
        out = cli(
            "birmingham-parking",
            "--limit",
            "3",
            "--no-provision",
            env={"URBANPULSE_MQTT_URL": url, "URBANPULSE_TOPIC_PREFIX": prefix},
        )
    finally:
        broker.stop()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "refused us: Not authorized" in out.stderr and "URBANPULSE_MQTT_URL" in out.stderr
    assert "wrong-secret" not in out.stderr
