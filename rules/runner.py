"""`urbanpulse rules run`: the runner owns the clock, the SQL and the persistence.

Each pass evaluates every rule up to a watermark, `now − allowed lateness`, in steps of
`step_s` of measurement time, from where each entity's saved state stopped (or from `since`
for entities never evaluated). Readings come from the database; the decisions are the pure
evaluator's; alerts are saved race-free (urbanpulse.alerts.store). A rule that fails is rolled back,
recorded in rule_health with its error, and the others carry on.

Early firing: the watermark makes a breach wait for the lateness and the next whole step
(up to 60 s + 120 s by default) before it becomes an alert. For the rules whose breach the
readings already stored cannot take back — a threshold on the latest value, on a maximum
above a limit or a minimum below one, on a count above one — each pass also evaluates the
head, from the watermark to now. An entity that starts breaching there opens its alert at
once (its state moves to now; the rest stays at the watermark). Late readings can still
confirm it but never undo it; everything else (clearing, resolving, other rules) waits for
the watermark as before.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from rules.evaluate import EntitySeries, signal_at
from rules.kpi import refresh as refresh_kpi
from rules.recording import covered, run_record
from urbanpulse.alerts.lifecycle import Evaluation, Signal, State, Status, run, step
from urbanpulse.alerts.store import AlertMeta, advance_many, load_states
from urbanpulse.contract.registry import Registry
from urbanpulse.db.connect import keep_connected
from urbanpulse.rulefmt.kpis import Kpi
from urbanpulse.rulefmt.model import Rule, RuleSet
from urbanpulse.rulefmt.records import Record

log = logging.getLogger(__name__)

ARRIVAL_HORIZON_S = 2 * 86400.0
BATCH = 500  # entities advanced per transaction


@dataclass
class RuleReport:
    rule_id: str
    entities: int = 0
    evaluations: int = 0
    transitions: int = 0
    duration_ms: float = 0.0
    error: str | None = None
    watermark: float | None = None  # measurement time evaluated up to (None: failed)
    record: bool = False  # a recording rule: `evaluations` counts the rows it wrote
    busy: bool = False  # another runner had its turn at it: left to that runner


@dataclass
class PassReport:
    watermark: datetime
    rules: list[RuleReport] = field(default_factory=list)

    @property
    def failed(self) -> list[RuleReport]:
        return [r for r in self.rules if r.error]


def entities_of(
    conn: psycopg.Connection[Any], rule: Rule, registry: Registry
) -> list[tuple[str, float]]:
    """(entity, declared reporting interval) of what the rule reads: devices with their
    interval, or the entities of a recorded series (interval 0: no no-data rule on those)."""
    if rule.series.recorded is not None:
        found = conn.execute(
            "SELECT DISTINCT entity FROM recorded WHERE series = %s ORDER BY entity",
            (rule.series.recorded,),
        ).fetchall()
        return [(str(e), 0.0) for (e,) in found]
    if rule.series.quarantine is not None:
        found = conn.execute(
            "SELECT DISTINCT device_id FROM quarantine WHERE reason = ANY(%s) "
            "AND device_id IS NOT NULL ORDER BY device_id",
            ([r.value for r in rule.series.quarantine],),
        ).fetchall()
        return [(str(e), 0.0) for (e,) in found]
    domain = registry.metrics[rule.series.name].domain
    rows = conn.execute(
        """
        SELECT device_id, report_interval_s FROM devices
         WHERE domain = %s AND (%s::text[] IS NULL OR kind = ANY(%s::text[]))
           AND attributes @> %s
         ORDER BY device_id
        """,
        (domain, rule.series.kinds, rule.series.kinds, Jsonb(rule.series.where)),
    ).fetchall()
    return [(str(d), float(i)) for d, i in rows]


def _ticks(first: float, last: float, step: float) -> list[float]:
    start = math.ceil(first / step) * step
    n = int((last - start) // step) + 1 if last >= start else 0
    return [start + k * step for k in range(n)]


def fetch_series(
    conn: psycopg.Connection[Any],
    rule: Rule,
    devices: list[tuple[str, float]],
    first: float,
    last: float,
) -> dict[str, EntitySeries]:
    """Each device's readings of the rule's metric that evaluations in [first, last] can see."""
    lookback = max(rule.window, rule.missing_intervals * max(i for _, i in devices))
    if rule.series.recorded is not None:
        return _fetch_recorded(conn, rule.series.recorded, devices, first - lookback, last)
    if rule.series.quarantine is not None:
        return _fetch_quarantined(
            conn, [r.value for r in rule.series.quarantine], devices, first - lookback, last
        )
    if rule.clock == "arrival":
        # when readings arrived; a reading measured over ARRIVAL_HORIZON before it arrived
        # is too old to say the device is alive now
        rows = conn.execute(
            """
            SELECT device_id, extract(epoch FROM ingested_at)::float8, value FROM readings
             WHERE metric = %s AND device_id = ANY(%s) AND ingested_at > to_timestamp(%s)
               AND ingested_at <= to_timestamp(%s) AND ts > to_timestamp(%s)
               AND ts > ingested_at - make_interval(secs => %s)
             ORDER BY device_id, ingested_at
            """,
            (
                rule.series.metric,
                [d for d, _ in devices],
                first - lookback,
                last,
                first - lookback - ARRIVAL_HORIZON_S,
                ARRIVAL_HORIZON_S,
            ),
        ).fetchall()
    else:
        rows = conn.execute(
            """
            SELECT device_id, extract(epoch FROM ts)::float8, value FROM readings
             WHERE metric = %s AND device_id = ANY(%s) AND ts > to_timestamp(%s)
               AND ts <= to_timestamp(%s)
             ORDER BY device_id, ts
            """,
            (rule.series.metric, [d for d, _ in devices], first - lookback, last),
        ).fetchall()
    out = {d: EntitySeries(d, [], [], interval) for d, interval in devices}
    if rule.type == "no_data":
        # a device silent for longer than the lookback has its last reading before it
        _append(out, _last_before(conn, rule, [d for d, _ in devices], first - lookback))
    conn.commit()
    return _append(out, rows)


def _append(
    out: dict[str, EntitySeries], rows: Iterable[tuple[Any, Any, Any]]
) -> dict[str, EntitySeries]:
    """Add (entity, time, value) rows, in time order, to the entities' series."""
    for entity, t, v in rows:
        s = out[str(entity)]
        s.times.append(float(t))
        s.values.append(float(v))
    return out


