"""Unit tests of the pure contract: payload forms, units, timestamps and rejection reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urbanpulse.contract import (
    DeviceRef,
    InboundMessage,
    Limits,
    Reason,
    default_registry,
    parse_message,
    parse_topic,
)
from urbanpulse.contract.registry import parse_registry
from urbanpulse.errors import ContractError

NOW = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
TS = int(NOW.timestamp() * 1000) - 60_000
DEVICES = {
    "aq1": DeviceRef("aq1", "air"),
    "fl1": DeviceRef("fl1", "flood"),
    "wn1": DeviceRef("wn1", "water"),
    "pk1": DeviceRef("pk1", "parking"),
}
TOPIC = {d: f"yc/v1/{ref.domain}/{d}" for d, ref in DEVICES.items()}


def parse(
    payload: Any,
    device: str = "aq1",
    topic: str | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg = InboundMessage(topic or TOPIC[device], raw, NOW)
    return parse_message(
        msg, registry=default_registry(), devices=DEVICES, prefix="yc/v1", now=NOW, limits=limits
    )


def test_single_reading_rfc3339_with_offset_is_stored_in_utc() -> None:
    out = parse({"metric": "pm25", "value": 35, "unit": "µg/m³", "ts": "2026-11-26T11:00:00+08:00"})
    assert out.rejections == ()
    (r,) = out.readings
    assert (r.device_id, r.metric, r.value) == ("aq1", "pm25", 35.0)
    assert r.ts == datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def test_several_metrics_with_units_are_converted() -> None:
    out = parse(
        {"ts": TS, "values": {"flow": {"value": 10, "unit": "L/s"}, "pressure": 0.3}}, device="wn1"
    )
    assert {r.metric: r.value for r in out.readings} == {
        "flow": pytest.approx(36.0),
        "pressure": 0.3,
    }


@pytest.mark.parametrize(
    ("device", "metric", "value", "unit", "expected"),
    [
        ("fl1", "depth", 6, "in", 15.24),  # FloodNet reports inches
        ("fl1", "depth", 150, "mm", 15.0),
        ("aq1", "co", 1200, "ug/m3", 1.2),  # HJ 633 wants CO in mg/m³
        ("aq1", "co", 1200, "μg/m3", 1.2),  # greek mu spelling
        ("aq1", "no2", 10, "ppb", 18.82),
        ("wn1", "pressure", 320, "kPa", 0.32),
        ("wn1", "volume", 1500, "L", 1.5),
        ("pk1", "occupied", 12, None, 12.0),
    ],
)
def test_unit_conversions(
    device: str, metric: str, value: float, unit: str | None, expected: float
) -> None:
    body: dict[str, Any] = {"metric": metric, "value": value, "ts": TS}
    if unit:
        body["unit"] = unit
    (r,) = parse(body, device=device).readings
    assert r.value == pytest.approx(expected)


def test_batch_keeps_good_entries_and_rejects_bad_ones_with_their_index() -> None:
    out = parse(
        {
            "readings": [
                {"metric": "occupied", "value": 10, "ts": TS},
                {"metric": "occupied", "value": -3, "ts": TS + 1000},
                {"metric": "capacity", "value": 50, "ts": TS},
            ]
        },
        device="pk1",
    )
    assert [r.metric for r in out.readings] == ["occupied", "capacity"]
    assert [(j.reason, j.index) for j in out.rejections] == [(Reason.OUT_OF_RANGE, 1)]


def test_batch_level_ts_applies_to_entries_without_one() -> None:
    out = parse(
        {"ts": TS, "readings": [{"metric": "pm25", "value": 1}, {"metric": "pm10", "value": 2}]}
    )
    assert [r.ts for r in out.readings] == [datetime.fromtimestamp(TS / 1000, UTC)] * 2


def test_array_of_readings_is_a_batch() -> None:
    out = parse([{"metric": "pm25", "value": 1, "ts": TS}, {"metric": "o3", "value": 2, "ts": TS}])
    assert len(out.readings) == 2 and not out.rejections


def test_one_bad_value_of_several_metrics_keeps_the_others() -> None:
    out = parse({"ts": TS, "values": {"pm25": 10, "pm10": "n/a", "so2": 5}})
    assert sorted(r.metric for r in out.readings) == ["pm25", "so2"]
    assert out.reason == Reason.BAD_VALUE


def test_senml_with_base_name_time_and_unit() -> None:
    bt = TS / 1000
    out = parse(
        [
            {"bn": "urn:dev:yc:fl1:", "bt": bt, "bu": "in", "n": "depth", "v": 2},
            {"n": "depth", "t": 60, "v": 3},
        ],
        device="fl1",
    )
    assert not out.rejections
    assert [r.value for r in out.readings] == [pytest.approx(5.08), pytest.approx(7.62)]
    assert out.readings[1].ts - out.readings[0].ts == timedelta(seconds=60)


def test_senml_relative_time_is_rejected_because_we_never_invent_time() -> None:
    out = parse([{"n": "depth", "u": "cm", "v": 3}], device="fl1")
    assert out.reason == Reason.BAD_TIMESTAMP


def test_senml_name_for_another_device_is_a_topic_mismatch() -> None:
    out = parse([{"bn": "fl2:", "bt": TS / 1000, "n": "depth", "v": 3}], device="fl1")
    assert out.reason == Reason.TOPIC_MISMATCH


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", Reason.BAD_JSON),
        (b'{"metric": ', Reason.BAD_JSON),
        (b"[" * 100_000, Reason.BAD_JSON),
        (b'"just a string"', Reason.BAD_SCHEMA),
        (b"[]", Reason.BAD_SCHEMA),
        ({"value": 3, "ts": TS}, Reason.BAD_SCHEMA),
        ({"metric": "pm1", "value": 3, "ts": TS}, Reason.UNKNOWN_METRIC),
        ({"metric": "depth", "value": 3, "ts": TS}, Reason.UNKNOWN_METRIC),  # not an air metric
        ({"metric": "pm25", "value": 3, "unit": "ppm", "ts": TS}, Reason.BAD_UNIT),
        ({"metric": "pm25", "value": True, "ts": TS}, Reason.BAD_VALUE),
        ({"metric": "pm25", "ts": TS}, Reason.BAD_VALUE),
        (b'{"metric": "pm25", "value": NaN, "ts": 1764000000000}', Reason.BAD_VALUE),
        (b'{"metric": "pm25", "value": Infinity, "ts": 1764000000000}', Reason.BAD_VALUE),
        ({"metric": "pm25", "value": 1e400 if False else 10**400, "ts": TS}, Reason.BAD_VALUE),
        ({"metric": "pm25", "value": 5000, "ts": TS}, Reason.OUT_OF_RANGE),
        ({"metric": "pm25", "value": -1, "ts": TS}, Reason.OUT_OF_RANGE),
        ({"metric": "pm25", "value": 3}, Reason.BAD_TIMESTAMP),
        ({"metric": "pm25", "value": 3, "ts": "2026-11-26T10:00:00"}, Reason.BAD_TIMESTAMP),
        ({"metric": "pm25", "value": 3, "ts": "yesterday"}, Reason.BAD_TIMESTAMP),
        ({"metric": "pm25", "value": 3, "ts": TS // 1000}, Reason.BAD_TIMESTAMP),  # seconds
        ({"metric": "pm25", "value": 3, "ts": TS + 3_600_000}, Reason.FUTURE_TIMESTAMP),
        ({"metric": "pm25", "value": 3, "ts": TS, "device": "aq2"}, Reason.TOPIC_MISMATCH),
    ],
)
def test_rejection_reasons(payload: Any, reason: Reason) -> None:
    out = parse(payload)
    assert out.reason == reason, out.rejections
    assert out.readings == ()


def test_seconds_instead_of_milliseconds_gets_a_hint() -> None:
    out = parse({"metric": "pm25", "value": 3, "ts": TS // 1000})
    assert "milliseconds" in out.rejections[0].detail


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("yc/v1/air", Reason.BAD_TOPIC),
        ("yc/v1/air/aq1/extra", Reason.BAD_TOPIC),
        ("other/air/aq1", Reason.BAD_TOPIC),
        ("yc/v1/noise/aq1", Reason.BAD_TOPIC),
        ("yc/v1/air/ghost", Reason.UNKNOWN_DEVICE),
        ("yc/v1/water/aq1", Reason.TOPIC_MISMATCH),
    ],
)
def test_topic_problems(topic: str, reason: Reason) -> None:
    assert parse({"metric": "pm25", "value": 3, "ts": TS}, topic=topic).reason == reason


def test_unknown_device_is_reported_only_for_otherwise_valid_json() -> None:
    # replaying after provisioning cannot fix bad JSON, so that reason wins
    assert parse(b"{", topic="yc/v1/air/ghost").reason == Reason.BAD_JSON


def test_oversize_payload_and_batch() -> None:
    assert parse(b"x" * 300, limits=Limits(max_payload_bytes=200)).reason == Reason.OVERSIZE
    many = [{"metric": "pm25", "value": 1, "ts": TS + i} for i in range(11)]
    assert parse(many, limits=Limits(max_readings=10)).reason == Reason.OVERSIZE


def test_parse_topic() -> None:
    assert parse_topic("yc/v1/air/aq1", "yc/v1") == ("air", "aq1")
    assert parse_topic("yc/v1/air/", "yc/v1") is None


def test_registry_is_strict_and_reports_every_problem() -> None:
    doc = {
        "domains": {"air": "x"},
        "metrics": {
            "a": {"domain": "air", "unit": "u", "min": 0, "max": 1, "units": {"u": 1}, "colour": 1},
            "b": {"domain": "sea", "unit": "u", "min": 0, "max": 1, "units": {"u": 1}},
            "c": {"domain": "air", "unit": "u", "min": 0, "max": 1, "units": {"v": 2}},
        },
    }
    with pytest.raises(ContractError) as err:
        parse_registry(doc, "test.yaml")
    text = str(err.value)
    assert "'a'" in text and "colour" in text and "'b'" in text and "'c'" in text


def test_every_registry_metric_accepts_its_canonical_unit() -> None:
    reg = default_registry()
    assert set(reg.domains) == {"water", "flood", "air", "parking"}
    for metric in reg.metrics.values():
        assert metric.to_canonical(2.0, metric.unit) == 2.0


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "metric",
                    "value",
                    "ts",
                    "unit",
                    "values",
                    "readings",
                    "device",
                    "n",
                    "v",
                    "bn",
                    "bt",
                    "u",
                    "t",
                ]
            )
            | st.text(max_size=4),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=300))
def test_any_bytes_end_as_readings_or_rejections(payload: bytes) -> None:
    out = parse(payload)
    assert out.readings or out.rejections


@settings(max_examples=400, deadline=None)
@given(doc=json_values)
def test_any_json_ends_as_readings_or_rejections(doc: Any) -> None:
    out = parse(json.dumps(doc).encode())
    assert out.readings or out.rejections
    for r in out.readings:
        metric = default_registry().metrics[r.metric]
        assert metric.in_range(r.value)
