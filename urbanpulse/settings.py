"""Settings from URBANPULSE_* environment variables, validated once in main()."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER = "CHANGE_ME"  # what the example environment files put where a secret goes
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/urbanpulse"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


class Settings(BaseSettings):
    """Every knob of the platform; each field maps to URBANPULSE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="URBANPULSE_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, description="PostgreSQL/TimescaleDB URL")
    mqtt_url: str = Field(
        DEFAULT_MQTT_URL,
        description="Broker URL: mqtt://[user:password@]host:port, or mqtts://… for TLS "
        "(add ?ca=/path/ca.pem to trust a private CA)",
    )
    topic_prefix: str = Field("yc/v1", description="Topic prefix before <domain>/<device_id>")
    ingest_group: str = Field("ingest", description="Shared-subscription group of ingest workers")
    ingest_client_id: str = Field(
        "", description="MQTT client id of this worker (default: urbanpulse-ingest-<host>-<pid>)"
    )
    ingest_session_expiry_s: int = Field(
        3600, ge=0, description="How long the broker keeps a worker's session while it is away"
    )
    ingest_adopt_after_s: int = Field(
        10,
        ge=0,
        description="A worker gone this long (not restarted) has its session's queued messages "
        "drained by a peer, and its share goes to the others (0: never)",
    )
    ingest_max_inflight: int = Field(
        2000,
        ge=1,
        le=65535,
        description="MQTT 5 Receive Maximum: unacknowledged messages the broker may send us; "
        "bounds memory while the database is slow or down",
    )
    ingest_batch_messages: int = Field(500, ge=1, description="Flush a batch at this many messages")
    ingest_batch_readings: int = Field(
        10000, ge=1, description="Flush a batch at this many readings"
    )
    ingest_batch_delay_ms: int = Field(
        200, ge=1, description="Flush a batch when its oldest message is this old"
    )
    ingest_max_payload_bytes: int = Field(
        262144, ge=64, description="Larger payloads are quarantined as oversize"
    )
    ingest_max_readings_per_message: int = Field(
        10000, ge=1, description="More readings in one message is quarantined as oversize"
    )
    ingest_max_future_s: int = Field(
        300, ge=0, description="Measurement times further ahead of the clock are rejected"
    )
    ingest_device_refresh_s: float = Field(
        30.0, gt=0, description="How often the device registry is re-read"
    )
    ingest_log_interval_s: float = Field(30.0, gt=0, description="Period of the counters log line")
    timezone: str = Field(
        "Asia/Shanghai",
        description="The city's timezone: local days, months and night hours of the recording "
        "rules and KPIs",
    )
    notify_config: Path | None = Field(
        None, description="The notify file (channels, departments, routes); default: packaged"
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics port of a service (0: disabled)"
    )
    timescaledb: Literal["auto", "require", "off"] = Field(
        "auto", description="Use TimescaleDB when the server has it (auto), insist, or never"
    )
    storage_policy: Path | None = Field(
        None, description="Storage policy YAML (default: the packaged policy)"
    )
    log_level: str = Field("INFO", description="Python logging level")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API listens on")
    api_port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP API")
    api_workers: int = Field(1, ge=1, le=64, description="HTTP API worker processes")
    api_cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser (* for any)"
    )
    api_pool_size: int = Field(
        10, ge=1, le=200, description="Database connections of each API worker"
    )
    link_secret: str = Field(
        "",
        description="Key that signs the acknowledgement links of notifications "
        "(default: a random key generated once and kept in the database)",
    )
    link_ttl_s: int = Field(
        7 * 86400, ge=60, description="How long an acknowledgement link stays valid"
    )
    datasets: Path | None = Field(
        None,
        description="Folder of the public datasets for `urbanpulse replay` "
        "(default: ../shared/datasets beside the project)",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts", "tcp"} or not parts.hostname:
            raise ValueError("expected mqtt://[user:password@]host:port")
        ca = parse_qs(parts.query).get("ca")
        if ca and parts.scheme != "mqtts":
            raise ValueError("?ca= is for mqtts:// (TLS) only")
        if ca and not Path(ca[0]).is_file():
            raise ValueError(f"?ca={ca[0]}: no such file")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @model_validator(mode="after")
    def _no_placeholders(self) -> Settings:
        """An example value left in place (CHANGE_ME) is refused, naming the setting."""
        left = [
            f"URBANPULSE_{name.upper()}"
            for name, value in self
            if isinstance(value, str) and PLACEHOLDER in value
        ]
        if left:
            raise ValueError(f"replace the placeholder {PLACEHOLDER} in {', '.join(left)}")
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected postgresql://user@host:port/dbname")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if (
            not value
            or value.startswith("/")
            or value.endswith("/")
            or any(c in value for c in "+#")
        ):
            raise ValueError("topic prefix must be non-empty, without wildcards or edge slashes")
        return value


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; keyword overrides win (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
