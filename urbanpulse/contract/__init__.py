"""The message contract: topics, payload forms, metric registry and validation."""

from urbanpulse.contract.model import (
    DeviceRef,
    InboundMessage,
    ParseOutcome,
    Reading,
    Reason,
    Rejection,
)
from urbanpulse.contract.parse import Limits, parse_message, parse_topic
from urbanpulse.contract.registry import Metric, Registry, default_registry, load_registry

__all__ = [
    "DeviceRef",
    "InboundMessage",
    "Limits",
    "Metric",
    "ParseOutcome",
    "Reading",
    "Reason",
    "Registry",
    "Rejection",
    "default_registry",
    "load_registry",
    "parse_message",
    "parse_topic",
]
