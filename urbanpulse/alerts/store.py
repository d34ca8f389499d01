"""The one writer of alert state: evaluator states, alerts, their events and the notify outbox.

Every change of an alert's status goes through here, whoever asks for it. The rule runner
brings evaluations; an operator brings a resolve by hand (the API). Both take the same lock on
(rule, entity), fold their input through the pure state machine (`lifecycle`) and record the
result with the same statements (`record()`), so a change to the lifecycle is made once.

The writes are written once for both kinds of connection: a *plan* is a generator that yields
the statements to run and receives each one's first row; `execute()` runs a plan on a
blocking cursor (the runner), `execute_async()` on an asyncio connection (the API).

`advance()` moves one entity of one rule through a series of evaluations in one transaction:
it takes a lock on (rule, entity), loads the state the last runner saved, folds the
evaluations through the pure state machine and saves the result. Two runners evaluating the
same rule at the same time therefore take turns per entity, and the second sees the first's
work (evaluations it already applied change nothing). Behind that, the database itself allows
one open alert per (rule, entity) (a partial unique index), and a transition recorded twice is
recorded once.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from urbanpulse.alerts.lifecycle import (
    Evaluation,
    State,
    Status,
    Timing,
    Transition,
    resolved_by_hand,
    run,
)

OPEN = (Status.PENDING, Status.FIRING)

T = TypeVar("T")
Statement = tuple[str, Sequence[Any]]
Plan = Generator[Statement, tuple[Any, ...] | None, T]
"""Statements to run in order; each yield receives the statement's first row (or None)."""

# Runners and operators take turns on one (rule, entity): a transaction-scoped advisory lock
# on the key `lock_key()` spells. LOCK_MANY computes the same keys in SQL, sorted, so that two
# runners locking many entities never deadlock.
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
LOCK_MANY = (
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended(%s || '|' || e, 0) "
    "AS k FROM unnest(%s::text[]) AS e ORDER BY 1) AS keys"
)


def lock_key(rule_id: str, entity: str) -> str:
    return f"{rule_id}|{entity}"


def execute(cur: psycopg.Cursor[Any], plan: Plan[T]) -> T:
    """Run a plan on a blocking cursor (tuple rows), inside the caller's transaction."""
    try:
        statement = next(plan)
        while True:
            cur.execute(statement[0], statement[1])
            row = cur.fetchone() if cur.description is not None else None
            statement = plan.send(None if row is None else tuple(row))
    except StopIteration as done:
        result: T = done.value
        return result


