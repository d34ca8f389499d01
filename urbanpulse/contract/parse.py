"""Turn one raw MQTT message into readings and rejections: a pure function of its inputs.

Payload forms (docs/contract.md has the full text):

* one reading       {"metric": "pm25", "value": 35, "unit": "ug/m3", "ts": "...+08:00"}
* several metrics   {"ts": 1764000000000, "values": {"flow": 12.5, "pressure": 0.31}}
* a batch           {"readings": [<reading or several-metrics entry>, ...]} or a JSON array of them
* SenML (RFC 8428)  [{"bn": "<device_id>:", "bt": 1764000000, "n": "depth", "u": "cm", "v": 3}]

Validation never raises: every problem becomes a Rejection with a Reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from urbanpulse.contract.model import (
    DeviceRef,
    InboundMessage,
    ParseOutcome,
    Reading,
    Reason,
    Rejection,
)
from urbanpulse.contract.registry import Registry

if TYPE_CHECKING:
    from urbanpulse.settings import Settings

# Epoch milliseconds before 2000-01-01 are almost always epoch *seconds* sent by mistake.
MIN_EPOCH_MS = 946_684_800_000
MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
# RFC 8428 §4.5.3: SenML times below 2**28 are relative to "now"; we never invent a time.
SENML_RELATIVE_LIMIT = 2**28
SENML_KEYS = frozenset(
    {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"}
)
SENML_BASE_KEYS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver"})
# How much of a bad value is quoted back in a rejection detail.
QUOTE_LIMIT = 60
MAX_REJECTIONS = 100  # per message: the rest are counted, not listed


@dataclass(frozen=True, slots=True)
class Limits:
    """The tunable bounds of validation (from Settings)."""

    max_payload_bytes: int = 262_144
    max_readings: int = 10_000
    max_future: timedelta = timedelta(minutes=5)

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The bounds configured in settings (ingest and quarantine replay use the same)."""
        return cls(
            settings.ingest_max_payload_bytes,
            settings.ingest_max_readings_per_message,
            timedelta(seconds=settings.ingest_max_future_s),
        )


