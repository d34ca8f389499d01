"""The Grafana dashboards: generated from the rule files, valid, and every panel's query runs
(macros expanded as Grafana does) against a database seeded with the demo scenario."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml

from rules.grafana import DATASOURCE, boards, dashboard_json, dashboards_folder, expand
from rules.model import RuleSet, catalogue_files, load_rules
from rules.notify.config import load_config
from rules.notify.service import Context, plan
from rules.runner import run_pass
from simulators.run import Plan
from tests.services import SERVER_URL, scratch_database
from tests.test_rules_scenarios import load
from urbanpulse.contract import default_registry
from urbanpulse.db.migrate import migrate
from urbanpulse.db.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = load_rules(catalogue_files(), default_registry())


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[str, Plan]]:
    """The demo scenario stored, the catalogue run over it, the notifier's messages planned."""
    with scratch_database(SERVER_URL) as url:
        migrate(url, load_policy(), timescale_mode="off")
        scenario = load(url, "demo")
        with psycopg.connect(url) as conn:
            run_pass(
                conn,
                CATALOGUE,
                default_registry(),
                now=datetime.fromtimestamp(scenario.end, UTC),
                lateness_s=0,
                since=datetime.fromtimestamp(scenario.start, UTC),
            )
            config = load_config().model_copy(update={"group_wait": 0.0})
            ctx = Context(config, {r.id: r for r in CATALOGUE.rules}, ZoneInfo("Asia/Shanghai"))
            plan(conn, ctx, datetime.now(UTC))
        yield url, scenario


def test_every_panel_query_runs_and_shows_data(seeded: tuple[str, Plan]) -> None:
    url, scenario = seeded
    start = datetime.fromtimestamp(scenario.start, UTC)
    end = datetime.fromtimestamp(scenario.end, UTC)
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
                text = expand(sql, start=start, end=end, interval_s=300, variables=variables)
                try:
                    rows = conn.execute(text).fetchall()
                except psycopg.Error as exc:
                    pytest.fail(f"{board.uid} / {title}: {exc}\n{text}")
                conn.rollback()
                assert rows or not expect_rows, f"{board.uid} / {title}: no rows\n{text}"
                ran += 1
    assert ran >= 25


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
