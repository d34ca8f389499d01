"""`urbanpulse status`: each component's state from the database and the broker."""

from __future__ import annotations

import json

import psycopg

from tests.services import Mosquitto
from tests.test_cli import cli
from urbanpulse.serve import free_port


def states(out: str) -> dict[str, str]:
    return {c["component"]: c["state"] for c in json.loads(out)}


def test_status_tells_what_is_up_what_lags_and_what_fails(db_url: str, broker: Mosquitto) -> None:
    env = {"URBANPULSE_DATABASE_URL": db_url, "URBANPULSE_MQTT_URL": broker.url}
    fresh = cli("status", "--json", env=env)
    assert fresh.returncode == 0, fresh.stderr
    got = states(fresh.stdout)
    assert got["broker"] == "ok" and got["database"] == "ok"
    assert got["ingest"] == "warn" and got["rules"] == "warn"  # nothing stored, never run
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO rule_health (rule_id, last_eval_at, last_error, last_error_at) "
            "VALUES ('flood.ponding_15cm', now(), 'UndefinedTable: relation x', now())"
        )
    failing = cli("status", env=env)
    assert failing.returncode == 1
    assert "flood.ponding_15cm: UndefinedTable" in failing.stdout
    down = cli(
        "status", "--json", env={**env, "URBANPULSE_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
    )
    assert down.returncode == 1 and states(down.stdout)["broker"] == "fail"
    nodb = cli(
        "status",
        "--json",
        env={**env, "URBANPULSE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"},
    )
    assert nodb.returncode == 1 and states(nodb.stdout)["database"] == "fail"
