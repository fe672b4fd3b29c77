"""The alert rules and the Grafana dashboard in manifests/monitoring/.

The rules are checked and unit-tested by Debian's ``promtool`` (the real one, not a parser of
ours); every query of the rules and of the dashboard must name metrics the operator really
exports, read from its own registry. ``tests/cluster/test_monitoring.py`` has a real Prometheus
fire the rollback alert.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from slipway.engine import metrics
from tests.conftest import ROOT

MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "slipway-alerts.rules.yaml"
RULE_TESTS = MONITORING / "tests" / "slipway-alerts.test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:slipway|process)_[a-z0-9_]+)\b")
ALERTS = {"SlipwayReleaseRolledBack", "SlipwayModelDeploymentStalled",
          "SlipwaySmokeTestsNotRunnable", "SlipwayReconcileErrors", "SlipwayNoLeader"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def exported() -> set[str]:
    """The series names the operator's /metrics can carry, by each family's type."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("", "_sum", "_count")}
    names = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel["targets"]]


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in rules()} == ALERTS


def test_promtool_fails_a_rule_that_does_not_fire_as_tested(tmp_path: Any) -> None:
    """Guards the test above: a rule changed under its tests is caught."""
    broken = RULES.read_text().replace('(slipway_leader == 1)) == 1', '(slipway_leader == 1)) == 2')
    assert broken != RULES.read_text()
    (tmp_path / "slipway-alerts.rules.yaml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yaml").write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", str(tmp_path / "tests" / "t.yaml"))
    assert done.returncode != 0 and "SlipwayReleaseRolledBack" in done.stdout + done.stderr


def test_the_counters_the_alerts_take_increase_of_are_exported_from_the_start() -> None:
    """An increase() over a series that appears at 1 is 0: the first SmokeTestsNotRun, or the
    first error, would never fire. The operator exports them at 0 before anything happened."""
    samples = {(sample.name, tuple(sorted(sample.labels.items())))
               for family in metrics.REGISTRY.collect() for sample in family.samples}
    assert ("slipway_rollouts_total", (("reason", "SmokeTestsNotRun"), ("result", "Failed"))) \
        in samples
    assert ("slipway_reconciles_total", (("result", "error"),)) in samples
    for rule in rules():
        for name in METRIC.findall(rule["expr"]):
            if "increase(" in rule["expr"] or "rate(" in rule["expr"]:
                assert any(sample[0] == name for sample in samples), name


def test_the_prometheus_rule_carries_the_same_groups() -> None:
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_every_query_names_metrics_the_operator_exports(where: str) -> None:
    queries = [rule["expr"] for rule in rules()] if where == "rules" else dashboard_queries()
    known = exported()
    assert "slipway_reconciles_total" in known and "process_resident_memory_bytes" in known
    for query in queries:
        names = set(METRIC.findall(query))
        assert names, f"{query!r} names no metric"
        assert names <= known, f"{query!r}: {sorted(names - known)} not exported"


def test_the_dashboard_shows_every_operator_metric() -> None:
    shown = {name for query in dashboard_queries() for name in METRIC.findall(query)}
    ours = {name for name in exported()
            if name.startswith("slipway_") and not name.endswith(("_sum", "_count"))}
    assert ours <= shown, f"metrics no panel shows: {sorted(ours - shown)}"
