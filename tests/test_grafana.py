"""The Grafana dashboards: generated from the rule files, valid, and every panel's query runs
(macros expanded as Grafana does) against a database seeded with the demo scenario."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml

from dashboards.grafana import DATASOURCE, boards, dashboard_json, dashboards_folder, expand
from notify.config import load_config
from notify.context import Context
from notify.plan import plan
from simulators.run import Plan
from tests.apiserver import seeded_database
from tests.services import PLAIN, TIMESCALE, Backend, need_timescale, scratch_database
from tests.test_rules_scenarios import evaluate_all, load
from urbanpulse.contract import default_registry
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy, refresh_rollups
from urbanpulse.rulefmt.model import RuleSet, catalogue_files, load_rules

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = load_rules(catalogue_files(), default_registry())


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(PLAIN, id="plain"),
        pytest.param(TIMESCALE, id="timescaledb", marks=pytest.mark.timescaledb),
    ],
)
def seeded(request: pytest.FixtureRequest) -> Iterator[tuple[str, Plan, Backend]]:
    """The demo scenario stored, the catalogue run over it, the notifier's messages planned,
    on each storage path."""
    backend: Backend = request.param
    if backend.timescale:
        need_timescale()
    with contextlib.ExitStack() as stack:
        if backend.timescale:  # its scheduler's sessions keep a template from being copied
            url = stack.enter_context(scratch_database(backend.server_url))
            migrate(url, load_policy(), timescale_mode=backend.timescale_mode)
            scenario = load(url, "demo")
            evaluate_all(url, scenario)
        else:
            url, scenario = stack.enter_context(seeded_database(backend.server_url))
        with psycopg.connect(url) as conn:
            config = load_config().model_copy(update={"group_wait": 0.0})
            ctx = Context(config, {r.id: r for r in CATALOGUE.rules}, ZoneInfo("Asia/Shanghai"))
            plan(conn, ctx, datetime.now(UTC))  # the outbox is dated by the wall clock
            conn.commit()
        # TimescaleDB refreshes a continuous aggregate outside any transaction
        with psycopg.connect(url, autocommit=True) as conn:
            refresh_rollups(  # what `db maintain` (or TimescaleDB's policies) keeps up to date
                conn,
                load_policy(),
                timescale=backend.timescale,
                now=datetime.fromtimestamp(scenario.end, UTC),
                since=datetime.fromtimestamp(scenario.start, UTC),
            )
        yield url, scenario, backend


@pytest.mark.parametrize("extra_days", [0, 27], ids=["three days: raw", "a month: rollups"])
def test_every_panel_query_runs_and_shows_data(
    seeded: tuple[str, Plan, Backend], extra_days: int
) -> None:
    """Over the scenario's three days the panels read raw readings; over a month (the
    scenario's days and 27 before), the hourly rollup: both must show data. On TimescaleDB
    the data source groups time with time_bucket, and the rollups are continuous aggregates."""
    url, scenario, backend = seeded
    start = datetime.fromtimestamp(scenario.start, UTC) - timedelta(days=extra_days)
    end = datetime.fromtimestamp(scenario.end, UTC)
    interval = 300 if extra_days == 0 else 3600
    ran = 0
    with psycopg.connect(url) as conn:
        for board in boards(CATALOGUE):
            variables = {
                v.name: [str(r[0]) for r in conn.execute(v.sql).fetchall()] for v in board.variables
            }
            assert all(variables.values()), (board.uid, variables)
            queries = [(p.title, p.sql, p.expect_rows) for p in board.panels]
            for ann in dashboard_json(board)["annotations"]["list"]:
                queries.append((ann["name"], ann["target"]["rawSql"], True))
            for title, sql, expect_rows in queries:
                text = expand(
                    sql,
                    start=start,
                    end=end,
                    interval_s=interval,
                    variables=variables,
                    timescaledb=backend.timescale,
                )
                try:
                    rows = conn.execute(text).fetchall()
                except psycopg.Error as exc:
                    pytest.fail(f"{board.uid} / {title}: {exc}\n{text}")
                conn.rollback()
                assert rows or not expect_rows, f"{board.uid} / {title}: no rows\n{text}"
                ran += 1
    assert ran >= 25


def test_expand_gives_what_grafana_sends() -> None:
    t0, t1 = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    sql = (
        "SELECT $__timeGroupAlias(ts, $__interval), $__timeGroupAlias(bucket, '1h') "
        "WHERE $__timeFilter(ts) AND x IN ($station) -- every $__interval"
    )
    plain = expand(sql, start=t0, end=t1, interval_s=300, variables={"station": ["a", "b'c"]})
    assert 'floor(extract(epoch from ts)/300)*300 AS "time"' in plain
    assert 'floor(extract(epoch from bucket)/3600)*3600 AS "time"' in plain
    assert "ts BETWEEN '2026-11-01T00:00:00+00:00' AND '2026-11-02T00:00:00+00:00'" in plain
    assert "IN ('a','b''c')" in plain and plain.endswith("every 5m")
    ts = expand(sql, start=t0, end=t1, interval_s=300, variables={}, timescaledb=True)
    assert "time_bucket('300s', ts) AS \"time\"" in ts


def test_dashboards_are_valid_and_their_datasource_resolves() -> None:
    dashboards = [dashboard_json(b) for b in boards(CATALOGUE)]
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == len(uids) == 6
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/urbanpulse.yaml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == DATASOURCE["uid"]
    for d in dashboards:
        assert d["schemaVersion"] >= 36 and d["title"] and d["panels"]
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids)
        for p in d["panels"]:
            assert p["datasource"] == DATASOURCE and p["targets"][0]["rawSql"]
            grid = p["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        for v in d["templating"]["list"]:
            assert v["datasource"] == DATASOURCE and v["query"]


def test_the_committed_dashboards_are_what_the_rule_files_make() -> None:
    for board in boards(CATALOGUE):
        path = dashboards_folder() / f"{board.uid}.json"
        assert path.exists(), f"{path} missing: run `urbanpulse grafana build`"
        assert json.loads(path.read_text()) == dashboard_json(board), (
            f"{path} is stale: run `urbanpulse grafana build`"
        )


def test_a_rule_change_shows_on_the_dashboards() -> None:
    rules = []
    for rule in CATALOGUE.rules:
        changed = rule
        if rule.id == "flood.ponding_15cm" and rule.condition is not None:
            cond = rule.condition.model_copy(update={"value": 20.0, "clear": 16.0})
            changed = rule.model_copy(update={"condition": cond})
        rules.append(changed)
    flood = next(b for b in boards(RuleSet(CATALOGUE.records, rules)) if b.uid == "up-flood")
    depth = dashboard_json(flood)["panels"][0]["fieldConfig"]["defaults"]["thresholds"]
    assert [s["value"] for s in depth["steps"]] == [None, 16.0, 20.0]


class FakeGrafana:
    """A local HTTP server answering the Grafana HTTP API endpoints the provisioning uses, as
    documented (https://grafana.com/docs/grafana/latest/developers/http_api/), and checking
    each request's method, path, token and payload against them."""

    def __init__(self, token: str, version: str = "10.4.2") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from urbanpulse.serve import free_port

        self.port = free_port()
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.problems: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                fake.calls.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._answer(401, {"message": "invalid API key"})
                    return
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size)) if size else None
                self._answer(*fake.handle(method, self.path, body))

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def log_message(self, *args: object) -> None:
                pass

        self.version = version
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def need(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, object]:
        if (method, path) == ("GET", "/api/health"):
            return 200, {"database": "ok", "version": self.version}
        if (method, path) == ("GET", "/api/frontend/settings"):  # the client reads the version
            return 200, {"buildInfo": {"version": self.version}}
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if method == "GET":
                got = self.datasources.get(uid)
                return (200, got) if got else (404, {"message": "Data source not found"})
            if method == "PUT":
                self.need(body.get("uid") == uid and body.get("type"), f"PUT datasource {body}")
                self.datasources[uid] = body
                return 200, {"message": "Datasource updated", "id": 1}
        if (method, path) == ("POST", "/api/datasources"):
            for key in ("name", "type", "access", "url", "jsonData", "secureJsonData"):
                self.need(key in body, f"POST datasource without {key}")
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added", "id": 1, "name": body["name"]}
        if path.startswith("/api/folders/") and method == "GET":
            uid = path.rsplit("/", 1)[1]
            got = self.folders.get(uid)
            return (200, got) if got else (404, {"message": "folder not found"})
        if (method, path) == ("POST", "/api/folders"):
            self.need(bool(body.get("title")) and bool(body.get("uid")), f"POST folder {body}")
            self.folders[body["uid"]] = body
            return 200, {"uid": body["uid"], "title": body["title"]}
        if (method, path) == ("POST", "/api/dashboards/db"):
            dash = body.get("dashboard", {})
            self.need(body.get("overwrite") is True, "dashboard saved without overwrite")
            self.need(body.get("folderUid") in self.folders, "dashboard in an unknown folder")
            self.need(dash.get("id") is None and bool(dash.get("uid")), "dashboard id/uid")
            self.dashboards[dash["uid"]] = dash
            return 200, {"status": "success", "uid": dash["uid"], "version": 1}
        self.problems.append(f"undocumented call {method} {path}")
        return 404, {"message": "not found"}


