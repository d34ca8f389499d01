"""The project's own frozen types for what arrives and what is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Reason(StrEnum):
    """Why a message (or part of it) was quarantined; stored in quarantine.reason."""

    OVERSIZE = "oversize"  # payload or batch larger than the configured limits
    BAD_TOPIC = "bad_topic"  # topic is not <prefix>/<domain>/<device_id>
    BAD_JSON = "bad_json"  # not UTF-8, not JSON, or nested too deeply
    BAD_SCHEMA = "bad_schema"  # JSON, but not one of the payload forms of the contract
    UNKNOWN_METRIC = "unknown_metric"  # metric not in the registry, or not of the device's domain
    BAD_UNIT = "bad_unit"  # unit not accepted for the metric
    BAD_VALUE = "bad_value"  # value missing, not a number, NaN or infinite
    OUT_OF_RANGE = "out_of_range"  # canonical value outside the plausible range
    BAD_TIMESTAMP = "bad_timestamp"  # missing, without timezone, unparseable or before 2000
    FUTURE_TIMESTAMP = "future_timestamp"  # measurement time too far ahead of the server clock
    UNKNOWN_DEVICE = "unknown_device"  # device id not provisioned in the registry
    TOPIC_MISMATCH = "topic_mismatch"  # payload names another device or domain than the topic
    STORAGE_ERROR = "storage_error"  # the database refused the row itself (not an outage)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One MQTT message as the rest of the system sees it (no paho types past the adapter)."""

    topic: str
    payload: bytes
    received_at: datetime
    qos: int = 1
    mid: int = 0
    generation: int = 0  # connection generation it arrived on; acks only go to the current one
    via: str = ""  # the MQTT session (client id) it arrived on; its ack goes back there


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated measurement in canonical units, ready to store."""

    device_id: str
    metric: str
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one message, or one entry of it (index), cannot be stored."""

    reason: Reason
    detail: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """What validation needs to know about a provisioned device."""

    device_id: str
    domain: str


@dataclass(frozen=True, slots=True)
class ParseOutcome:
    """Readings to store and rejections to quarantine; both may be non-empty."""

    readings: tuple[Reading, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    device_id: str | None = None
    domain: str | None = None

    @property
    def quarantined(self) -> bool:
        return bool(self.rejections)

    @property
    def reason(self) -> Reason | None:
        return self.rejections[0].reason if self.rejections else None
