"""The notify file: channels, departments with their escalation levels, routes and timings.

Strict YAML (unknown keys are errors, reported with file:line). Secrets never sit in the file:
a channel names the environment variable that holds its URL (`url_env`) or header values
(`headers_env`), read when a message is sent and never logged.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from urbanpulse.durations import Duration
from urbanpulse.errors import ConfigError
from urbanpulse.yamlfile import load_yaml_model

SEVERITIES = ("info", "warning", "major", "critical")
ESCALATION: dict[str, float | None] = {"critical": 900.0, "major": 1800.0, "warning": 7200.0}
MATCH_KEYS = ("rule_id", "entity", "severity", "owner", "zone", "district", "domain")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channel(_Strict):
    """One delivery endpoint: an apprise URL (DingTalk, WeCom and Feishu robots, email over
    SMTP, …) or a JSON webhook (also the way to an SMS gateway)."""

    type: Literal["apprise", "webhook"]
    url: str | None = None
    url_env: str | None = None  # the environment variable holding the URL (with its secret)
    headers: dict[str, str] = Field(default_factory=dict)  # webhook only
    headers_env: dict[str, str] = Field(default_factory=dict)  # header → environment variable
    timeout: Duration = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_url(self) -> Channel:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url or url_env")
        if self.type == "apprise" and (self.headers or self.headers_env):
            raise ValueError("headers are for webhook channels")
        return self

    def resolved_url(self) -> str | None:
        """The URL to send to, or None when its environment variable is not set."""
        if self.url is not None:
            return self.url
        return os.environ.get(self.url_env or "") or None

    def resolved_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        for name, var in self.headers_env.items():
            value = os.environ.get(var)
            if value:
                out[name] = value
        return out


class Level(_Strict):
    """One step of a department's on-call order: who is on call and where they hear of it."""

    people: list[str] = Field(default_factory=list)  # e.g. 张伟（值班员）
    channels: list[str] = Field(min_length=1)


class Department(_Strict):
    # the on-call order: level 0 hears of every alert; each further level when an alert stays
    # firing and unacknowledged for its escalation delay
    on_call: list[Level] = Field(min_length=1)

    @property
    def levels(self) -> list[list[str]]:
        return [level.channels for level in self.on_call]


class Route(_Strict):
    """Send alerts whose fields all match to `department` instead of the rule's owner (and to
    the departments of `also` as well)."""

    match: dict[str, str] = Field(min_length=1)
    department: str | None = None
    also: list[str] = Field(default_factory=list)

    @field_validator("match")
    @classmethod
    def _known_keys(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in value if k not in MATCH_KEYS and not k.startswith("labels.")]
        if unknown:
            raise ValueError(f"unknown match keys {unknown}; use {', '.join(MATCH_KEYS)}")
        return value


class Digest(_Strict):
    at: str = Field("08:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # local time, each day
    enabled: bool = True


class NotifyConfig(_Strict):
    group_wait: Duration = Field(30.0, ge=0)  # wait for more alerts before a group goes out
    # how long a firing alert may stay unacknowledged before the next level hears of it
    # (severities not given keep these defaults; null: never escalates)
    escalation: dict[str, Duration | None] = Field(default_factory=lambda: dict(ESCALATION))
    # past the last level, remind it this often until someone acknowledges (null: once)
    repeat_interval: Duration | None = Field(4 * 3600.0, gt=0)
    max_alerts: int = Field(20, ge=1)  # alerts listed in one message; the rest are counted
    retention: Duration = Field(90 * 86400.0, gt=0)  # sent and dead messages are kept this long
    # a rule's own delay, before its severity's (null: that rule never escalates)
    escalation_rules: dict[str, Duration | None] = Field(default_factory=dict)
    max_attempts: int = Field(8, ge=1)
    backoff: Duration = Field(30.0, gt=0)  # doubled after each failed attempt
    backoff_max: Duration = Field(1800.0, gt=0)
    lease: Duration = Field(120.0, gt=0)  # a claimed message is retried after this
    # where a manager acknowledges: {token} is a signed, expiring link (urbanpulse.links),
    # {alert_id} the bare id (for a console of your own that asks people to sign in)
    ack_url: str = "http://127.0.0.1:8000/ack/{token}"
    channels: dict[str, Channel]
    departments: dict[str, Department]
    routes: list[Route] = Field(default_factory=list)
    digest: Digest = Digest()

    @field_validator("ack_url")
    @classmethod
    def _ack_placeholders(cls, value: str) -> str:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        if names - {"alert_id", "token"}:
            raise ValueError("ack_url may only use {alert_id} and {token}")
        if not names:
            raise ValueError("ack_url needs {token} (signed link) or {alert_id}")
        return value

    @field_validator("escalation")
    @classmethod
    def _keep_defaults(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        return {**ESCALATION, **value}

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        problems = [
            f"escalation: {k!r} is not a severity" for k in self.escalation if k not in SEVERITIES
        ]
        for name, dept in self.departments.items():
            for level in dept.levels:
                problems += [f"{name}: no channel {c!r}" for c in level if c not in self.channels]
        for i, route in enumerate(self.routes):
            for d in [route.department, *route.also]:
                if d is not None and d not in self.departments:
                    problems.append(f"routes[{i}]: no department {d!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def escalation_after(self, severity: str, rule_id: str = "") -> float | None:
        if rule_id in self.escalation_rules:
            return self.escalation_rules[rule_id]
        return self.escalation.get(severity)


def default_config_path() -> Path:
    return Path(__file__).parent / "notify.yaml"


def load_config(path: Path | None = None) -> NotifyConfig:
    path = path or default_config_path()
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the notify file {path}: {exc}") from exc
    return load_yaml_model(NotifyConfig, text, str(path), "notify file")