def _last_before(
    conn: psycopg.Connection[Any], rule: Rule, devices: list[str], at: float
) -> list[tuple[str, float, float]]:
    """Each device's last reading at or before `at` (by measurement time, or for the arrival
    clock the latest-measured reading that had arrived by then): one index probe a device."""
    arrival = rule.clock == "arrival"
    rows = conn.execute(
        """
        SELECT d, extract(epoch FROM CASE WHEN %(arrival)s THEN r.ingested_at ELSE r.ts END),
               r.value
          FROM unnest(%(devices)s::text[]) AS d
          JOIN LATERAL (
                SELECT ts, ingested_at, value FROM readings
                 WHERE device_id = d AND metric = %(metric)s AND ts <= to_timestamp(%(at)s)
                   AND (NOT %(arrival)s OR ingested_at <= to_timestamp(%(at)s))
                 ORDER BY ts DESC LIMIT 1) AS r ON true
        """,
        {"arrival": arrival, "devices": devices, "metric": rule.series.metric, "at": at},
    ).fetchall()
    return [(str(d), float(t), float(v)) for d, t, v in rows]


def _fetch_recorded(
    conn: psycopg.Connection[Any],
    series: str,
    entities: list[tuple[str, float]],
    after: float,
    last: float,
) -> dict[str, EntitySeries]:
    """A recorded series as the rule sees it: each value at the end of its period."""
    rows = conn.execute(
        """
        SELECT entity, extract(epoch FROM period_end)::float8, value FROM recorded
         WHERE series = %s AND entity = ANY(%s) AND period_end > to_timestamp(%s)
           AND period_end <= to_timestamp(%s)
         ORDER BY entity, period_end
        """,
        (series, [e for e, _ in entities], after, last),
    ).fetchall()
    conn.commit()
    return _append({e: EntitySeries(e, [], []) for e, _ in entities}, rows)


