"""The alert lifecycle in PostgreSQL: one open alert per (rule, entity), timers that survive a
restart, and runners racing on the same rule without duplicates."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from urbanpulse.alerts.lifecycle import Evaluation, Signal, Status, Timing
from urbanpulse.alerts.store import (
    LOCK,
    AlertMeta,
    advance,
    advance_many,
    execute,
    load_states,
    lock_alert,
    lock_key,
    open_alerts,
    resolve_by_hand,
)

T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
META = AlertMeta("flood.ponding_15cm", "critical", "区住房城乡建委", {"domain": "flood"})
FOR_10 = Timing(for_s=600)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def evs(*pairs: tuple[float, Signal]) -> list[Evaluation]:
    return [Evaluation(at(m), s, 20.0 if s is Signal.BREACH else 2.0) for m, s in pairs]


def rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def test_an_alert_is_opened_fired_resolved_and_a_new_one_opened(
    conn: psycopg.Connection[Any],
) -> None:
    B, C = Signal.BREACH, Signal.CLEAR
    advance(conn, META, "fl-lc-honghe", evs((0, B), (5, B), (10, B)), FOR_10)
    [alert] = open_alerts(conn)
    assert (alert["status"], alert["started_at"], alert["owner"]) == (
        "firing",
        at(0),
        "区住房城乡建委",
    )
    state, changes, alert_id = advance(conn, META, "fl-lc-honghe", evs((15, C)), FOR_10)
    assert state.status is Status.RESOLVED and alert_id is None
    assert [c.to_status for c in changes] == [Status.RESOLVED]
    assert open_alerts(conn) == []
    advance(conn, META, "fl-lc-honghe", evs((60, B), (70, B)), FOR_10)
    history = rows(
        conn,
        "SELECT a.id, a.status, a.started_at, a.ended_at, e.to_status, e.at FROM alerts a "
        "JOIN alert_events e ON e.alert_id = a.id ORDER BY a.id, e.id",
    )
    first, second = history[0][0], history[-1][0]
    assert [(r[0], r[1], r[4], r[5]) for r in history] == [
        (first, "resolved", "pending", at(0)),
        (first, "resolved", "firing", at(0)),
        (first, "resolved", "resolved", at(15)),
        (second, "firing", "pending", at(60)),
        (second, "firing", "firing", at(60)),
    ]
    assert history[0][2:4] == (at(0), at(15))


def test_a_pending_alert_that_clears_is_cancelled_not_resolved(
    conn: psycopg.Connection[Any],
) -> None:
    advance(conn, META, "fl-x", evs((0, Signal.BREACH), (5, Signal.CLEAR)), FOR_10)
    assert rows(conn, "SELECT status, started_at FROM alerts") == [("cancelled", None)]
    assert open_alerts(conn) == []
    # by hand, a closed alert is left as it is
    [(cancelled, updated)] = rows(conn, "SELECT id, updated_at FROM alerts")
    assert _resolve_by_hand(conn, cancelled, "too late") is None
    assert rows(conn, "SELECT status, updated_at FROM alerts") == [("cancelled", updated)]
    assert rows(conn, "SELECT count(*) FROM alert_events WHERE to_status = 'resolved'") == [(0,)]


def test_the_for_timer_survives_a_restart(db_url: str) -> None:
    with psycopg.connect(db_url) as first:
        advance(first, META, "fl-x", evs((0, Signal.BREACH), (5, Signal.BREACH)), FOR_10)
        assert open_alerts(first)[0]["status"] == "pending"
    with psycopg.connect(db_url) as again:  # a new runner: all it has is the database
        assert load_states(again, META.rule_id)["fl-x"].breach_since == at(0)
        advance(again, META, "fl-x", evs((10, Signal.BREACH)), FOR_10)
        [alert] = open_alerts(again)
    assert (alert["status"], alert["started_at"]) == ("firing", at(0))


def test_the_database_refuses_a_second_open_alert(conn: psycopg.Connection[Any]) -> None:
    advance(conn, META, "fl-x", evs((0, Signal.BREACH)), FOR_10)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO alerts (rule_id, entity, status, severity, owner, pending_at) "
            "VALUES (%s, 'fl-x', 'firing', 'critical', 'x', now())",
            (META.rule_id,),
        )


@pytest.mark.parametrize("modes", [("one", "one"), ("batch", "batch"), ("one", "batch")])
def test_two_runners_racing_on_one_rule_never_duplicate(
    db_url: str, modes: tuple[str, str]
) -> None:
    """Two runners with their own connections evaluate the same data at the same moment, one
    entity per transaction or in batches (the second runner's batches in reverse order: the
    locks are taken in a fixed order, so they cannot deadlock)."""
    entities = [f"fl-p{i:03d}" for i in range(60)]
    evaluations = evs((0, Signal.BREACH), (5, Signal.BREACH), (10, Signal.BREACH))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def runner(mode: str, order: list[str]) -> None:
        try:
            with psycopg.connect(db_url) as c:
                start.wait()
                if mode == "one":
                    for entity in order:
                        advance(c, META, entity, evaluations, FOR_10)
                    return
                for i in range(0, len(order), 7):
                    advance_many(c, META, [(e, evaluations) for e in order[i : i + 7]], FOR_10)
        except BaseException as exc:  # reported below
            errors.append(exc)

    orders = [entities, entities[::-1]]
    threads = [
        threading.Thread(target=runner, args=(m, o)) for m, o in zip(modes, orders, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with psycopg.connect(db_url) as c:
        per_entity = rows(c, "SELECT entity, count(*) FROM alerts GROUP BY 1")
        events = rows(c, "SELECT alert_id, count(*) FROM alert_events GROUP BY 1")
        fired = rows(c, "SELECT count(*) FROM alerts WHERE status = 'firing'")
    assert sorted(e for e, _ in per_entity) == entities and all(n == 1 for _, n in per_entity)
    assert len(events) == 60 and all(n == 2 for _, n in events)  # pending, firing: once each
    assert fired == [(60,)]


def test_a_batch_saves_open_alerts_and_states_without_transitions(
    conn: psycopg.Connection[Any],
) -> None:
    B, C = Signal.BREACH, Signal.CLEAR
    first = advance_many(
        conn, META, [("fl-a", evs((0, B), (10, B))), ("fl-b", evs((0, C)))], FOR_10
    )
    assert [(e, len(t)) for e, _, t in first] == [("fl-a", 2), ("fl-b", 0)]
    # a later quiet step: still firing, the alert's value and the saved state move on
    later = [Evaluation(at(20), B, 31.0)]
    [(_, state, transitions)] = advance_many(conn, META, [("fl-a", later)], FOR_10)
    assert transitions == [] and state.last_at == at(20)
    [alert] = open_alerts(conn)
    assert (alert["entity"], alert["status"], alert["value"]) == ("fl-a", "firing", 31.0)
    assert load_states(conn, META.rule_id)["fl-a"].last_at == at(20)
    assert load_states(conn, META.rule_id)["fl-b"].status is Status.INACTIVE


def _resolve_by_hand(conn: psycopg.Connection[Any], alert_id: int, note: str) -> datetime | None:
    with conn.transaction(), conn.cursor() as cur:
        head = execute(cur, lock_alert(alert_id))
        if head is None:
            return None
        return execute(cur, resolve_by_hand(head, note))


def test_a_resolve_by_hand_goes_through_the_lifecycle_and_the_entity_starts_afresh(
    conn: psycopg.Connection[Any],
) -> None:
    B = Signal.BREACH
    advance(conn, META, "fl-a", evs((0, B), (10, B)), FOR_10)  # firing
    advance(conn, META, "fl-b", evs((0, B)), FOR_10)  # pending
    firing, pending = (a["id"] for a in open_alerts(conn))
    assert _resolve_by_hand(conn, 10**9, "no such alert") is None
    ended = _resolve_by_hand(conn, firing, "resolved by ops: sensor replaced")
    _resolve_by_hand(conn, pending, "resolved by ops: false alarm")
    assert ended is not None and abs(datetime.now(UTC) - ended) < timedelta(minutes=5)
    assert open_alerts(conn) == []
    # the same rows the runner writes: events with the note, the alert closed, and only the
    # alert somebody was told about is announced as resolved
    assert rows(
        conn,
        "SELECT alert_id, from_status, to_status, note FROM alert_events "
        "WHERE to_status = 'resolved' ORDER BY alert_id",
    ) == [
        (firing, "firing", "resolved", "resolved by ops: sensor replaced"),
        (pending, "pending", "resolved", "resolved by ops: false alarm"),
    ]
    assert rows(conn, "SELECT alert_id, kind FROM notify_outbox WHERE kind = 'resolved'") == [
        (firing, "resolved")
    ]
    assert rows(conn, f"SELECT status, ended_at FROM alerts WHERE id = {firing}") == [
        ("resolved", ended)
    ]
    states = load_states(conn, META.rule_id)
    assert states["fl-a"].status is Status.RESOLVED and states["fl-a"].last_at is None
    # resolving twice changes nothing
    _resolve_by_hand(conn, firing, "again")
    assert rows(conn, f"SELECT count(*) FROM alert_events WHERE alert_id = {firing}") == [(3,)]
    # the condition still holds: a new alert opens, and fires after the rule's `for`
    advance(conn, META, "fl-a", evs((20, B), (30, B)), FOR_10)
    [again] = [a for a in open_alerts(conn) if a["entity"] == "fl-a"]
    assert again["id"] != firing and (again["status"], again["started_at"]) == ("firing", at(20))


def test_a_resolve_by_hand_waits_for_a_runner_holding_the_entity(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    B = Signal.BREACH
    advance(conn, META, "fl-c", evs((0, B), (10, B)), FOR_10)
    [alert] = open_alerts(conn)
    runner_has_lock, release = threading.Event(), threading.Event()

    def runner() -> None:
        with psycopg.connect(db_url) as other, other.transaction():
            other.execute(LOCK, (lock_key(META.rule_id, "fl-c"),))
            runner_has_lock.set()
            release.wait(10)

    thread = threading.Thread(target=runner)
    thread.start()
    assert runner_has_lock.wait(10)
    done = threading.Event()

    def operator() -> None:
        with psycopg.connect(db_url) as own:
            _resolve_by_hand(own, alert["id"], "by hand")
        done.set()

    op = threading.Thread(target=operator)
    op.start()
    assert not done.wait(0.5), "the resolve must wait for the runner's turn"
    release.set()
    thread.join(10)
    assert done.wait(10)
    op.join(10)
    assert open_alerts(conn) == []
