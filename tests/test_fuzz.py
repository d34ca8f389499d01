"""Fuzzing message validation: property-based (hypothesis) over topics, bytes and JSON
documents, the hostile inputs a broken gateway sends, and a short coverage-guided run of atheris
(`make fuzz` runs it for longer). Whatever comes in ends stored or quarantined with a reason;
nothing raises. The target and its invariants are in tests/fuzz_parse.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_parse import LIMITS, MS, PREFIX, check, fuzz_one, write_seeds
from tests.pipeline import InThreadIngest, publish, settings_for, stored, wait_until
from tests.services import Mosquitto
from tests.streams import DEVICES
from tests.test_contract import json_values
from urbanpulse.contract.model import Reason
from urbanpulse.db.devices import upsert_devices

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [
    f"{PREFIX}/air/aq1",
    f"{PREFIX}/water/wn1",
    f"{PREFIX}/flood/fl1",
    f"{PREFIX}/parking/pk1",
]
METRICS = ["pm25", "pm10", "o3", "flow", "pressure", "volume", "depth", "rain", "occupied", "x"]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1e308, -1e308, 5e-324]),
)
times = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.just(MS),
    st.text(max_size=40),
    st.sampled_from(["2026-07-01T07:59:00+08:00", "2026-07-01T07:59:00", "yesterday", ""]),
)
entries = st.fixed_dictionaries(
    {"metric": st.sampled_from(METRICS), "value": numbers},
    optional={"ts": times, "unit": st.sampled_from(["ug/m3", "mg/m3", "m3/h", "cm", "?"])},
)
documents = st.one_of(
    st.fixed_dictionaries(
        {"values": st.dictionaries(st.sampled_from(METRICS), numbers, max_size=6)},
        optional={"ts": times, "device": st.sampled_from(["aq1", "wn1", "other", ""])},
    ),
    st.lists(entries, max_size=20),
    json_values,
)


topics = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda domain, device: f"{PREFIX}/{domain}/{device}",
        st.one_of(st.sampled_from(["air", "water", "flood", "parking"]), st.text(max_size=10)),
        st.one_of(st.sampled_from(["aq1", "wn1", "fl1", "pk1"]), st.text(max_size=20)),
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=st.binary(max_size=400))
def test_any_topic_and_bytes(topic: str, payload: bytes) -> None:
    check(topic, payload)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(TOPICS), doc=documents)
def test_any_document_on_a_real_devices_topic(topic: str, doc: Any) -> None:
    # Python's json writes NaN and Infinity as the bare words some devices send
    check(topic, json.dumps(doc, allow_nan=True).encode())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_the_atheris_entry_point_holds_for_any_input(data: bytes) -> None:
    fuzz_one(data)


def _batch(n: int) -> bytes:
    return json.dumps([{"ts": MS, "metric": "pm25", "value": 30} for _ in range(n)]).encode()


STORED = "stored"  # a case whose readings are all stored
HOSTILE: dict[str, tuple[str, bytes, Reason | str]] = {
    "oversize payload": (TOPICS[0], b" " * (LIMITS.max_payload_bytes + 1), Reason.OVERSIZE),
    "batch over the limit": (TOPICS[0], _batch(LIMITS.max_readings + 1), Reason.OVERSIZE),
    "batch at the limit": (TOPICS[0], _batch(LIMITS.max_readings), STORED),
    "nested 100 000 deep": (TOPICS[0], b"[" * 100_000 + b"]" * 100_000, Reason.OVERSIZE),
    "nested 10 000 deep": (TOPICS[0], b"[" * 10_000 + b"]" * 10_000, Reason.BAD_JSON),
    "nested objects": (TOPICS[0], b'{"a":' * 5_000 + b"1" + b"}" * 5_000, Reason.BAD_JSON),
    "invalid UTF-8": (TOPICS[0], b'{"values": {"pm25": "\xc3\x28"}}', Reason.BAD_JSON),
    "UTF-16": (TOPICS[0], '{"values": {"pm25": 1}}'.encode("utf-16"), Reason.BAD_JSON),
    "NaN": (TOPICS[0], b'{"ts": %d, "values": {"pm25": NaN}}' % MS, Reason.BAD_VALUE),
    "Infinity": (TOPICS[0], b'{"ts": %d, "values": {"pm25": Infinity}}' % MS, Reason.BAD_VALUE),
    "-Infinity": (TOPICS[0], b'{"ts": %d, "values": {"pm25": -Infinity}}' % MS, Reason.BAD_VALUE),
    "1e400": (TOPICS[0], b'{"ts": %d, "values": {"pm25": 1e400}}' % MS, Reason.BAD_VALUE),
    "huge integer": (
        TOPICS[0],
        b'{"ts": %d, "values": {"pm25": %s}}' % (MS, b"9" * 5000),
        Reason.BAD_JSON,  # Python's own limit on digits
    ),
    "NUL in a key": (
        TOPICS[0],
        b'{"ts": %d, "values": {"pm\\u000025": 1}}' % MS,
        Reason.UNKNOWN_METRIC,
    ),
    "lone surrogate in a key": (
        TOPICS[0],
        b'{"ts": %d, "values": {"\\ud800": 1}}' % MS,
        Reason.UNKNOWN_METRIC,
    ),
    "a thousand unknown keys": (
        TOPICS[0],
        json.dumps({"ts": MS, "values": {f"k{i}": 1 for i in range(1000)}}).encode(),
        Reason.UNKNOWN_METRIC,
    ),
    "NUL in the topic": (f"{PREFIX}/air/a\x00q1", b"{}", Reason.BAD_TOPIC),
    "NUL as the device": (f"{PREFIX}/air/\x00", b"{}", Reason.BAD_TOPIC),
    "control character in the topic": (f"{PREFIX}/air/aq1\x1b", b"{}", Reason.BAD_TOPIC),
    "long topic": (f"{PREFIX}/air/" + "x" * 10_000, b"{}", Reason.UNKNOWN_DEVICE),
    "empty payload": (TOPICS[0], b"", Reason.BAD_JSON),
    "BOM": (
        TOPICS[0],
        b'\xef\xbb\xbf{"ts": %d, "values": {"pm25": 1}}' % MS,
        Reason.BAD_JSON,
    ),
    "string numbers": (
        TOPICS[0],
        b'{"ts": "%d", "values": {"pm25": "35"}}' % MS,
        Reason.BAD_TIMESTAMP,
    ),
    "duplicate keys": (TOPICS[0], b'{"ts": %d, "values": {"pm25": 1, "pm25": 2}}' % MS, STORED),
    "year 9999": (
        TOPICS[0],
        b'{"ts": 253402300799000, "values": {"pm25": 1}}',
        Reason.FUTURE_TIMESTAMP,
    ),
    "year 1 with an offset": (
        TOPICS[0],
        b'{"ts": "0001-01-01T00:00:00+01:00", "values": {"pm25": 1}}',
        Reason.BAD_TIMESTAMP,
    ),
    "year 9999 with an offset": (
        TOPICS[0],
        b'{"ts": "9999-12-31T23:59:59-01:00", "values": {"pm25": 1}}',
        Reason.BAD_TIMESTAMP,
    ),
    "other device named": (
        TOPICS[0],
        b'{"device": "wn1", "values": {"pm25": 1}}',
        Reason.TOPIC_MISMATCH,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_inputs_end_quarantined_with_a_reason(case: str) -> None:
    topic, payload, expected = HOSTILE[case]
    out = check(topic, payload)
    if expected == STORED:
        assert out.readings and not out.rejections, out
    else:
        assert not out.readings and out.rejections[0].reason == expected, out
        assert {r.reason for r in out.rejections} == {expected}, out


def test_many_rejections_are_counted_not_listed() -> None:
    out = check(*HOSTILE["a thousand unknown keys"][:2])
    assert len(out.rejections) == 101 and out.rejections[-1].detail == "and 900 more rejection(s)"


def test_hostile_inputs_through_the_real_pipeline_end_stored_or_quarantined(
    db_url: str, broker: Mosquitto, prefix: str
) -> None:
    """The same inputs through a real broker and ingest worker into PostgreSQL: each message's
    readings are stored and its rejections quarantined (a NUL in a topic is not MQTT: brokers
    refuse it, so those stay with the pure tests)."""
    with psycopg.connect(db_url) as conn:
        upsert_devices(conn, DEVICES)
    cases = {k: v for k, v in HOSTILE.items() if v[0].isprintable()}
    messages = [(t.replace(PREFIX, prefix, 1), p) for t, p, _ in cases.values()]
    expected = {(t, p): check(t.replace(prefix, PREFIX, 1), p) for t, p in messages}
    settings = settings_for(
        db_url,
        broker.url,
        prefix,
        ingest_max_payload_bytes=LIMITS.max_payload_bytes,
        ingest_max_readings_per_message=LIMITS.max_readings,
    )

    def accounted() -> dict[tuple[str, bytes], str]:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute("SELECT topic, payload, reason FROM quarantine").fetchall()
        return {(str(t), bytes(p)): str(r) for t, p, r in rows}

    with InThreadIngest(settings):
        publish(broker.url, messages)
        wanted = {k for k, out in expected.items() if out.rejections}
        wait_until(lambda: wanted <= set(accounted()), timeout=60, what="quarantined")
        readings = {
            (r.device_id, r.metric, int(r.ts.timestamp() * 1000))
            for out in expected.values()
            for r in out.readings
        }
        wait_until(lambda: readings <= stored(db_url), timeout=60, what="stored")
    found = accounted()
    assert len(wanted) >= 15 and readings  # the cases did arrive
    for key, out in expected.items():
        if out.rejections:
            assert found[key] == out.rejections[0].reason.value, key[0]
        else:
            assert key not in found


def test_a_short_coverage_guided_run_finds_nothing(tmp_path: Path) -> None:
    """atheris (libFuzzer) for a bounded number of runs from the seed corpus."""
    corpus = tmp_path / "corpus"
    write_seeds(corpus)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz_parse",
            "-runs=20000",
            "-max_total_time=60",
            "-max_len=4096",
            "-seed=1",
            str(corpus),
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done" in done.stderr or "runs in" in done.stderr, done.stderr[-2000:]
    # instrumented: libFuzzer sees the validation code's branches (a plain run shows a handful)
    covered = [int(n) for n in re.findall(r"cov: (\d+)", done.stderr)]
    assert covered and max(covered) > 150, done.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