class _Reject(Exception):
    """Internal: abandons the current entry with a reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _quote(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "…"


def _name(text: str) -> str:
    """A name a device sent (in a topic or a payload's keys), as a detail shows it: as it is
    when short and printable, quoted (escaped and cut) otherwise, so that a detail stays short
    and holds nothing PostgreSQL's text refuses, whatever a device sends."""
    return text if len(text) <= QUOTE_LIMIT and text.isprintable() else _quote(text)


def parse_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """(domain, device_id) of a topic <prefix>/<domain>/<device_id>, or None (also for a topic
    with control or unprintable characters: no device id holds one, and PostgreSQL's text
    refuses NUL and lone surrogates)."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.isprintable():
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def parse_time(raw: Any, now: datetime, max_future: timedelta) -> datetime:
    """A measurement time: epoch milliseconds or RFC 3339 with a timezone."""
    if raw is None:
        raise _Reject(Reason.BAD_TIMESTAMP, "missing measurement time 'ts'")
    if isinstance(raw, bool):
        raise _Reject(Reason.BAD_TIMESTAMP, f"ts must be epoch ms or RFC 3339, got {_quote(raw)}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or raw < MIN_EPOCH_MS:
            hint = " (epoch seconds? ts is in milliseconds)" if 1e9 <= raw < 1e10 else ""
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} is before 2000{hint}")
        try:
            ts = datetime.fromtimestamp(raw / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} is out of range") from None
    elif isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} is not RFC 3339") from None
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} has no timezone")
        try:
            ts = ts.astimezone(UTC)
        except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} is out of range") from None
        if ts < MIN_TIME:
            raise _Reject(Reason.BAD_TIMESTAMP, f"ts {_quote(raw)} is before 2000")
    else:
        raise _Reject(Reason.BAD_TIMESTAMP, f"ts must be epoch ms or RFC 3339, got {_quote(raw)}")
    if ts > now + max_future:
        raise _Reject(
            Reason.FUTURE_TIMESTAMP,
            f"ts {ts.isoformat()} is {(ts - now).total_seconds():.0f} s in the future",
        )
    return ts


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Reject(Reason.BAD_VALUE, f"value must be a number, got {_quote(raw)}")
    try:
        value = float(raw)
    except OverflowError:
        raise _Reject(Reason.BAD_VALUE, "value is too large") from None
    if not math.isfinite(value):
        raise _Reject(Reason.BAD_VALUE, f"value must be finite, got {value}")
    return value


class _Validator:
    """Validates the entries of one message against the registry and its device."""

    def __init__(
        self, registry: Registry, device: DeviceRef, now: datetime, limits: Limits
    ) -> None:
        self.registry = registry
        self.device = device
        self.now = now
        self.limits = limits

    def reading(self, metric_name: Any, raw_value: Any, unit: Any, ts: datetime) -> Reading:
        if not isinstance(metric_name, str) or not metric_name:
            raise _Reject(
                Reason.BAD_SCHEMA, f"metric must be a non-empty string, got {_quote(metric_name)}"
            )
        metric = self.registry.metric(metric_name)
        if metric is None:
            raise _Reject(Reason.UNKNOWN_METRIC, f"unknown metric {_quote(metric_name)}")
        if metric.domain != self.device.domain:
            raise _Reject(
                Reason.UNKNOWN_METRIC,
                f"{metric_name} is a {metric.domain} metric; "
                f"device {self.device.device_id} is "
                f"{self.device.domain}",
            )
        value = _number(raw_value)
        if unit is not None and not isinstance(unit, str):
            raise _Reject(Reason.BAD_UNIT, f"unit must be a string, got {_quote(unit)}")
        canonical = metric.to_canonical(value, unit)
        if canonical is None:
            raise _Reject(
                Reason.BAD_UNIT,
                f"unit {_quote(unit)} not accepted for {metric_name} (canonical {metric.unit})",
            )
        if not metric.in_range(canonical):
            raise _Reject(
                Reason.OUT_OF_RANGE,
                f"{metric_name}={canonical:g} {metric.unit} "
                f"outside [{metric.min:g}, {metric.max:g}]",
            )
        return Reading(self.device.device_id, metric_name, ts, canonical)

    def check_device_field(self, entry: Mapping[str, Any]) -> None:
        named = entry.get("device")
        if named is not None and named != self.device.device_id:
            raise _Reject(
                Reason.TOPIC_MISMATCH,
                f"payload names device {_quote(named)} but the topic is {self.device.device_id}",
            )

    def entry(
        self, entry: Any, default_ts: Any, index: int | None, rejections: list[Rejection]
    ) -> list[Reading]:
        """One JSON entry: a single reading or a several-metrics object.

        In a several-metrics object each value stands alone: a bad one is rejected, the others
        are kept.
        """
        if not isinstance(entry, dict):
            raise _Reject(Reason.BAD_SCHEMA, f"entry must be an object, got {_quote(entry)}")
        self.check_device_field(entry)
        ts = parse_time(entry.get("ts", default_ts), self.now, self.limits.max_future)
        if "values" in entry:
            values = entry["values"]
            if not isinstance(values, dict) or not values:
                raise _Reject(Reason.BAD_SCHEMA, "'values' must be a non-empty object")
            out = []
            for name, raw in values.items():
                try:
                    if isinstance(raw, dict):
                        out.append(self.reading(name, raw.get("value"), raw.get("unit"), ts))
                    else:
                        out.append(self.reading(name, raw, None, ts))
                except _Reject as rej:
                    rejections.append(
                        Rejection(rej.reason, f"{_name(str(name))}: {rej.detail}", index)
                    )
            return out
        if "metric" in entry:
            if "value" not in entry:
                raise _Reject(Reason.BAD_VALUE, "missing 'value'")
            return [self.reading(entry["metric"], entry["value"], entry.get("unit"), ts)]
        raise _Reject(Reason.BAD_SCHEMA, "entry needs 'metric' and 'value', or 'values'")

    def senml_name(self, name: str) -> str:
        """The metric part of a resolved SenML name; any prefix must end with the device id."""
        for sep in (":", "/"):
            if sep in name:
                prefix, metric = name.rsplit(sep, 1)
                last = prefix.replace("/", ":").rsplit(":", 1)[-1]
                if last != self.device.device_id:
                    raise _Reject(
                        Reason.TOPIC_MISMATCH,
                        f"SenML name {_quote(name)} is not for device {self.device.device_id}",
                    )
                return metric
        return name


def _is_senml(doc: list[Any]) -> bool:
    return (
        bool(doc)
        and isinstance(doc[0], dict)
        and bool(SENML_KEYS & doc[0].keys())
        and not ({"metric", "values"} & doc[0].keys())
    )


def _senml(v: _Validator, records: list[Any]) -> tuple[list[Reading], list[Rejection]]:
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    bn, bt, bu, bv = "", 0.0, None, 0.0
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, dict):
                raise _Reject(
                    Reason.BAD_SCHEMA, f"SenML record must be an object, got {_quote(rec)}"
                )
            if "bn" in rec:
                if not isinstance(rec["bn"], str):
                    raise _Reject(Reason.BAD_SCHEMA, "SenML bn must be a string")
                bn = rec["bn"]
            if "bt" in rec:
                bt = _number(rec["bt"])
            if "bu" in rec:
                bu = rec["bu"]
            if "bv" in rec:
                bv = _number(rec["bv"])
            has_value = any(k in rec for k in ("v", "vs", "vb", "vd", "s"))
            if not has_value:
                if rec.keys() - SENML_BASE_KEYS:
                    raise _Reject(Reason.BAD_VALUE, "SenML record has no value (v)")
                continue  # a record that only sets base fields
            if "v" not in rec:
                raise _Reject(Reason.BAD_VALUE, "only numeric SenML values (v) are accepted")
            name = bn + str(rec.get("n", ""))
            if not name:
                raise _Reject(Reason.BAD_SCHEMA, "SenML record has no name (n or bn)")
            seconds = bt + _number(rec.get("t", 0))
            if abs(seconds) < SENML_RELATIVE_LIMIT:
                raise _Reject(
                    Reason.BAD_TIMESTAMP,
                    "SenML time is relative (no bt/t as epoch "
                    "seconds); the measurement time is required",
                )
            ts = parse_time(seconds * 1000.0, v.now, v.limits.max_future)
            readings.append(
                v.reading(v.senml_name(name), bv + _number(rec["v"]), rec.get("u", bu), ts)
            )
        except _Reject as rej:
            rejections.append(Rejection(rej.reason, rej.detail, i))
    if not readings and not rejections:
        rejections.append(Rejection(Reason.BAD_SCHEMA, "SenML pack holds no values"))
    return readings, rejections


def _structure(v: _Validator, doc: Any) -> tuple[list[Reading], list[Rejection]]:
    readings: list[Reading] = []
    rejections: list[Rejection] = []
    default_ts: Any = None
    if isinstance(doc, list):
        if _is_senml(doc):
            return _senml(v, doc)
        entries: list[Any] = doc
    elif isinstance(doc, dict) and "readings" in doc:
        v.check_device_field(doc)
        if not isinstance(doc["readings"], list):
            raise _Reject(Reason.BAD_SCHEMA, "'readings' must be an array")
        entries, default_ts = doc["readings"], doc.get("ts")
    elif isinstance(doc, dict):
        entries = [doc]
    else:
        raise _Reject(
            Reason.BAD_SCHEMA, f"payload must be an object or array, got {type(doc).__name__}"
        )
    if not entries:
        raise _Reject(Reason.BAD_SCHEMA, "payload holds no readings")
    for i, entry in enumerate(entries):
        index = i if len(entries) > 1 else None
        try:
            readings.extend(v.entry(entry, default_ts, index, rejections))
        except _Reject as rej:
            rejections.append(Rejection(rej.reason, rej.detail, index))
    return readings, rejections


def decode_json(payload: bytes) -> Any:
    """Strict JSON decoding of a payload; raises _Reject(BAD_JSON).

    orjson decodes what is plain RFC 8259 JSON, about four times as fast as the standard
    library. Whatever it refuses goes through the standard library, which gives the detail a
    device's owner can act on, and stays as lenient as it always was (NaN, integers beyond 64
    bits, lone surrogates), so that such a payload is judged as before: by the checks on its
    values, not by which decoder read it."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(Reason.BAD_JSON, f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise _Reject(Reason.BAD_JSON, "JSON nested too deeply") from None
    except ValueError as exc:
        raise _Reject(Reason.BAD_JSON, f"invalid JSON: {exc}") from None


