"""Named scenarios: a span of simulated time, the events that happen in it, and what they
should make the rule engine say.

A scenario file (simulators/scenarios/*.yaml, or any path) is strict YAML. Times of events are
offsets from the scenario's start, which is a local midnight (Asia/Shanghai), written
`2d 01:30` (third day, 01:30 local), `36h`, `90m` or a combination such as `1d 6h`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from urbanpulse.durations import Duration
from urbanpulse.errors import ContractError
from urbanpulse.yamlfile import load_yaml_model

Offset = Duration
E = TypeVar("E")


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Offset


# --- physical events -----------------------------------------------------------------------------


class Burst(_Event):
    """A pipe bursts in a DMA: its inflow rises by `flow_m3h` from `at` (until `until`)."""

    kind: Literal["burst"]
    dma: str
    flow_m3h: float = Field(gt=0)
    until: Offset | None = None


class Leakage(_Event):
    """The DMA's background leakage share changes from `at` (e.g. an ageing network)."""

    kind: Literal["leakage"]
    dma: str
    share: float = Field(ge=0, lt=0.9)


class Storm(_Event):
    """A design storm (Chicago hyetograph) over the listed rain gauges (default: all)."""

    kind: Literal["storm"]
    duration: Offset = Field(gt=0)
    return_period_y: float = Field(gt=0)
    peak_ratio: float = Field(0.4, gt=0, lt=1)
    gauges: list[str] | None = None


class Smog(_Event):
    """A pollution episode: PM2.5 climbs to `peak_pm25` µg/m³, holds, and clears."""

    kind: Literal["smog"]
    duration: Offset = Field(gt=0)
    peak_pm25: float = Field(gt=0)
    ramp_up: Offset = 12 * 3600.0
    ramp_down: Offset = 6 * 3600.0
    stations: list[str] | None = None


class HolidayDay(_Event):
    """The local day containing `at` is a public holiday (holiday parking curve)."""

    kind: Literal["holiday"]


# --- device faults -------------------------------------------------------------------------------


class _DeviceFault(_Event):
    device: str


class Stuck(_DeviceFault):
    """The device keeps reporting the values it had at `at`, for `duration`."""

    kind: Literal["stuck"]
    duration: Offset = Field(gt=0)


class Silent(_DeviceFault):
    """The device sends nothing for `duration` (its readings are lost)."""

    kind: Literal["silent"]
    duration: Offset = Field(gt=0)


class Backlog(_DeviceFault):
    """The device is offline for `duration`, then uploads everything it measured in one batch."""

    kind: Literal["backlog"]
    duration: Offset = Field(gt=0)


class OutOfRange(_DeviceFault):
    """The first report at or after `at` carries an impossible value for `metric`."""

    kind: Literal["out_of_range"]
    metric: str
    value: float


class Duplicate(_DeviceFault):
    """Every message in the window is sent twice (a device retrying without need)."""

    kind: Literal["duplicate"]
    duration: Offset = Field(gt=0)


class OutOfOrder(_DeviceFault):
    """In the window, messages go out in swapped pairs (later measurement first)."""

    kind: Literal["out_of_order"]
    duration: Offset = Field(gt=0)


class Malformed(_DeviceFault):
    """`count` consecutive reports from `at` go out as truncated JSON (their readings are lost)."""

    kind: Literal["malformed"]
    count: int = Field(1, ge=1)


class ClockSkew(_DeviceFault):
    """The device's clock is off by `offset_s` seconds in the window (e.g. -28800: UTC as local)."""

    kind: Literal["clock_skew"]
    duration: Offset = Field(gt=0)
    offset_s: float


class ClockReset(_DeviceFault):
    """The device's clock restarts at 1970-01-01 for `duration` (a lost RTC): times are refused."""

    kind: Literal["clock_reset"]
    duration: Offset = Field(gt=0)


Event = Annotated[
    Burst
    | Leakage
    | Storm
    | Smog
    | HolidayDay
    | Stuck
    | Silent
    | Backlog
    | OutOfRange
    | Duplicate
    | OutOfOrder
    | Malformed
    | ClockSkew
    | ClockReset,
    Field(discriminator="kind"),
]

DEVICE_FAULTS = (
    Stuck,
    Silent,
    Backlog,
    OutOfRange,
    Duplicate,
    OutOfOrder,
    Malformed,
    ClockSkew,
    ClockReset,
)


class Expectation(BaseModel):
    """What the rule engine should raise: a rule on an entity, from (and until) a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    entity: str
    fires: Offset
    resolves: Offset | None = None
    note: str = ""


class Title(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    zh: str
    en: str


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    title: Title
    description: str
    span: Offset = Field(gt=0)
    speed: float = Field(1440.0, gt=0, description="simulated seconds per real second")
    events: list[Event] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, in file order."""
        return [e for e in self.events if isinstance(e, kind)]

    def device_faults(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, DEVICE_FAULTS)]


def scenario_names() -> list[str]:
    folder = resources.files("simulators").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A packaged scenario by name (see `scenario_names()`), or a scenario file by path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ContractError(f"cannot read scenario {path}: {exc}") from exc
        where = str(path)
    else:
        if name_or_path not in scenario_names():
            raise ContractError(
                f"unknown scenario {name_or_path!r}; known: {', '.join(scenario_names())} "
                "(or give a path to a scenario file)"
            )
        folder = resources.files("simulators").joinpath("scenarios")
        text = folder.joinpath(f"{name_or_path}.yaml").read_text("utf-8")
        where = f"simulators/scenarios/{name_or_path}.yaml"
    return load_yaml_model(Scenario, text, where, "scenario")