def test_provisioning_creates_then_updates_by_uid_through_the_http_api() -> None:
    from dashboards.provision import DatasourceSpec, provision
    from urbanpulse.errors import UrbanPulseError

    fake = FakeGrafana(token="glsa_test")
    spec = DatasourceSpec("db.internal:5432", "urbanpulse", "grafana_ro", "s3cret")
    first = provision(fake.url, "glsa_test", CATALOGUE, spec)
    assert "data source urbanpulse-postgres: created" in first
    assert "folder urbanpulse: created" in first
    assert set(fake.dashboards) == {b.uid for b in boards(CATALOGUE)}
    ds = fake.datasources["urbanpulse-postgres"]
    assert ds["jsonData"]["database"] == "urbanpulse" and ds["url"] == "db.internal:5432"
    again = provision(fake.url, "glsa_test", CATALOGUE, spec)  # idempotent: by uid
    assert "data source urbanpulse-postgres: updated" in again
    assert "folder urbanpulse: exists" in again
    assert len(fake.dashboards) == 6 and fake.problems == []
    with pytest.raises(UrbanPulseError, match="refused the token"):
        provision(fake.url, "wrong", CATALOGUE, spec)
    old = FakeGrafana(token="t", version="10.1.5")  # before grafana-postgresql-datasource
    with pytest.raises(UrbanPulseError, match="too old"):
        provision(old.url, "t", CATALOGUE, spec)
    fake.server.shutdown()
    old.server.shutdown()


def test_build_and_provision_from_the_command_line(tmp_path: Path) -> None:
    from tests.test_cli import cli

    out = cli("grafana", "build", "--out", str(tmp_path))
    assert out.returncode == 0 and len(list(tmp_path.glob("up-*.json"))) == 6
    fake = FakeGrafana(token="glsa_cli")
    env = {"URBANPULSE_GRAFANA_TOKEN": "glsa_cli", "URBANPULSE_GRAFANA_DB_PASSWORD": "pw"}
    done = cli(
        "grafana", "provision", "--url", fake.url, "--db-host", "db:5432", "--db-user", "ro",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dashboard up-overview: saved" in done.stdout and "pw" not in done.stdout
    missing = cli(
        "grafana", "provision", "--url", fake.url, "--db-user", "ro",
        env={"URBANPULSE_GRAFANA_TOKEN": ""},
    )  # fmt: skip
    assert missing.returncode != 0 and "URBANPULSE_GRAFANA_TOKEN" in missing.stderr
    fake.server.shutdown()