def parse_message(
    msg: InboundMessage,
    *,
    registry: Registry,
    devices: Mapping[str, DeviceRef],
    prefix: str,
    now: datetime,
    limits: Limits = Limits(),
) -> ParseOutcome:
    """Validate one message. Pure: same inputs, same outcome; never raises on bad input."""
    topic = parse_topic(msg.topic, prefix)
    device_id = topic[1] if topic else None
    domain = topic[0] if topic else None
    try:
        if len(msg.payload) > limits.max_payload_bytes:
            raise _Reject(
                Reason.OVERSIZE,
                f"payload is {len(msg.payload)} bytes, limit {limits.max_payload_bytes}",
            )
        if topic is None:
            raise _Reject(
                Reason.BAD_TOPIC, f"topic {_quote(msg.topic)} is not {prefix}/<domain>/<device_id>"
            )
        if domain not in registry.domains:
            raise _Reject(Reason.BAD_TOPIC, f"unknown domain {_quote(domain)}")
        doc = decode_json(msg.payload)
        if isinstance(doc, list) and len(doc) > limits.max_readings:
            raise _Reject(Reason.OVERSIZE, f"{len(doc)} entries, limit {limits.max_readings}")
        device = devices.get(device_id or "")
        if device is None:
            raise _Reject(
                Reason.UNKNOWN_DEVICE, f"device {_name(device_id or '')} is not provisioned"
            )
        if device.domain != domain:
            raise _Reject(
                Reason.TOPIC_MISMATCH, f"device {device_id} is {device.domain}, topic says {domain}"
            )
        validator = _Validator(registry, device, now, limits)
        readings, rejections = _structure(validator, doc)
        if len(readings) > limits.max_readings:
            raise _Reject(Reason.OVERSIZE, f"{len(readings)} readings, limit {limits.max_readings}")
    except _Reject as rej:
        return ParseOutcome((), (Rejection(rej.reason, rej.detail),), device_id, domain)
    except RecursionError:  # a pathological structure deeper than json allowed us to see
        return ParseOutcome(
            (), (Rejection(Reason.BAD_JSON, "JSON nested too deeply"),), device_id, domain
        )
    except Exception as exc:  # a bug here must quarantine the message, not stop ingest
        detail = f"validation failed: {type(exc).__name__}: {_quote(str(exc))}"
        return ParseOutcome((), (Rejection(Reason.BAD_SCHEMA, detail),), device_id, domain)
    if len(rejections) > MAX_REJECTIONS:
        more = len(rejections) - MAX_REJECTIONS
        rejections = [
            *rejections[:MAX_REJECTIONS],
            Rejection(rejections[MAX_REJECTIONS].reason, f"and {more} more rejection(s)"),
        ]
    return ParseOutcome(tuple(readings), tuple(rejections), device_id, domain)
