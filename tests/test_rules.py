"""Rule files, rule unit tests and the pure rule evaluation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from rules.evaluate import EntitySeries, evaluate, firing, signal_at
from rules.ruletest import run_test_files
from tests.test_cli import cli
from urbanpulse.alerts.lifecycle import Signal
from urbanpulse.contract.registry import default_registry
from urbanpulse.errors import ContractError
from urbanpulse.rulefmt.model import Rule, catalogue_files, load_rule_files, rule_test_files

RULES = Path(__file__).resolve().parents[1] / "urbanpulse" / "rulefmt"
REGISTRY = default_registry()
T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()


def rule(**over: object) -> Rule:
    base: dict[str, object] = {
        "id": "test.rule",
        "title": {"zh": "测试", "en": "test"},
        "type": "threshold",
        "series": {"metric": "depth"},
        "condition": {"op": ">=", "value": 15, "clear": 12},
        "severity": "critical",
        "owner": "区住房城乡建委",
        "implements": {"clause": "二、(四)"},
    }
    base.update(over)
    return Rule.model_validate(base)


def test_the_packaged_catalogue_checks_and_its_unit_tests_pass() -> None:
    rules = load_rule_files(catalogue_files(), REGISTRY)
    assert {"flood.ponding_15cm", "air.pm25_24h_75", "device.offline", "device.stuck"} <= {
        r.id for r in rules
    }
    cases, failures = run_test_files(rule_test_files(), REGISTRY)
    assert cases >= 4 and failures == []


def test_every_catalogue_rule_has_unit_tests() -> None:
    tested = set()
    for path in rule_test_files():
        spec = yaml.safe_load(path.read_text("utf-8"))
        tested |= {a["rule"] for case in spec["tests"] for a in case["alerts"]}
    rules = {r.id for r in load_rule_files(catalogue_files(), REGISTRY)}
    assert rules - tested == set()


def test_a_wrong_expectation_is_a_failure(tmp_path: Path) -> None:
    text = (RULES / "tests" / "flood_test.yaml").read_text()
    bad = tmp_path / "bad_test.yaml"
    bad.write_text(
        text.replace("../catalogue/flood.yaml", str(RULES / "catalogue" / "flood.yaml")).replace(
            "{at: 2m, rule: flood.ponding_15cm, firing: [fl-a]}",
            "{at: 2m, rule: flood.ponding_15cm, firing: [fl-b]}",
        )
    )
    cases, failures = run_test_files([bad], REGISTRY)
    assert cases >= 1 and len(failures) == 1
    assert "firing ['fl-a'], expected ['fl-b']" in failures[0].message
    out = cli("rules", "test", str(bad))
    assert out.returncode == 1 and "FAIL" in out.stdout


def test_rule_files_are_strict_and_every_problem_has_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - id: flood.a\n"
        "    title: {zh: 甲, en: a}\n"
        "    type: threshold\n"
        "    series: {metric: depth}\n"
        "    condition: {op: '>=', value: 15, clear: 20}\n"
        "    severity: critical\n"
        "    owner: 区住房城乡建委\n"
        "    implements: {clause: x}\n"
        "    colour: red\n"
        "  - id: flood.b\n"
        "    title: {zh: 乙, en: b}\n"
        "    type: stuck\n"
        "    series: {metric: depth}\n"
        "    severity: loud\n"
        "    owner: 某某局\n"
        "    implements: {clause: x}\n"
    )
    with pytest.raises(ContractError) as err:
        load_rule_files([bad], REGISTRY)
    text = str(err.value)
    assert f"{bad}:6: rules.0.condition" in text and "must not be above" in text
    assert f"{bad}:10: rules.0.colour: Extra inputs" in text
    assert f"{bad}:15: rules.1.severity" in text
    assert f"{bad}:16: rules.1.owner" in text and "某某局" in text
    out = cli("rules", "check", str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stderr and ":10:" in out.stderr


def test_unknown_metrics_and_repeated_ids_are_refused(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text((RULES / "catalogue" / "flood.yaml").read_text())
    two = tmp_path / "two.yaml"
    two.write_text(
        (RULES / "catalogue" / "flood.yaml").read_text().replace("metric: depth", "metric: mud")
    )
    with pytest.raises(ContractError) as err:
        load_rule_files([one, two], REGISTRY)
    assert "unknown metric 'mud'" in str(err.value) and "already used" in str(err.value)


def test_threshold_band_rate_and_missing_data() -> None:
    r = rule(window=60)
    s = EntitySeries("d", [T0, T0 + 60, T0 + 120, T0 + 180], [10.0, 16.0, 13.0, 11.0])
    assert [signal_at(r, s, T0 + k * 60).signal for k in range(4)] == [
        Signal.CLEAR,
        Signal.BREACH,
        Signal.BAND,
        Signal.CLEAR,
    ]
    assert signal_at(r, s, T0 - 60).signal is Signal.UNKNOWN  # nothing in the window yet
    rate = rule(type="rate", window=3600, condition={"op": ">", "value": 5})
    rising = EntitySeries("d", [T0, T0 + 1800, T0 + 3600], [0.0, 4.0, 8.0])  # 8 per hour
    ev = signal_at(rate, rising, T0 + 3600)
    assert ev.signal is Signal.BREACH and ev.value == pytest.approx(8.0)
    # a gap (no data) in the middle of a breach keeps the alert firing
    gap = EntitySeries("d", [T0, T0 + 600], [20.0, 20.0])
    outcomes = evaluate(rule(window=60), [gap], [T0 + k * 60 for k in range(10)])
    assert firing(outcomes) == ["d"]


def test_cli_rules_check_and_test_the_packaged_files() -> None:
    out = cli("rules", "check")
    assert out.returncode == 0 and "flood.ponding_15cm" in out.stdout
    out = cli("rules", "test")
    assert out.returncode == 0 and "0 failure(s)" in out.stdout
