"""A real API server for the tests: its own database holding the demo scenario (alerts raised by
the rule engine), a token per role, and `urbanpulse api` running as a process on a free port."""

from __future__ import annotations

import atexit
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
from psycopg import sql

from notify.config import load_config
from notify.context import Context
from notify.plan import plan
from rules.runner import run_pass
from simulators.run import Plan
from tests.services import SERVER_URL, scratch_database
from tests.test_rules_scenarios import evaluate_all, load
from urbanpulse import serve
from urbanpulse.contract import default_registry
from urbanpulse.db.connect import database_name, drop_database, with_database
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy
from urbanpulse.db.tokens import Role, create_token
from urbanpulse.links import link_key, verify
from urbanpulse.rulefmt.model import Rule, catalogue_files, load_rules
from urbanpulse.serve import free_port

CATALOGUE = load_rules(catalogue_files(), default_registry())
FLOOD_DEPT = "区城市管理局"


@dataclass
class ApiServer:
    url: str
    db_url: str
    plan: Plan
    tokens: dict[str, str]  # viewer, operator, admin, flood_operator (acts for FLOOD_DEPT)
    proc: subprocess.Popen[bytes]

    def client(self, who: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def seed(url: str) -> Plan:
    """The demo scenario stored and the rule catalogue run over it."""
    migrate(url, load_policy(), timescale_mode="off")
    scenario = load(url, "demo")
    evaluate_all(url, scenario)
    return scenario


# One seeded template per server and test process: seeding the demo takes ~25 s, a copy of
# its database a fraction of a second (CREATE DATABASE … TEMPLATE copies the files).
_TEMPLATES: dict[str, tuple[str, Plan]] = {}


def _template(server_url: str) -> tuple[str, Plan]:
    if server_url not in _TEMPLATES:
        url = with_database(server_url, f"up_tpl_{uuid.uuid4().hex[:12]}")
        atexit.register(drop_database, url)
        _TEMPLATES[server_url] = (url, seed(url))
    return _TEMPLATES[server_url]


@contextmanager
def seeded_database(server_url: str = SERVER_URL) -> Iterator[tuple[str, Plan]]:
    """A database of the caller's own holding what `seed` stores (plain PostgreSQL), copied
    from a template seeded once; dropped afterwards."""
    template, plan = _template(server_url)
    with scratch_database(server_url) as url:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(database_name(url)), sql.Identifier(database_name(template))
                )
            )
        yield url, plan


@contextmanager
def start_api(
    db_url: str, *, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        proc, url = serve.start_api(db_url, free_port(), env=env, log=Path(log.name))
        try:
            yield url, proc
        finally:
            serve.stop_process(proc)


def make_tokens(db_url: str) -> dict[str, str]:
    """A token per role, and `flood_operator`: an operator acting for FLOOD_DEPT."""
    tokens: dict[str, str] = {}
    with psycopg.connect(db_url) as conn:
        for role in Role:
            tokens[role.value], _ = create_token(conn, f"test-{role.value}", role)
        tokens["flood_operator"], _ = create_token(
            conn, "test-flood-operator", Role.OPERATOR, department=FLOOD_DEPT
        )
    return tokens


@contextmanager
def api_server() -> Iterator[ApiServer]:
    with seeded_database() as (db_url, scenario):
        tokens = make_tokens(db_url)
        with start_api(db_url) as (url, proc):
            yield ApiServer(url, db_url, scenario, tokens, proc)


def notification_link(server: ApiServer, alert_id: int) -> str:
    """The acknowledgement link of the alert's department, taken from the message the notifier
    plans for it (the address points at `server`)."""
    return link_for(server.db_url, server.url, alert_id)


def link_for(db_url: str, api_url: str, alert_id: int, department: str | None = None) -> str:
    """`notification_link` for any database and API server; `department` chooses among the
    departments an alert goes to when it goes to several."""
    with psycopg.connect(db_url) as conn:
        key = link_key(conn)
        config = load_config().model_copy(
            update={"group_wait": 0.0, "ack_url": api_url + "/ack/{token}"}
        )
        ctx = Context(
            config,
            {r.id: r for r in CATALOGUE.rules},
            ZoneInfo("Asia/Shanghai"),
            link_key=key,
            link_ttl_s=3600,
        )
        plan(conn, ctx, datetime.now(UTC))
        bodies = [
            str(b)
            for (b,) in conn.execute(
                "SELECT body FROM notifications WHERE %s = ANY(alert_ids)", (alert_id,)
            )
        ]
    found = {
        u
        for b in bodies
        for u in re.findall(re.escape(api_url) + r"/ack/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", b)
    }
    claims = {u: verify(key, u.rsplit("/", 1)[1], time.time()) for u in found}
    mine = [
        u
        for u, c in claims.items()
        if c.alert_id == alert_id and department in (None, c.department)
    ]
    # the message is signed per alert and department
    assert len(mine) == 1, (alert_id, found, bodies)
    return str(mine[0])


PONDING_POINT = "fl-lc-honghe"


def pond(
    db_url: str, depths: list[tuple[str, datetime, float]], *, since: datetime, now: datetime
) -> Rule:
    """Depth readings (device, time, cm) stored, then one pass of the ponding rule over them,
    from `since` to `now` without lateness: the rule engine raises (and clears) its alerts.
    Returns the rule."""
    rule = next(r for r in CATALOGUE.rules if r.id == "flood.ponding_15cm")
    with psycopg.connect(db_url) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO readings (device_id, metric, ts, value) VALUES (%s, 'depth', %s, %s)",
                depths,
            )
        conn.commit()
        report = run_pass(conn, [rule], default_registry(), now=now, lateness_s=0, since=since)
        assert not report.failed, report
    return rule


def raise_ponding(server: ApiServer) -> Rule:
    """Water stands 30 cm deep at a carriageway point after the scenario; the rule engine
    raises the ponding alert on it (its department: 区住房城乡建委). Returns the rule."""
    end = datetime.fromtimestamp(server.plan.end, UTC)
    depths = [(PONDING_POINT, end + timedelta(minutes=m), 30.0) for m in range(1, 12)]
    return pond(server.db_url, depths, since=end, now=end + timedelta(minutes=12))