def _fetch_quarantined(
    conn: psycopg.Connection[Any],
    reasons: list[str],
    devices: list[tuple[str, float]],
    after: float,
    last: float,
) -> dict[str, EntitySeries]:
    """Each device's quarantined messages of those reasons, as 1s at their arrival times."""
    rows = conn.execute(
        """
        SELECT device_id, extract(epoch FROM received_at)::float8, 1.0 FROM quarantine
         WHERE reason = ANY(%s) AND device_id = ANY(%s) AND received_at > to_timestamp(%s)
           AND received_at <= to_timestamp(%s)
         ORDER BY device_id, received_at
        """,
        (reasons, [d for d, _ in devices], after, last),
    ).fetchall()
    conn.commit()
    return _append({d: EntitySeries(d, [], []) for d, _ in devices}, rows)


@dataclass(frozen=True, slots=True)
class BacktestAlert:
    rule_id: str
    entity: str
    started_at: datetime
    ended_at: datetime | None
    peak: float | None


def backtest(
    conn: psycopg.Connection[Any],
    rule: Rule,
    registry: Registry,
    *,
    since: datetime,
    until: datetime,
    step_s: float = 60.0,
) -> list[BacktestAlert]:
    """The alerts a rule would have raised over stored history; nothing is written."""
    devices = entities_of(conn, rule, registry)
    if not devices:
        return []
    first, last = since.timestamp(), until.timestamp()
    series = fetch_series(conn, rule, devices, first, last)
    ticks = _ticks(first, last, step_s)
    out: list[BacktestAlert] = []
    for device, _ in devices:
        evaluations = [signal_at(rule, series[device], t) for t in ticks]
        state = State()
        start: datetime | None = None
        peak: float | None = None
        for ev in evaluations:
            state, changes = step(state, ev, rule.timing)
            if state.status is Status.FIRING and ev.value is not None:
                peak = ev.value if peak is None else _worse(rule, peak, ev.value)
            for t in changes:
                if t.to_status is Status.FIRING:
                    start, peak = t.at, t.value
                elif t.to_status is Status.RESOLVED and start is not None:
                    out.append(BacktestAlert(rule.id, device, start, t.at, peak))
                    start = None
        if start is not None:
            out.append(BacktestAlert(rule.id, device, start, None, peak))
    return sorted(out, key=lambda a: (a.started_at, a.entity))


def _worse(rule: Rule, a: float, b: float) -> float:
    low = rule.condition is not None and rule.condition.op in ("<", "<=")
    return min(a, b) if low else max(a, b)


def evaluate_rule(
    conn: psycopg.Connection[Any],
    rule: Rule,
    registry: Registry,
    *,
    watermark: float,
    since: float,
    step_s: float,
    head: float | None = None,
) -> RuleReport:
    """Evaluate one rule up to the watermark, and, with `head` (now), fire early where the
    rule allows it (see the module's docstring)."""
    report = RuleReport(rule.id)
    if rule.series.recorded is not None:
        # evaluate only as far as the record covers: a period still to be computed (its
        # meters may be late) must not read as no data
        covered_by_record = _watermark_of(conn, rule.series.recorded)
        if covered_by_record is None:
            return report
        watermark = min(watermark, covered_by_record)
    # the last tick on or before the watermark: what the rule's watermark says was evaluated
    watermark = math.floor(watermark / step_s) * step_s
    devices = entities_of(conn, rule, registry)
    report.entities = len(devices)
    if not devices:
        return report
    meta = AlertMeta(rule.id, rule.severity, rule.owner, rule.labels)
    report.watermark = watermark
    _committed(conn, rule, meta, devices, report, watermark=watermark, since=since, step_s=step_s)
    if head is not None and head > watermark and fires_early(rule):
        report.transitions += _head(conn, rule, meta, devices, watermark, head, step_s)
    return report


