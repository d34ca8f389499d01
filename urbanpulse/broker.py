"""Broker addresses from URBANPULSE_MQTT_URL, shared by every MQTT client of the project."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None = None  # mqtts: the CA to trust instead of the system's (`?ca=<path>`)

    def __str__(self) -> str:  # never shows the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://[user:password@]host[:port]`, or `mqtts://…` for TLS, optionally with
    `?ca=/path/to/ca.pem` to trust a private CA."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    ca = parse_qs(parts.query).get("ca")
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        ca_file=ca[0] if ca else None,
    )
