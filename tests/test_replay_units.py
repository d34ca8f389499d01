"""The pure core of `urbanpulse replay`: mappings, local times, rows, payloads (no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from simulators.replay.cells import parse_number
from simulators.replay.errors import DatasetError, MappingError
from simulators.replay.localtime import Ambiguous, DstNote, LocalClock, Nonexistent
from simulators.replay.mapping import load_mapping, packaged_names, parse_mapping
from simulators.replay.model import Entry, Message, Quirk, Skip
from simulators.replay.plan import STRIPPED, Selection, build_plan, shift_to_now
from simulators.replay.report import Tally
from simulators.replay.run import payload
from simulators.replay.template import parse_template, sanitise_id
from urbanpulse.contract import DeviceRef, InboundMessage, default_registry, parse_message

REGISTRY = default_registry()
ROME = ZoneInfo("Europe/Rome")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- local time ----------------------------------------------------------------------------------


def test_autumn_repeat_is_summer_time_then_winter_time_in_file_order() -> None:
    clock = LocalClock(ROME)
    walls = ["2021-10-31T01:00", "2021-10-31T02:00", "2021-10-31T02:00", "2021-10-31T03:00"]
    got = [clock.to_utc(datetime.fromisoformat(w), "dma-1") for w in walls]
    assert [g.instant for g in got] == [
        utc("2021-10-30T23:00"),  # 01:00 CEST
        utc("2021-10-31T00:00"),  # 02:00 CEST, the first 02:00
        utc("2021-10-31T01:00"),  # 02:00 CET, the second 02:00
        utc("2021-10-31T02:00"),  # 03:00 CET
    ]
    assert [g.note for g in got] == [None, DstNote.REPEAT_SUMMER, DstNote.REPEAT_WINTER, None]


def test_repeat_with_half_hours_and_interleaved_series() -> None:
    clock = LocalClock(ROME)
    rows = [("a", "02:00"), ("b", "02:00"), ("a", "02:30"), ("a", "02:00"), ("b", "02:00")]
    rows += [("a", "02:30"), ("b", "02:30")]
    got = [clock.to_utc(datetime.fromisoformat(f"2021-10-31T{t}"), s).instant for s, t in rows]
    assert got == [
        utc("2021-10-31T00:00"),
        utc("2021-10-31T00:00"),
        utc("2021-10-31T00:30"),
        utc("2021-10-31T01:00"),  # a went back: winter time from now on
        utc("2021-10-31T01:00"),
        utc("2021-10-31T01:30"),
        utc("2021-10-31T01:30"),  # b has not seen 02:30 yet but the clock of b went back before
    ]


def test_spring_gap_is_skipped_or_shifted_forward() -> None:
    gap = datetime(2022, 3, 27, 2, 0)
    assert LocalClock(ROME).to_utc(gap).skip is Skip.DST_GAP
    assert LocalClock(ROME).to_utc(gap).instant is None
    shifted = LocalClock(ROME, nonexistent=Nonexistent.SHIFT_FORWARD).to_utc(
        datetime(2022, 3, 27, 2, 30)
    )
    assert shifted.instant == utc("2022-03-27T01:30")  # = 03:30 CEST
    assert shifted.note is DstNote.GAP_SHIFTED
    # the hours around the gap are ordinary
    assert LocalClock(ROME).to_utc(datetime(2022, 3, 27, 1)).instant == utc("2022-03-27T00:00")
    assert LocalClock(ROME).to_utc(datetime(2022, 3, 27, 3)).instant == utc("2022-03-27T01:00")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Ambiguous.EARLIER, [utc("2021-10-31T00:00"), utc("2021-10-31T00:00")]),
        (Ambiguous.LATER, [utc("2021-10-31T01:00"), utc("2021-10-31T01:00")]),
        (Ambiguous.SKIP, [None, None]),
    ],
)
def test_other_repeat_policies(policy: Ambiguous, expected: list[datetime | None]) -> None:
    clock = LocalClock(ROME, ambiguous=policy)
    wall = datetime(2021, 10, 31, 2)
    assert [clock.to_utc(wall).instant for _ in range(2)] == expected


def test_fixed_offset_zones_and_aware_times() -> None:
    shanghai = LocalClock(ZoneInfo("Asia/Shanghai"))
    assert shanghai.to_utc(datetime(2016, 7, 20, 8)).instant == utc("2016-07-20T00:00")
    aware = datetime.fromisoformat("2016-07-20T08:00+08:00")
    assert LocalClock(ROME).to_utc(aware).instant == utc("2016-07-20T00:00")


# --- templates and values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BHMBCCMKT01", "BHMBCCMKT01"),
        ("Broad Street", "Broad-Street"),
        ("  NIA Car Parks ", "NIA-Car-Parks"),
        ("..hidden", "hidden"),
        ("a/b+c#d", "a-b-c-d"),
        ("x" * 80, "x" * 64),
        ("///", ""),
    ],
)
def test_sanitise_id(raw: str, expected: str) -> None:
    assert sanitise_id(raw) == expected


def test_template_filters_and_errors() -> None:
    t = parse_template("bhm-{SystemCodeNumber|slug}")
    assert t.columns == ("SystemCodeNumber",)
    assert t.render({"SystemCodeNumber": "Others-CCCPS105a"}) == "bhm-others-cccps105a"
    assert parse_template("{a.b}/{PM2.5}").render({"a.b": "x", "PM2.5": "y"}) == "x/y"
    with pytest.raises(ValueError, match="unknown filter 'shout'"):
        parse_template("{x|shout}")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("61", 61),
        ("-3", -3.0),
        ("0.2856", 0.2856),
        ("-2.77555756156289e-17", -2.77555756156289e-17),
        ("NaN", None),
        ("nan", None),
        ("inf", None),
        ("abc", None),
        ("", None),
        (3.5, 3.5),
    ],
)
def test_parse_number(cell: str | float, expected: float | None) -> None:
    assert parse_number(cell) == expected


# --- mappings ------------------------------------------------------------------------------------

GOOD = """\
name: tiny
title: A tiny dataset
folder: tiny
attribution: {publisher: us, url: https://example.org, licence: CC0}
sources:
  - files: data.csv
    format: {type: csv, header: false, columns: [code, cap, occ, when]}
    time: {column: when, format: "%Y-%m-%d %H:%M:%S", timezone: Europe/London}
    devices:
      - id: "bhm-{code|slug}"
        domain: parking
        kind: car_park
        name: "car park {code}"
        capacity: "{cap}"
        metrics:
          occupied: {column: occ, unit: count, upper_bound_column: cap}
          capacity: {column: cap, unit: spaces}
"""


def test_every_shipped_mapping_loads() -> None:
    names = packaged_names()
    assert names == ["beijing-aq", "birmingham-parking", "bwdf-dma", "nyc-floodnet"]
    for name in names:
        assert load_mapping(name, REGISTRY).name == name


def test_unknown_keys_are_errors_with_file_line_and_location() -> None:
    text = GOOD.replace("        kind: car_park\n", "        kind: car_park\n        knd: x\n")
    text = text.replace("unit: count,", "unit: count, colour: red,")
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "my.yaml", REGISTRY)
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "my.yaml:13: sources[0].devices[0].knd: unknown key 'knd'" in message
    assert "my.yaml:17: sources[0].devices[0].metrics.occupied.colour: unknown key" in message


def test_bad_values_name_their_line() -> None:
    text = GOOD.replace("timezone: Europe/London", "timezone: Europe/Londn")
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "m.yaml", REGISTRY)
    assert "m.yaml:8: sources[0].time.timezone: unknown IANA time zone 'Europe/Londn'" in str(
        err.value
    )
    text = GOOD.replace('id: "bhm-{code|slug}"', 'id: "bhm-{code|shout}"')
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "m.yaml", REGISTRY)
    assert "m.yaml:10: sources[0].devices[0].id: unknown filter 'shout'" in str(err.value)


def test_registry_checks_report_units_metrics_and_domains() -> None:
    text = GOOD.replace("unit: spaces", "unit: l/s").replace(
        "          capacity: {column",
        "          pm25: {column: occ, unit: ug/m3}\n          capacity: {column",
    )
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "m.yaml", REGISTRY)
    message = str(err.value)
    assert "m.yaml:17: sources[0].devices[0].metrics.pm25: pm25 is a air metric" in message
    assert "m.yaml:18: sources[0].devices[0].metrics.capacity.unit: unit 'l/s' is not" in message


def test_missing_required_keys_and_yaml_booleans() -> None:
    text = GOOD.replace("    time: {column: when,", "    time: {colum: when,")
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "m.yaml", REGISTRY)
    assert "m.yaml:8: sources[0].time.colum: unknown key 'colum'" in str(err.value)
    with pytest.raises(MappingError, match=r"m.yaml:1: \(top\): expected a mapping|m.yaml:1:"):
        parse_mapping("- a\n- b\n", "m.yaml", REGISTRY)


# --- rows to messages ----------------------------------------------------------------------------


def tiny(tmp_path: Path, csv_text: str, mapping_text: str = GOOD) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    (folder / "data.csv").write_text(csv_text)
    (tmp_path / "tiny.yaml").write_text(mapping_text)
    return tmp_path / "tiny.yaml"


def test_stray_tab_duplicate_negative_and_above_capacity_rows(tmp_path: Path) -> None:
    path = tiny(
        tmp_path,
        "BHMBCCMKT01,577,61,2016-10-04 07:59:42\n"
        "BHMBCCMKT01,577,263,2016-10-04 13:29:45\t\n"  # the stray tab of the real file
        "BHMBCCMKT01,577,263,2016-10-04 13:29:45\n"  # an exact duplicate
        "NIA North,480,-3,2016-10-16 15:57:16\n"
        "NIA North,480,-3,2016-10-16 15:57:16\n"  # a duplicate ingest quarantines: one row
        "BHMBCCPST01,317,320,2016-10-08 10:00:00\n"
        "short,row\n"
        "BHMBCCPST01,317,12,2016-13-08 10:00:00\n",
    )
    mapping = load_mapping(str(path), REGISTRY)
    plan = build_plan(mapping, tmp_path / "tiny", Selection(), REGISTRY)
    for m in plan.messages:
        plan.tally.published(m)
    tally = plan.tally
    assert tally.rows_read == 8
    assert tally.converted == {STRIPPED: 1}
    assert tally.rows_skipped == {Skip.BAD_ROW: 1, Skip.BAD_TIME: 1}
    assert "data.csv:7 (2 fields, expected 4)" in tally.examples[Skip.BAD_ROW][0]
    assert [m.device for m in plan.messages] == [
        "bhm-bhmbccmkt01",
        "bhm-bhmbccmkt01",
        "bhm-bhmbccmkt01",
        "bhm-bhmbccpst01",
        "bhm-nia-north",
        "bhm-nia-north",
    ]
    tab = plan.messages[1]
    assert tab.entries[0].ts_ms == int(utc("2016-10-04T12:29:45").timestamp() * 1000)  # BST
    assert tally.quirk_total(Quirk.DUPLICATE) == 4  # occupied and capacity of two duplicates
    assert tally.quirks[(Quirk.OUT_OF_RANGE, "occupied")] == 2
    assert tally.quirks[(Quirk.ABOVE_BOUND, "occupied")] == 1
    assert tally.quarantine_expected == {"out_of_range": 1}  # identical bytes fold into one row
    # distinct (device, metric, time) less the negative occupancy: 2 + 2 + 2 + 1
    assert tally.expected_stored == 7
    assert plan.devices["bhm-nia-north"].capacity == 480
    assert plan.devices["bhm-nia-north"].attributes == {"dataset": "tiny"}


def test_dst_rows_in_a_file_and_window_bounds_in_local_time(tmp_path: Path) -> None:
    text = GOOD.replace("Europe/London", "Europe/Rome").replace(
        '"%Y-%m-%d %H:%M:%S"', '"%d/%m/%Y %H:%M"'
    )
    rows = ["31/10/2021 01:00", "31/10/2021 02:00", "31/10/2021 02:00", "31/10/2021 03:00"]
    rows += ["27/03/2022 01:00", "27/03/2022 02:00", "27/03/2022 03:00"]
    path = tiny(tmp_path, "".join(f"P1,10,{i},{r}\n" for i, r in enumerate(rows)), text)
    mapping = load_mapping(str(path), REGISTRY)
    plan = build_plan(mapping, tmp_path / "tiny", Selection(), REGISTRY)
    times = [datetime.fromtimestamp(m.due_ms / 1000, UTC) for m in plan.messages]
    assert times == [
        utc("2021-10-30T23:00"),
        utc("2021-10-31T00:00"),
        utc("2021-10-31T01:00"),
        utc("2021-10-31T02:00"),
        utc("2022-03-27T00:00"),
        utc("2022-03-27T01:00"),
    ]
    assert plan.tally.rows_skipped == {Skip.DST_GAP: 1}
    assert plan.tally.examples[Skip.DST_GAP] == ["data.csv:6 (27/03/2022 02:00)"]
    window = Selection(since=datetime(2021, 10, 31, 2), until=datetime(2021, 10, 31, 3))
    plan = build_plan(mapping, tmp_path / "tiny", window, REGISTRY)
    # [02:00 CEST, 03:00 CET): both 02:00 rows
    assert [m.entries[0].value for m in plan.messages] == [1, 2]
    assert plan.tally.filtered == {"rows outside the window": 4}


def test_device_filter_limit_and_id_collisions(tmp_path: Path) -> None:
    csv_text = (
        "A 1,10,1,2016-10-04 08:00:00\nB,10,2,2016-10-04 09:00:00\nB,10,3,2016-10-04 10:00:00\n"
    )
    path = tiny(tmp_path, csv_text)
    mapping = load_mapping(str(path), REGISTRY)
    plan = build_plan(mapping, tmp_path / "tiny", Selection(devices=("bhm-b",), limit=1), REGISTRY)
    assert [m.entries[0].value for m in plan.messages] == [2]
    assert plan.tally.filtered == {"records of other devices": 1, "messages after --limit": 1}
    plan = build_plan(mapping, tmp_path / "tiny", Selection(devices=("zz*",)), REGISTRY)
    assert plan.messages == [] and "--devices zz* matched no device" in plan.tally.notes[0]
    tiny(tmp_path, "A 1,10,1,2016-10-04 08:00:00\nA-1,10,2,2016-10-04 09:00:00\n")
    with pytest.raises(DatasetError, match="made from both"):
        build_plan(mapping, tmp_path / "tiny", Selection(), REGISTRY)


def test_missing_column_and_missing_folder_are_explained(tmp_path: Path) -> None:
    text = GOOD.replace("header: false, columns: [code, cap, occ, when]", "header: true")
    mapping = load_mapping(str(tiny(tmp_path, "code,cap,occupancy,when\n", text)), REGISTRY)
    with pytest.raises(DatasetError, match=r"columns \['occ'\]"):
        build_plan(mapping, tmp_path / "tiny", Selection(), REGISTRY)
    with pytest.raises(DatasetError, match="URBANPULSE_DATASETS"):
        build_plan(mapping, tmp_path / "nowhere", Selection(), REGISTRY)


def test_shift_to_now_is_whole_minutes_and_never_in_the_future() -> None:
    last = int(utc("2016-12-19T16:30:35").timestamp() * 1000)
    msg = Message(last, "d", "parking", False, (Entry(last, "occupied", 1, "count"),), ROME)
    now = datetime(2026, 11, 26, 22, 39, 15, 500_000, tzinfo=UTC)
    shift = shift_to_now([msg], now)
    assert shift % 60_000 == 0
    landed = last + shift
    assert now.timestamp() * 1000 - 60_000 < landed <= now.timestamp() * 1000


# --- payloads as ingest reads them ---------------------------------------------------------------


def parsed(device: str, domain: str, body: bytes) -> dict[str, float]:
    outcome = parse_message(
        InboundMessage(f"yc/v1/{domain}/{device}", body, datetime.now(UTC)),
        registry=REGISTRY,
        devices={device: DeviceRef(device, domain)},
        prefix="yc/v1",
        now=datetime.now(UTC),
    )
    assert not outcome.rejections, outcome.rejections
    return {f"{r.metric}@{r.ts.isoformat()}": r.value for r in outcome.readings}


def test_units_are_converted_by_ingest_and_times_carry_the_local_offset() -> None:
    ts = int(utc("2021-10-31T00:00").timestamp() * 1000)
    flow = Message(ts, "bwdf-dma-1", "water", False, (Entry(ts, "flow", 6.55, "l/s"),), ROME)
    body = payload(flow)
    assert json.loads(body)["ts"] == "2021-10-31T02:00:00+02:00"  # the first 02:00
    winter = Message(
        ts + 3_600_000,
        "bwdf-dma-1",
        "water",
        False,
        (Entry(ts + 3_600_000, "flow", 1, "l/s"),),
        ROME,
    )
    assert json.loads(payload(winter))["ts"] == "2021-10-31T02:00:00+01:00"  # the second
    assert parsed("bwdf-dma-1", "water", body) == {
        "flow@2021-10-31T00:00:00+00:00": pytest.approx(23.58)
    }
    bj = ZoneInfo("Asia/Shanghai")
    t = int(utc("2015-12-01T22:00").timestamp() * 1000)
    air = Message(
        t,
        "bj-dongsi",
        "air",
        False,
        (Entry(t, "co", 10000, "ug/m3"), Entry(t, "pm25", 386, "ug/m3")),
        bj,
    )
    assert json.loads(payload(air))["ts"] == "2015-12-02T06:00:00+08:00"
    values = parsed("bj-dongsi", "air", payload(air))
    assert values["co@2015-12-01T22:00:00+00:00"] == pytest.approx(10.0)  # mg/m³
    assert values["pm25@2015-12-01T22:00:00+00:00"] == 386
    depth = Message(
        t + 60_000,
        "nyc-q-x",
        "flood",
        True,
        (Entry(t, "depth", 17.72, "in"), Entry(t + 60_000, "depth", 0.5, "in")),
        ZoneInfo("UTC"),
    )
    assert parsed("nyc-q-x", "flood", payload(depth)) == {
        "depth@2015-12-01T22:00:00+00:00": pytest.approx(45.0088),
        "depth@2015-12-01T22:01:00+00:00": pytest.approx(1.27),
    }


def test_a_value_that_is_not_a_number_is_published_as_text_for_ingest_to_quarantine() -> None:
    t = int(utc("2016-10-04T08:00").timestamp() * 1000)
    msg = Message(
        t,
        "bhm-x",
        "parking",
        False,
        (
            Entry(t, "occupied", "n/a?", "count", (Quirk.NOT_A_NUMBER,)),
            Entry(t, "capacity", 5, "spaces"),
        ),
        ROME,
    )
    outcome = parse_message(
        InboundMessage("yc/v1/parking/bhm-x", payload(msg), datetime.now(UTC)),
        registry=REGISTRY,
        devices={"bhm-x": DeviceRef("bhm-x", "parking")},
        prefix="yc/v1",
        now=datetime.now(UTC),
    )
    assert [r.reason.value for r in outcome.rejections] == ["bad_value"]
    assert [r.metric for r in outcome.readings] == ["capacity"]


def test_expected_counts_follow_ingest_unique_key_and_quarantine_folding() -> None:
    t = int(utc("2016-10-16T14:57:16").timestamp() * 1000)

    def msg(value: float, *quirks: Quirk) -> Message:
        return Message(
            t, "p", "parking", False, (Entry(t, "occupied", value, "count", quirks),), ROME
        )

    tally = Tally("x")
    tally.published(msg(-3, Quirk.OUT_OF_RANGE))  # quarantined: nothing stored
    tally.published(msg(-3, Quirk.OUT_OF_RANGE))  # same bytes: the same quarantine row
    tally.published(msg(4))  # the first valid reading of the key: stored
    tally.published(msg(5))  # another value for a stored key: ingest keeps the first
    assert tally.expected_stored == 1
    assert tally.quarantine_expected == {"out_of_range": 1}
    assert tally.quirks == {
        (Quirk.OUT_OF_RANGE, "occupied"): 2,
        (Quirk.DUPLICATE, "occupied"): 1,
        (Quirk.CONFLICT, "occupied"): 2,
    }


def test_a_key_given_twice_is_an_error_not_a_silent_override() -> None:
    again = "          occupied: {column: cap, unit: count}\n"
    text = GOOD + again
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "m.yaml", REGISTRY)
    assert (
        "m.yaml:18: sources[0].devices[0].metrics.occupied: duplicate key (first at line 16)"
        in str(err.value)
    )
