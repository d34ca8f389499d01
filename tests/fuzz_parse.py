"""The fuzz target of message validation: any topic and payload must end as readings to store
or rejections to quarantine, each with a reason, and never raise. Shared by the property tests
(tests/test_fuzz.py) and by coverage-guided fuzzing with atheris:

    python -m tests.fuzz_parse -max_total_time=300 build/fuzz-corpus

(`make fuzz` does that, with the seeds of `SEEDS` in the corpus; a crash leaves its input as
crash-<hash> in the working directory, and `python -m tests.fuzz_parse crash-<hash>` replays it.)"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from urbanpulse.contract.model import DeviceRef, InboundMessage, ParseOutcome, Reason
from urbanpulse.contract.parse import MAX_REJECTIONS, Limits, parse_message
from urbanpulse.contract.registry import default_registry
from urbanpulse.db.store import rejections_json

PREFIX = "yc/v1"
NOW = datetime(2026, 7, 1, 8, tzinfo=UTC)
LIMITS = Limits(max_payload_bytes=64 * 1024, max_readings=500)
REGISTRY = default_registry()
DEVICES = {
    "aq1": DeviceRef("aq1", "air"),
    "wn1": DeviceRef("wn1", "water"),
    "fl1": DeviceRef("fl1", "flood"),
    "pk1": DeviceRef("pk1", "parking"),
}
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MS = int((NOW - timedelta(minutes=1)).timestamp() * 1000)  # a good measurement time, epoch ms


def _parse(topic: str, payload: bytes) -> ParseOutcome:
    return parse_message(
        InboundMessage(topic=topic, payload=payload, received_at=NOW),
        registry=REGISTRY,
        devices=DEVICES,
        prefix=PREFIX,
        now=NOW,
        limits=LIMITS,
    )


def check(topic: str, payload: bytes) -> ParseOutcome:
    """Validate one message and assert what must hold of any outcome."""
    out = _parse(topic, payload)
    assert out == _parse(topic, payload), "not deterministic"
    assert out.readings or out.rejections, "neither stored nor quarantined"
    assert len(out.readings) <= LIMITS.max_readings
    assert len(out.rejections) <= MAX_REJECTIONS + 1
    for rej in out.rejections:
        assert isinstance(rej.reason, Reason)
        # parse_message's last resort caught an exception: a bug, even if ingest survives it
        assert not rej.detail.startswith("validation failed"), rej.detail
        assert isinstance(rej.detail, str) and len(rej.detail) <= 500, rej.detail
    # the details as the quarantine stores them (jsonb): encodable, and no NUL
    stored = rejections_json(out.rejections)
    stored.encode("utf-8")
    assert "\\u0000" not in stored and "\x00" not in stored, stored
    for r in out.readings:
        assert out.device_id in DEVICES and r.device_id == out.device_id
        metric = REGISTRY.metrics[r.metric]
        assert metric.domain == DEVICES[r.device_id].domain
        assert math.isfinite(r.value) and metric.in_range(r.value), r
        assert r.ts.tzinfo is not None and EARLIEST <= r.ts <= NOW + LIMITS.max_future, r
    if out.device_id is not None:
        assert out.device_id.isprintable()  # stored in quarantine.device_id (text)
    return out


def fuzz_one(data: bytes) -> None:
    """One atheris input: a topic (from a few likely shapes) and the rest as payload."""
    if not data:
        return
    shape, rest = data[0], data[1:]
    topics = [f"{PREFIX}/air/aq1", f"{PREFIX}/water/wn1", f"{PREFIX}/flood/fl1"]
    if shape < 200:
        topic = topics[shape % len(topics)]
        payload = rest
    else:  # the topic itself from the input, up to the first newline
        raw, _, payload = rest.partition(b"\n")
        topic = raw.decode("utf-8", "replace")
    check(topic, payload)


SEEDS = {
    # one of each payload form of the contract, and the classic mistakes
    "values": b'{"ts": %d, "values": {"pm25": 35.5, "pm10": 60, "o3": 80}}',
    "entries": b'[{"ts": %d, "metric": "pm25", "value": 40, "unit": "ug/m3"}]',
    "senml": b'[{"bn": "aq1/", "bt": 1782892800, "n": "pm25", "u": "ug/m3", "v": 41}]',
    "nan": b'{"ts": %d, "values": {"pm25": NaN}}',
    "nested": b"[" * 50 + b"]" * 50,
    "utf8": b'{"ts": %d, "values": {"pm25": "\xff\xfe"}}',
}


def write_seeds(folder: Path) -> None:
    out = folder
    out.mkdir(parents=True, exist_ok=True)
    for name, body in SEEDS.items():
        data = body % MS if b"%d" in body else body
        (out / name).write_bytes(b"\x00" + data)


def main() -> None:
    import atheris

    atheris.instrument_all()  # the validation code is already imported: instrument it in place
    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
