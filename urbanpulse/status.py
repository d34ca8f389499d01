"""`urbanpulse status`: each component's health, lag and last error, read from the database
(and a TCP check of the broker), for an operator's first look.

A component is `ok`, `warn` or `fail`; the command exits 0 when nothing fails, 1 otherwise.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from urbanpulse.broker import parse_broker_url


@dataclass(frozen=True, slots=True)
class Check:
    component: str
    state: str  # ok | warn | fail
    detail: str


def _age(now: datetime, t: datetime | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, (now - t).total_seconds())
    return (
        f"{s:.0f} s ago"
        if s < 120
        else f"{s / 60:.0f} min ago"
        if s < 7200
        else f"{s / 3600:.1f} h ago"
    )


def broker_check(url: str, timeout: float = 2.0) -> Check:
    addr = parse_broker_url(url)
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout):
            return Check("broker", "ok", f"{addr.host}:{addr.port} accepts connections")
    except OSError as exc:
        return Check("broker", "fail", f"{addr.host}:{addr.port}: {exc.strerror or exc}")


def database_checks(
    conn: psycopg.Connection[Any], now: datetime, *, stale_after_s: float = 600.0
) -> list[Check]:
    out: list[Check] = []
    version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    out.append(Check("database", "ok", f"schema version {version[0] if version else '?'}"))

    last = conn.execute("SELECT max(ingested_at) FROM readings").fetchone()
    latest = last[0] if last else None
    recent = conn.execute(
        "SELECT count(*) FROM readings WHERE ingested_at > %s", (now - timedelta(minutes=5),)
    ).fetchone()
    state = "ok" if latest and (now - latest).total_seconds() < stale_after_s else "warn"
    out.append(
        Check(
            "ingest",
            state,
            f"last reading stored {_age(now, latest)}; {recent[0] if recent else 0} in 5 min",
        )
    )
    pending = conn.execute(
        "SELECT reason, count(*) FROM quarantine WHERE state = 'pending' GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    total = sum(int(n) for _, n in pending)
    out.append(
        Check(
            "quarantine",
            "ok" if total == 0 else "warn",
            "nothing waiting"
            if not total
            else f"{total} waiting: " + ", ".join(f"{r} {n}" for r, n in pending[:4]),
        )
    )

    rows = conn.execute(
        "SELECT rule_id, watermark, last_eval_at, last_error, last_error_at, last_ok_at "
        "FROM rule_health"
    ).fetchall()
    failing = [r for r in rows if r[4] is not None and (r[5] is None or r[4] > r[5])]
    evaluated = [r[2] for r in rows if r[2] is not None]
    last_eval = max(evaluated) if evaluated else None
    if not rows:
        out.append(Check("rules", "warn", "never run: start `urbanpulse rules run`"))
    else:
        state = "fail" if failing else "ok"
        if last_eval is None or (now - last_eval).total_seconds() > stale_after_s:
            state = "warn" if state == "ok" else state
        detail = f"{len(rows)} rules, records and KPIs; last pass {_age(now, last_eval)}"
        if failing:
            worst = failing[0]
            detail += f"; {len(failing)} failing, e.g. {worst[0]}: {str(worst[3])[:120]}"
        out.append(Check("rules", state, detail))

    alerts = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'firing'), count(*) FILTER "
        "(WHERE status = 'pending') FROM alerts"
    ).fetchone()
    out.append(Check("alerts", "ok", f"{alerts[0]} firing, {alerts[1]} pending" if alerts else "-"))

    notes = conn.execute(
        """
        SELECT count(*) FILTER (WHERE state IN ('pending', 'sending')),
               min(created_at) FILTER (WHERE state IN ('pending', 'sending')),
               count(*) FILTER (WHERE state = 'dead' AND created_at > %s),
               max(last_error) FILTER (WHERE state = 'dead' AND created_at > %s)
          FROM notifications
        """,
        (now - timedelta(days=1), now - timedelta(days=1)),
    ).fetchone()
    if notes is not None:
        waiting, oldest, dead, error = notes
        state = "ok"
        if oldest is not None and (now - oldest).total_seconds() > stale_after_s:
            state = "warn"
        if dead:
            state = "warn"
        detail = f"{waiting} waiting (oldest {_age(now, oldest)}), {dead} dead in 24 h"
        if error:
            detail += f"; e.g. {str(error)[:100]}"
        out.append(Check("notify", state, detail))
    conn.commit()
    return out