def _committed(
    conn: psycopg.Connection[Any],
    rule: Rule,
    meta: AlertMeta,
    devices: list[tuple[str, float]],
    report: RuleReport,
    *,
    watermark: float,
    since: float,
    step_s: float,
) -> None:
    """The ticks up to the (aligned) watermark, from where each entity's state stopped."""
    states = load_states(conn, rule.id)
    evaluated = _watermark_of(conn, rule.id)
    at_rest = since if evaluated is None else evaluated + step_s
    starts = {}
    for device, _ in devices:
        state = states.get(device)
        # the first tick after the last evaluation (which early firing may have left between
        # two ticks)
        starts[device] = (
            math.floor(state.last_at.timestamp() / step_s) * step_s + step_s
            if state and state.last_at
            else at_rest
        )
    earliest = min(starts.values())
    if earliest > watermark:
        return
    series = fetch_series(conn, rule, devices, earliest, watermark)
    batch: list[tuple[str, list[Evaluation]]] = []
    for device, _ in devices:
        ticks = _ticks(starts[device], watermark, step_s)
        if not ticks:
            continue
        evaluations = [signal_at(rule, series[device], t) for t in ticks]
        report.evaluations += len(evaluations)
        if device not in states and not run(evaluations, rule.timing)[1]:
            continue  # at rest and staying at rest: nothing to write (the watermark covers it)
        batch.append((device, evaluations))
    report.transitions += _advance(conn, meta, batch, rule)


def fires_early(rule: Rule) -> bool:
    """Whether a breach seen in the readings stored so far stays a breach whatever arrives
    late: only then may the rule fire ahead of the watermark."""
    if rule.type != "threshold" or rule.condition is None or rule.clock != "measurement":
        return False
    if rule.series.recorded is not None or rule.series.quarantine is not None:
        return False  # recorded periods have a watermark of their own
    above = rule.condition.op in (">", ">=")
    return (
        rule.aggregate == "last"
        or (rule.aggregate == "max" and above)
        or (rule.aggregate == "min" and not above)
        or (rule.aggregate == "count" and above)
    )


OPENING = (Status.PENDING, Status.FIRING)


def _head(  # noqa: PLR0917 - the evaluation's context, in evaluate_rule's order
    conn: psycopg.Connection[Any],
    rule: Rule,
    meta: AlertMeta,
    devices: list[tuple[str, float]],
    watermark: float,
    head: float,
    step_s: float,
) -> int:
    """Early firing: evaluate (watermark, head]; advance only the entities that open or
    escalate an alert there. Returns the transitions recorded."""
    ticks = _ticks(watermark + step_s, head, step_s)
    if not ticks or ticks[-1] < head:
        ticks.append(head)
    series = fetch_series(conn, rule, devices, ticks[0], head)
    evaluations = {}
    for device, _ in devices:
        evs = [signal_at(rule, series[device], t) for t in ticks]
        if any(ev.signal is Signal.BREACH for ev in evs):
            evaluations[device] = evs
    if not evaluations:
        return 0
    states = load_states(conn, rule.id)
    batch: list[tuple[str, list[Evaluation]]] = []
    for device, evs in evaluations.items():
        _, transitions = run(evs, rule.timing, states.get(device))
        if any(t.to_status in OPENING for t in transitions):
            batch.append((device, evs))
    return _advance(conn, meta, batch, rule)


def _advance(
    conn: psycopg.Connection[Any],
    meta: AlertMeta,
    batch: list[tuple[str, list[Evaluation]]],
    rule: Rule,
) -> int:
    """Fold the entities' evaluations into their saved states, BATCH entities a transaction;
    the transitions recorded."""
    recorded = 0
    for i in range(0, len(batch), BATCH):
        for _, _, transitions in advance_many(conn, meta, batch[i : i + BATCH], rule.timing):
            recorded += len(transitions)
    return recorded