async def execute_async(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Run a plan on an asyncio connection, inside the caller's transaction."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        try:
            statement = next(plan)
            while True:
                await cur.execute(statement[0], statement[1])
                row = await cur.fetchone() if cur.description is not None else None
                statement = plan.send(row)
        except StopIteration as done:
            result: T = done.value
            return result


@dataclass(frozen=True, slots=True)
class AlertMeta:
    """What an alert row needs from its rule."""

    rule_id: str
    severity: str
    owner: str
    labels: dict[str, str]


def state_to_json(state: State) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(State):
        value = getattr(state, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = [v.isoformat() for v in value]
        elif isinstance(value, Status):
            value = value.value
        out[f.name] = value
    return out


def state_from_json(data: dict[str, Any]) -> State:
    kw: dict[str, Any] = {}
    for f in fields(State):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "status":
            value = Status(value)
        elif f.name == "fired_at":
            value = tuple(datetime.fromisoformat(v) for v in value)
        elif f.name.endswith(("_since", "_at")) and value is not None:
            value = datetime.fromisoformat(value)
        kw[f.name] = value
    return State(**kw)


def load_states(conn: psycopg.Connection[Any], rule_id: str) -> dict[str, State]:
    rows = conn.execute(
        "SELECT entity, state FROM rule_states WHERE rule_id = %s", (rule_id,)
    ).fetchall()
    return {str(entity): state_from_json(state) for entity, state in rows}


def _open_alert(meta: AlertMeta, entity: str, first: Transition) -> Plan[int]:
    """The id of the entity's open alert: ours if we opened it, the other runner's if not."""
    row = yield (
        """
        INSERT INTO alerts (rule_id, entity, status, severity, owner, labels, value, pending_at)
        VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s)
        ON CONFLICT (rule_id, entity) WHERE status IN ('pending', 'firing') DO NOTHING
        RETURNING id
        """,
        (
            meta.rule_id,
            entity,
            meta.severity,
            meta.owner,
            Jsonb(meta.labels),
            first.value,
            first.at,
        ),
    )
    if row is None:
        row = yield (
            "SELECT id FROM alerts WHERE rule_id = %s AND entity = %s "
            "AND status IN ('pending', 'firing')",
            (meta.rule_id, entity),
        )
    assert row is not None, "an open alert exists or was just created"
    return int(row[0])


def advance(
    conn: psycopg.Connection[Any],
    meta: AlertMeta,
    entity: str,
    evaluations: list[Evaluation],
    timing: Timing,
) -> tuple[State, list[Transition], int | None]:
    """Apply evaluations (in time order) to one entity, race-free; returns the new state, the
    transitions recorded and the open alert's id."""
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # runners take turns on this (rule, entity); the lock ends with the transaction
        cur.execute(LOCK, (lock_key(meta.rule_id, entity),))
        row = cur.execute(
            "SELECT state, alert_id FROM rule_states WHERE rule_id = %s AND entity = %s",
            (meta.rule_id, entity),
        ).fetchone()
        previous = state_from_json(row[0]) if row else State()
        alert_id: int | None = int(row[1]) if row and row[1] is not None else None
        state, transitions = run(evaluations, timing, previous)
        alert_id = execute(cur, record(meta, entity, state, transitions, alert_id))
    return state, transitions, alert_id


def advance_many(
    conn: psycopg.Connection[Any],
    meta: AlertMeta,
    items: list[tuple[str, list[Evaluation]]],
    timing: Timing,
) -> list[tuple[str, State, list[Transition]]]:
    """`advance()` for many entities of one rule in one transaction: the locks are taken in one
    statement (in a fixed order, so runners never deadlock), the states loaded in one query,
    and the entities without a transition (an alert staying open, a state at rest) saved in
    one pipelined batch. Same guarantees as advance(), a fraction of the round trips."""
    if not items:
        return []
    entities = [e for e, _ in items]
    out: list[tuple[str, State, list[Transition]]] = []
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(LOCK_MANY, (meta.rule_id, entities))
        saved = {
            str(e): (state_from_json(st), None if a is None else int(a))
            for e, st, a in cur.execute(
                "SELECT entity, state, alert_id FROM rule_states "
                "WHERE rule_id = %s AND entity = ANY(%s)",
                (meta.rule_id, entities),
            ).fetchall()
        }
        quiet_states: list[tuple[Any, ...]] = []
        quiet_alerts: list[tuple[Any, ...]] = []
        for entity, evaluations in items:
            previous, alert_id = saved.get(entity, (State(), None))
            state, transitions = run(evaluations, timing, previous)
            if transitions:
                execute(cur, record(meta, entity, state, transitions, alert_id))
            else:
                if alert_id is not None:
                    quiet_alerts.append((state.value, state.flapping, alert_id))
                quiet_states.append((meta.rule_id, entity, Jsonb(state_to_json(state)), alert_id))
            out.append((entity, state, transitions))
        if quiet_alerts:
            cur.executemany(
                "UPDATE alerts SET value = coalesce(%s, value), flapping = %s, "
                "updated_at = now() WHERE id = %s",
                quiet_alerts,
            )
        if quiet_states:
            cur.executemany(_UPSERT_STATE, quiet_states)
    return out


_UPSERT_STATE = """
    INSERT INTO rule_states (rule_id, entity, state, alert_id)
    VALUES (%s, %s, %s, %s)
    ON CONFLICT (rule_id, entity) DO UPDATE
       SET state = EXCLUDED.state, alert_id = EXCLUDED.alert_id, updated_at = now()
"""


def record(
    meta: AlertMeta,
    entity: str,
    state: State,
    transitions: list[Transition],
    alert_id: int | None,
    *,
    save_state: bool = True,
) -> Plan[int | None]:
    """Record the entity's new state and its transitions (events, the alert row, the outbox);
    returns the open alert's id. The caller holds the (rule, entity) lock."""
    for t in transitions:
        if t.to_status is Status.PENDING and alert_id is None:
            alert_id = yield from _open_alert(meta, entity, t)
        if alert_id is None:
            continue
        yield (
            "INSERT INTO alert_events (alert_id, from_status, to_status, at, value, note) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (alert_id, t.from_status.value, t.to_status.value, t.at, t.value, t.note),
        )
        final = {
            Status.FIRING: "firing",
            Status.RESOLVED: "resolved",
            Status.INACTIVE: "cancelled",
        }.get(t.to_status)
        if t.to_status is Status.FIRING or (
            t.to_status is Status.RESOLVED and t.from_status is Status.FIRING
        ):
            # the transactional outbox: whoever heard of the alert will hear of its end, once
            yield (
                "INSERT INTO notify_outbox (alert_id, kind, at, value) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (alert_id, t.to_status.value, t.at, t.value),
            )
        if final is not None:
            yield (
                """
                UPDATE alerts SET status = %s, value = coalesce(%s, value),
                       started_at = CASE WHEN %s = 'firing' THEN %s ELSE started_at END,
                       ended_at = CASE WHEN %s = 'resolved' THEN %s ELSE ended_at END,
                       flapping = %s, updated_at = now()
                 WHERE id = %s
                """,
                (final, t.value, final, t.at, final, t.at, state.flapping, alert_id),
            )
        if t.to_status in (Status.RESOLVED, Status.INACTIVE):
            alert_id = None
    if alert_id is not None and not transitions:
        yield (
            "UPDATE alerts SET value = coalesce(%s, value), flapping = %s, "
            "updated_at = now() WHERE id = %s",
            (state.value, state.flapping, alert_id),
        )
    if save_state:
        yield (_UPSERT_STATE, (meta.rule_id, entity, Jsonb(state_to_json(state)), alert_id))
    return alert_id


@dataclass(frozen=True, slots=True)
class AlertHead:
    """An alert row as a resolve by hand needs it, read under the (rule, entity) lock."""

    id: int
    rule_id: str
    entity: str
    status: str
    owner: str
    severity: str
    labels: dict[str, str]


def lock_alert(alert_id: int) -> Plan[AlertHead | None]:
    """Take the alert's (rule, entity) lock, the one the runners take, then its row; None when
    there is no such alert. Nothing the runners do interleaves until the transaction ends."""
    head = yield ("SELECT rule_id, entity FROM alerts WHERE id = %s", (alert_id,))
    if head is None:
        return None
    yield (LOCK, (lock_key(str(head[0]), str(head[1])),))
    row = yield (
        "SELECT id, rule_id, entity, status, owner, severity, labels FROM alerts "
        "WHERE id = %s FOR UPDATE",
        (alert_id,),
    )
    assert row is not None, "an alert is never deleted"
    alert_id_, rule_id, entity, status, owner, severity, labels = row
    return AlertHead(
        int(alert_id_),
        str(rule_id),
        str(entity),
        str(status),
        str(owner),
        str(severity),
        dict(labels or {}),
    )


def resolve_by_hand(alert: AlertHead, note: str) -> Plan[datetime | None]:
    """Resolve an open alert by hand (an operator's input to the lifecycle), under
    `lock_alert()`'s lock; returns when it ended (the transaction's time), or None for an alert
    already closed (resolved or cancelled), which is left as it is."""
    if alert.status not in OPEN:
        return None
    row = yield (
        "SELECT state, alert_id FROM rule_states WHERE rule_id = %s AND entity = %s",
        (alert.rule_id, alert.entity),
    )
    got = yield ("SELECT now()", ())
    assert got is not None
    now: datetime = got[0]
    ours = row is not None and row[1] is not None and int(row[1]) == alert.id
    # the evaluator's state if it is this alert's, else what the alert row says
    previous = State(status=Status(alert.status))
    if ours and row is not None:
        previous = state_from_json(row[0])
    state, transitions = resolved_by_hand(previous, now, note)
    meta = AlertMeta(alert.rule_id, alert.severity, alert.owner, alert.labels)
    yield from record(meta, alert.entity, state, transitions, alert.id, save_state=ours)
    return now


def open_alerts(conn: psycopg.Connection[Any], rule_id: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT id, rule_id, entity, status, severity, owner, value, started_at, flapping
          FROM alerts
         WHERE status IN ('pending', 'firing') AND (%(rule)s::text IS NULL OR rule_id = %(rule)s)
         ORDER BY rule_id, entity
        """,
        {"rule": rule_id},
    ).fetchall()
    keys = ("id", "rule_id", "entity", "status", "severity", "owner", "value", "started_at")
    return [dict(zip((*keys, "flapping"), r, strict=True)) for r in rows]
