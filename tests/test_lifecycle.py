"""The alert state machine, table-driven with fixed measurement times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from urbanpulse.alerts.lifecycle import (
    Evaluation,
    Signal,
    State,
    Status,
    Timing,
    Transition,
    resolved_by_hand,
    run,
    step,
)

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
B, C, N, U = Signal.BREACH, Signal.CLEAR, Signal.BAND, Signal.UNKNOWN
I, P, F, R = Status.INACTIVE, Status.PENDING, Status.FIRING, Status.RESOLVED  # noqa: E741


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def series(*signals: Signal, every: float = 5) -> list[Evaluation]:
    """One evaluation every `every` minutes from T0, values 1, 2, 3…"""
    return [Evaluation(at(i * every), s, float(i + 1)) for i, s in enumerate(signals)]


def path(history: list[Transition]) -> list[tuple[Status, Status, datetime]]:
    return [(t.from_status, t.to_status, t.at) for t in history]


@pytest.mark.parametrize(
    ("signals", "timing", "final", "transitions"),
    [
        # no `for`: the first breach fires at once, dated to itself
        ((B,), Timing(), F, [(I, P, at(0)), (P, F, at(0))]),
        # `for` 10 min: pending at 0, firing once the breach has lasted 10 min, dated to 0
        ((B, B, B), Timing(for_s=600), F, [(I, P, at(0)), (P, F, at(0))]),
        ((B, B), Timing(for_s=600), P, [(I, P, at(0))]),
        # a clear while pending goes back to inactive: no alert ever fired
        ((B, B, C, B), Timing(for_s=600), P, [(I, P, at(0)), (P, I, at(10)), (I, P, at(15))]),
        # resolve on the first clear, dated to it
        ((B, C), Timing(), R, [(I, P, at(0)), (P, F, at(0)), (F, R, at(5))]),
        # hysteresis: the band neither fires nor resolves
        ((N, N), Timing(), I, []),
        ((B, N, N, C), Timing(), R, [(I, P, at(0)), (P, F, at(0)), (F, R, at(15))]),
        # …but a pending breach must hold for all of `for`: the band breaks it
        ((B, N, B), Timing(for_s=600), P, [(I, P, at(0)), (P, I, at(5)), (I, P, at(10))]),
        # keep_firing_for 10 min: a short clear does not resolve; a long one resolves, dated to
        # where the clear began
        (
            (B, C, B, C, C, C),
            Timing(keep_firing_for_s=600),
            R,
            [(I, P, at(0)), (P, F, at(0)), (F, R, at(15))],
        ),
        ((B, C, C), Timing(keep_firing_for_s=600), F, [(I, P, at(0)), (P, F, at(0))]),
        # a band in the middle of a clear run breaks it
        ((B, C, N, C, C), Timing(keep_firing_for_s=600), F, [(I, P, at(0)), (P, F, at(0))]),
        # no data changes nothing, whatever the state
        ((U, U), Timing(), I, []),
        ((B, U, U, U), Timing(), F, [(I, P, at(0)), (P, F, at(0))]),
        ((B, B, U, U, B), Timing(for_s=600), F, [(I, P, at(0)), (P, F, at(0))]),
        # fire again after resolving: a new pending run, a new start
        (
            (B, C, B),
            Timing(),
            F,
            [(I, P, at(0)), (P, F, at(0)), (F, R, at(5)), (R, P, at(10)), (P, F, at(10))],
        ),
    ],
)
def test_transitions(
    signals: tuple[Signal, ...],
    timing: Timing,
    final: Status,
    transitions: list[tuple[Status, Status, datetime]],
) -> None:
    state, history = run(series(*signals), timing)
    assert state.status is final
    assert path(history) == transitions


def test_start_and_end_come_from_the_data() -> None:
    state, _ = run(series(B, B, B), Timing(for_s=600))
    assert state.started_at == at(0) and state.value == 3.0
    state, _ = run(series(B, B, B, C, C, C), Timing(for_s=600, keep_firing_for_s=600))
    assert (state.status, state.started_at, state.ended_at) == (R, at(0), at(15))


def test_late_evaluations_do_not_rewind_the_state() -> None:
    state, _ = run(series(B, B), Timing(for_s=3600))
    again, changes = step(state, Evaluation(at(1), C, 0.0), Timing(for_s=3600))
    assert again == state and changes == []


def test_a_pending_timer_survives_a_restart() -> None:
    """The state is all there is: persisting it and reloading it keeps the `for` timer."""
    timing = Timing(for_s=600)
    first, _ = run(series(B, B), timing)  # pending since 0, at 5
    restored = State(**{f: getattr(first, f) for f in State.__dataclass_fields__})
    state, history = step(restored, Evaluation(at(10), B, 9.0), timing)
    assert state.status is F and path(history) == [(P, F, at(0))]


def test_flapping_is_held_firing_instead_of_spamming() -> None:
    timing = Timing(flap_window_s=3600, flap_count=3)
    # fire / clear every 5 minutes: the third firing within the hour marks it flapping
    state, history = run(series(B, C, B, C, B, C, C, C), timing)
    fired = [t for t in history if t.to_status is F]
    resolved = [t for t in history if t.to_status is R]
    assert len(fired) == 3 and len(resolved) == 2
    assert "flapping" in fired[-1].note
    assert state.status is F and state.flapping  # held through the clears that follow
    # once it has stayed clear for a whole window, it resolves, dated to the clear's start
    later = [Evaluation(at(25 + m), C, 0.0) for m in range(5, 70, 5)]
    state, history = run(later, timing, state)
    assert state.status is R and not state.flapping
    assert path(history) == [(F, R, at(25))]


def test_a_resolve_by_hand_closes_an_open_alert_and_forgets_its_run() -> None:
    timing = Timing(for_s=600, flap_window_s=3600)
    now = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    firing, _ = run(
        [Evaluation(now - timedelta(minutes=m), Signal.BREACH, 20.0) for m in (20, 5)], timing
    )
    assert firing.status is Status.FIRING
    state, [change] = resolved_by_hand(firing, now, "sensor replaced")
    assert (change.from_status, change.to_status, change.at, change.note) == (
        Status.FIRING,
        Status.RESOLVED,
        now,
        "sensor replaced",
    )
    assert state == State(status=Status.RESOLVED, ended_at=now)
    assert resolved_by_hand(state, now, "again") == (state, [])
    # afresh: even an evaluation older than the last one applied counts, and `for` runs again
    older = now - timedelta(minutes=1)
    pending, changes = step(state, Evaluation(older, Signal.BREACH, 20.0), timing)
    assert pending.status is Status.PENDING and [c.to_status for c in changes] == [Status.PENDING]