def _health(conn: psycopg.Connection[Any], report: RuleReport) -> None:
    conn.execute(
        """
        INSERT INTO rule_health (rule_id, watermark, last_eval_at, last_duration_ms, last_ok_at,
                                 last_error, last_error_at, evaluations, failures)
        VALUES (%(id)s, to_timestamp(%(wm)s::float8), now(), %(ms)s,
                CASE WHEN %(err)s::text IS NULL THEN now() END, %(err)s,
                CASE WHEN %(err)s::text IS NOT NULL THEN now() END, %(n)s,
                CASE WHEN %(err)s::text IS NULL THEN 0 ELSE 1 END)
        ON CONFLICT (rule_id) DO UPDATE SET
            watermark = coalesce(to_timestamp(%(wm)s::float8), rule_health.watermark),
            last_eval_at = now(), last_duration_ms = %(ms)s,
            last_ok_at = CASE WHEN %(err)s::text IS NULL THEN now()
                              ELSE rule_health.last_ok_at END,
            last_error = coalesce(%(err)s, rule_health.last_error),
            last_error_at = CASE WHEN %(err)s::text IS NOT NULL THEN now()
                                 ELSE rule_health.last_error_at END,
            evaluations = rule_health.evaluations + %(n)s,
            failures = rule_health.failures + CASE WHEN %(err)s::text IS NULL THEN 0 ELSE 1 END
        """,
        {
            "id": report.rule_id,
            "wm": report.watermark,
            "ms": report.duration_ms,
            "err": report.error,
            "n": report.evaluations,
        },
    )


def _watermark_of(conn: psycopg.Connection[Any], rule_id: str) -> float | None:
    row = conn.execute(
        "SELECT watermark FROM rule_health WHERE rule_id = %s", (rule_id,)
    ).fetchone()
    return row[0].timestamp() if row and row[0] is not None else None


# what a failing rule, record or KPI may raise: rolled back and recorded, the others go on
FAILURES = (psycopg.Error, ValueError, ArithmeticError, KeyError)


def _failed(
    conn: psycopg.Connection[Any], rule_id: str, exc: Exception, started: float, *, record: bool
) -> RuleReport:
    """Roll back, record the error in rule_health (the watermark stays) and report it."""
    conn.rollback()
    report = RuleReport(rule_id, error=f"{type(exc).__name__}: {exc}", record=record)
    log.error("%s failed: %s", rule_id, report.error)
    report.duration_ms = (time.monotonic() - started) * 1000
    _health(conn, report)
    conn.commit()
    return report


def _locked_pass(
    conn: psycopg.Connection[Any],
    report: RuleReport,
    since: float,
    work: Callable[[float], tuple[int, float]],
) -> RuleReport:
    """Run `work(after)` → (rows written, new watermark) in one transaction with the new
    watermark, during this runner's turn at the report's id, so that whatever number of
    runners there are, each period is written once. The turn is a transaction lock: while
    another runner holds it the work is left to that one (busy), and it ends with the
    transaction, or with the session of a runner that dies. A failure is rolled back and
    recorded in rule_health."""
    started = time.monotonic()
    conn.commit()
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"turn|{report.rule_id}",),
            ).fetchone()
            if not (row and row[0]):
                return RuleReport(report.rule_id, record=True, busy=True)
            after = _watermark_of(conn, report.rule_id)
            report.evaluations, report.watermark = work(since if after is None else after)
            report.duration_ms = (time.monotonic() - started) * 1000
            _health(conn, report)
    except FAILURES as exc:
        report = _failed(conn, report.rule_id, exc, started, record=True)
    return report


def record_pass(
    conn: psycopg.Connection[Any], rec: Record, *, watermark: float, since: float, tz: ZoneInfo
) -> RuleReport:
    """Compute a record's periods that ended since its watermark (and its `delay` before the
    pass's watermark), no further than the record it reads, if any."""

    def work(after: float) -> tuple[int, float]:
        upto = watermark - rec.delay
        source = rec.reads
        if source is not None:
            covered_by_source = _watermark_of(conn, source)
            upto = after if covered_by_source is None else min(upto, covered_by_source)
        rows = run_record(conn, rec, after, upto, tz) if upto > after else 0
        # what the record covers: the rules and KPIs reading it go no further
        return rows, covered(rec, after, upto, tz)

    return _locked_pass(conn, RuleReport(rec.id, record=True), since, work)


