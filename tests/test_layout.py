"""The layout holds: the wheel carries the product without its benchmarks, every service's
subcommands are found through their entry points, `urbanpulse` loads no service it does not
run, and every kind the rule-file schema admits has the code that computes it."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
import zipfile
from configparser import ConfigParser
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from rules.kpi import MEASURERS
from rules.recording import RECORDERS
from urbanpulse import cli
from urbanpulse.rulefmt.kpis import Measure
from urbanpulse.rulefmt.records import Record

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("simulators", "ingest", "rules", "notify", "dashboards", "api", "demo")


def test_the_wheel_holds_the_product_and_its_data_but_not_the_benchmarks(tmp_path: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--wheel-dir", str(tmp_path), str(ROOT)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("urbanpulse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"urbanpulse", *SERVICES}
    for data in (
        "urbanpulse/rulefmt/catalogue/flood.yaml",
        "urbanpulse/rulefmt/standards/hj633-2012.yaml",
        "urbanpulse/rulefmt/tests/flood_test.yaml",
        "urbanpulse/db/policy.yaml",
        "notify/notify.yaml",
        "simulators/scenarios/demo.yaml",
    ):
        assert data in names, data
    # each service's commands resolve to a module the wheel holds
    [meta] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry = ConfigParser()
    entry.read_string(zipfile.ZipFile(wheel).read(meta).decode())
    commands = dict(entry["urbanpulse.commands"])
    assert set(commands) == set(SERVICES)
    for target in commands.values():
        module = target.split(":")[0].replace(".", "/") + ".py"
        assert module in names, module


def test_urbanpulse_lists_every_services_commands_and_loads_only_what_it_runs() -> None:
    probe = (
        "import json, sys\n"
        "from urbanpulse.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "commands = sorted(parser._subparsers._group_actions[0].choices)\n"
        "code = main(['rules', 'check'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{SERVICES!r} and not m.endswith('.cli') and '.' in m)\n"
        "print(json.dumps([commands, code, loaded]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    commands, code, loaded = json.loads(out.stdout.splitlines()[-1])
    assert {"db", "devices", "quarantine", "tokens", "status"} <= set(commands)
    assert {"simulate", "replay", "ingest", "rules", "notify", "silences", "grafana", "api"} <= set(
        commands
    )
    assert "demo" in commands and "bench" not in commands
    assert code == 0
    # `rules check` needs the rules' own modules and none of the other services'
    assert all(m.startswith("rules.") for m in loaded), loaded
    assert "paho" not in out.stdout


def test_the_benchmarks_run_from_the_checkout() -> None:
    got = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert got.returncode == 0
    for name in ("ingest", "rules", "api", "simulators"):
        assert name in got.stdout
    got = subprocess.run(
        [sys.executable, "-m", "bench", "rules", "--help"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert got.returncode == 0 and "python -m bench rules" in got.stdout


def test_a_broken_service_takes_only_its_own_commands_with_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = entry_points(group=cli.ENTRY_POINTS)
    broken = EntryPoint("ghost", "no_such_service.cli:register", cli.ENTRY_POINTS)
    monkeypatch.setattr(cli, "entry_points", lambda group: [*real, broken])
    parser = cli.build_parser()
    commands = dict(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr,arg-type]
    assert {"db", "rules", "api", "notify"} <= set(commands)
    assert "the ghost commands are unavailable" in capsys.readouterr().err


def _kinds(union: object) -> set[str]:
    """The `kind` values a discriminated union of the rule-file schema admits."""
    members = typing.get_args(typing.get_args(union)[0])
    return {k for m in members for k in typing.get_args(m.model_fields["kind"].annotation)}


def test_every_kind_the_rule_files_may_name_has_its_code() -> None:
    """The schema (core) and the code computing it (rules/) are apart: a kind added to the one
    without the other fails here, not in a runner at night."""
    assert _kinds(Record) == set(RECORDERS) == {
        "aqi", "pollution_warning", "water_balance", "night_flow", "occupancy", "ponding_events",
    }  # fmt: skip
    assert _kinds(Measure) == set(MEASURERS)
    assert "share_days" in MEASURERS
