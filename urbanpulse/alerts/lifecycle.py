"""The alert state machine: a pure function of (previous state, evaluation, timing).

One alert exists per (rule, entity). Each evaluation says, for one measurement time, whether
the condition is breached, cleared, in between (hysteresis band) or unknown (no data). The
machine turns that into inactive → pending → firing → resolved, with:

- `for_s`: a breach must last this long (in measurement time) before firing; the alert's
  start is the time the breach began, taken from the data, not the time it was noticed;
- hysteresis: between the clear and the breach thresholds a firing alert stays firing (a
  pending one goes back to inactive: the breach did not last `for`);
- `keep_firing_for_s`: a clear must last this long before resolving; the alert's end is the
  time the clear began;
- flapping: an alert that resolved and fired again `flap_count` times within `flap_window_s`
  is held firing (flagged) until it has stayed clear for a whole window;
- unknown (no data) never changes the state: a silent device is a separate, device alert;
- a resolve by hand (an operator, for an alert the data cannot clear): the alert resolves
  now and the entity starts afresh, so a condition that still holds opens a new alert after
  `for` (`resolved_by_hand`).

The callers own the clock, SQL and persistence (`urbanpulse.alerts.store`); this module only
decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum


class Status(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Signal(StrEnum):
    BREACH = "breach"  # beyond the firing threshold
    CLEAR = "clear"  # back beyond the clear threshold
    BAND = "band"  # between the two thresholds (hysteresis): no change
    UNKNOWN = "unknown"  # no data for this evaluation: no change


@dataclass(frozen=True, slots=True)
class Timing:
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    flap_window_s: float = 0.0  # 0: no flapping detection
    flap_count: int = 3  # re-fires within the window that make an alert flapping


@dataclass(frozen=True, slots=True)
class Evaluation:
    at: datetime  # measurement time the evaluation is about
    signal: Signal
    value: float | None = None


@dataclass(frozen=True, slots=True)
class State:
    status: Status = Status.INACTIVE
    breach_since: datetime | None = None  # first breach of the current run (pending/firing)
    clear_since: datetime | None = None  # first clear while firing (keep_firing_for)
    started_at: datetime | None = None  # firing: when the breach began (from the data)
    ended_at: datetime | None = None  # resolved: when the clear began
    value: float | None = None  # the last value that breached (or the latest while firing)
    fired_at: tuple[datetime, ...] = field(default=())  # recent firing starts (flapping)
    flapping: bool = False
    last_at: datetime | None = None  # measurement time of the last evaluation applied


@dataclass(frozen=True, slots=True)
class Transition:
    """A change worth recording in the alert's history (and notifying about)."""

    from_status: Status
    to_status: Status
    at: datetime  # measurement time the change is dated to
    value: float | None
    note: str = ""


def _recent(times: tuple[datetime, ...], now: datetime, window: float) -> tuple[datetime, ...]:
    return tuple(t for t in times if now - t <= timedelta(seconds=window))


def step(prev: State, ev: Evaluation, timing: Timing) -> tuple[State, list[Transition]]:
    """Apply one evaluation. Evaluations older than the last one applied change nothing (the
    runner re-evaluates late data in time order)."""
    if prev.last_at is not None and ev.at < prev.last_at:
        return prev, []
    st = replace(prev, last_at=ev.at)
    out: list[Transition] = []
    status = st.status

    if ev.signal is Signal.BAND and status is Status.PENDING:
        # not a breach: the breach has not lasted `for` (hysteresis holds firing alerts only)
        st = replace(st, status=Status.INACTIVE, breach_since=None, value=None)
        out.append(Transition(Status.PENDING, Status.INACTIVE, ev.at, ev.value))
        return st, out
    if ev.signal in (Signal.UNKNOWN, Signal.BAND):
        if status is Status.FIRING and ev.signal is Signal.BAND:
            st = replace(st, clear_since=None)  # back in the band: the clear run is broken
        return st, out

    if ev.signal is Signal.BREACH:
        if status in (Status.INACTIVE, Status.RESOLVED):
            st = replace(
                st,
                status=Status.PENDING,
                breach_since=ev.at,
                clear_since=None,
                ended_at=None,
                value=ev.value,
            )
            out.append(Transition(status, Status.PENDING, ev.at, ev.value))
            status = Status.PENDING
        if status is Status.PENDING:
            since = st.breach_since or ev.at
            st = replace(st, value=ev.value, breach_since=since)
            if ev.at - since >= timedelta(seconds=timing.for_s):
                fired = (*_recent(st.fired_at, ev.at, timing.flap_window_s), since)
                flapping = timing.flap_window_s > 0 and len(fired) >= timing.flap_count
                st = replace(
                    st,
                    status=Status.FIRING,
                    started_at=since,
                    fired_at=fired,
                    flapping=flapping or st.flapping,
                )
                out.append(
                    Transition(
                        Status.PENDING,
                        Status.FIRING,
                        since,
                        ev.value,
                        "flapping: held firing until it stays clear" if flapping else "",
                    )
                )
            return st, out
        # firing: stays firing, the clear run (if any) is broken
        return replace(st, value=ev.value, clear_since=None), out

    # CLEAR
    if status is Status.PENDING:
        st = replace(st, status=Status.INACTIVE, breach_since=None, value=None)
        out.append(Transition(Status.PENDING, Status.INACTIVE, ev.at, ev.value))
        return st, out
    if status is not Status.FIRING:
        return st, out
    clear_since = st.clear_since or ev.at
    st = replace(st, clear_since=clear_since)
    hold = timedelta(seconds=timing.keep_firing_for_s)
    if st.flapping:
        hold = max(hold, timedelta(seconds=timing.flap_window_s))
    if ev.at - clear_since >= hold:
        st = replace(
            st,
            status=Status.RESOLVED,
            ended_at=clear_since,
            breach_since=None,
            clear_since=None,
            flapping=False,
        )
        out.append(Transition(Status.FIRING, Status.RESOLVED, clear_since, ev.value))
    return st, out


def resolved_by_hand(prev: State, at: datetime, note: str) -> tuple[State, list[Transition]]:
    """An operator resolves the open alert at `at`. The entity starts afresh: no breach run,
    no flapping history, and any evaluation may open a new alert. A closed alert stays as is."""
    if prev.status not in (Status.PENDING, Status.FIRING):
        return prev, []
    return State(status=Status.RESOLVED, ended_at=at), [
        Transition(prev.status, Status.RESOLVED, at, None, note)
    ]


def run(
    evaluations: list[Evaluation], timing: Timing, state: State | None = None
) -> tuple[State, list[Transition]]:
    """Fold a series of evaluations (in time order) through `step`."""
    st = state or State()
    history: list[Transition] = []
    for ev in evaluations:
        st, changes = step(st, ev, timing)
        history.extend(changes)
    return st, history