def kpi_pass(
    conn: psycopg.Connection[Any], kpi: Kpi, *, watermark: float, since: float, tz: ZoneInfo
) -> RuleReport:
    """Score a KPI's periods from the one its watermark is in up to what its record covers (a
    period still running is rescored whenever the record moves on)."""

    def work(after: float) -> tuple[int, float]:
        source = _watermark_of(conn, kpi.source)
        upto = after if source is None else min(watermark, source)
        rows = refresh_kpi(conn, kpi, after=after, upto=upto, tz=tz) if upto > after else 0
        return rows, max(after, upto)

    return _locked_pass(conn, RuleReport(f"kpi:{kpi.id}", record=True), since, work)


@contextmanager
def _turn(conn: psycopg.Connection[Any], key: str) -> Iterator[bool]:
    """This runner's turn at a rule, whose evaluation spans many transactions (records and
    KPIs take theirs in their one transaction, in _locked_pass): yields False while another
    runner holds it (the rule is then left to that runner). The lock belongs to the session,
    so a runner that dies gives its turns back at once and the next pass of another picks
    them up."""
    conn.commit()
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"turn|{key}",)
    ).fetchone()
    conn.commit()
    mine = bool(row and row[0])
    try:
        yield mine
    finally:
        if mine:
            try:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"turn|{key}",))
                conn.commit()
            except psycopg.Error:  # the connection is gone: so is the lock
                log.warning("could not release the turn at %s", key)


def run_pass(
    conn: psycopg.Connection[Any],
    rules: RuleSet | list[Rule],
    registry: Registry,
    *,
    now: datetime,
    lateness_s: float,
    since: datetime,
    step_s: float = 60.0,
    tz: str = "Asia/Shanghai",
    early: bool = True,
) -> PassReport:
    """Compute every record, then evaluate every rule, up to now − lateness (and up to now
    for early firing, unless `early` is off); a failing record or rule does not stop the
    rest."""
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet([], rules)
    watermark = now.timestamp() - lateness_s
    out = PassReport(datetime.fromtimestamp(watermark, UTC))
    zone = ZoneInfo(tz)
    for rec in ruleset.records:
        out.rules.append(
            record_pass(conn, rec, watermark=watermark, since=since.timestamp(), tz=zone)
        )
    for kpi in ruleset.kpis:
        out.rules.append(kpi_pass(conn, kpi, watermark=watermark, since=since.timestamp(), tz=zone))
    for rule in ruleset.rules:
        with _turn(conn, rule.id) as mine:
            if not mine:
                out.rules.append(RuleReport(rule.id, busy=True))
                continue
            started = time.monotonic()
            try:
                report = evaluate_rule(
                    conn,
                    rule,
                    registry,
                    watermark=watermark,
                    since=since.timestamp(),
                    step_s=step_s,
                    head=now.timestamp() if early else None,
                )
            except FAILURES as exc:
                out.rules.append(_failed(conn, rule.id, exc, started, record=False))
                continue
            report.duration_ms = (time.monotonic() - started) * 1000
            _health(conn, report)
            conn.commit()
            out.rules.append(report)
    return out


def run_forever(
    database_url: str,
    rules: RuleSet | list[Rule],
    registry: Registry,
    *,
    interval_s: float,
    lateness_s: float,
    since: datetime,
    stop: threading.Event,
    tz: str = "Asia/Shanghai",
) -> None:
    """A pass every `interval_s`, reconnecting whenever the database goes away. A pass cut off
    midway loses nothing: each rule's evaluation commits its transitions with its watermark, so
    the next pass starts where the last commit left it."""

    def one_pass(conn: psycopg.Connection[Any]) -> float:
        report = run_pass(
            conn,
            rules,
            registry,
            now=datetime.now(UTC),
            lateness_s=lateness_s,
            since=since,
            tz=tz,
        )
        log.info(
            "rules: %d evaluated up to %s, %d transition(s), %d failing",
            len(report.rules),
            report.watermark.isoformat(timespec="seconds"),
            sum(r.transitions for r in report.rules),
            len(report.failed),
        )
        return interval_s

    keep_connected(database_url, one_pass, stop=stop, what="rules", log=log)
