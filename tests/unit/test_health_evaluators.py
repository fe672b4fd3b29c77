"""Argo CD's health_test.yaml for ModelDeployment, and the README's table of verdicts.

``health_test.yaml`` and ``testdata/`` are Argo CD's own layout (``resource_customizations/
<group>/<Kind>/``), so the check can be upstreamed as it is; the objects in ``testdata/`` were
captured from the local cluster by ``tests/cluster/test_health_evaluators.py`` (one per state a
release reaches). Here each one is run as Argo CD's ``util/lua/health_test.go`` runs it (status
and message exactly), in Lua 5.4 with and without ``useOpenLibs`` and in Lua 5.1, and given to
kstatus, whose verdict must be the README's for that state.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests import evaluators
from tests.conftest import ROOT
from tests.unit.test_argocd_health import run_health

TESTS = yaml.safe_load(evaluators.HEALTH_TEST.read_text())["tests"]


def load(case: dict[str, Any]) -> dict[str, Any]:
    return dict(yaml.safe_load((evaluators.CUSTOMIZATION / case["inputPath"]).read_text()))


def test_there_is_a_captured_object_for_every_state_of_the_table() -> None:
    states = [evaluators.state_of(load(case)) for case in TESTS]
    assert sorted(states) == sorted(evaluators.BY_STATE)


@pytest.mark.parametrize("mode", evaluators.MODES)
def test_health_test_yaml_passes_in_lua_5_4(mode: str) -> None:
    verdicts = evaluators.argocd([load(case) for case in TESTS], mode)
    for case, verdict in zip(TESTS, verdicts):
        expected = case["healthStatus"]
        assert (verdict.get("status"), verdict.get("message"), verdict.get("globals")) == \
            (expected["status"], expected["message"], []), case["inputPath"]


def test_health_test_yaml_passes_in_lua_5_1() -> None:
    for case in TESTS:
        run = run_health(load(case))
        assert (run.status, run.message) == (case["healthStatus"]["status"],
                                             case["healthStatus"]["message"])


def test_kstatus_and_argo_cd_give_the_readme_verdicts() -> None:
    objects = [load(case) for case in TESTS]
    for case, obj, verdict in zip(TESTS, objects, evaluators.kstatus(objects)):
        expected = evaluators.BY_STATE[evaluators.state_of(obj)]
        assert (verdict.get("status"), case["healthStatus"]["status"]) == \
            (expected.kstatus, expected.argocd), case["inputPath"]
        if expected.argocd == "Degraded":  # the same words in both tools
            assert verdict["message"] == case["healthStatus"]["message"]


def test_the_readme_table_is_the_tests_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.find(evaluators.README_BEGIN), readme.find(evaluators.README_END)
    assert start >= 0 and end > start, "README.md lost the health table's markers"
    assert readme[start:end + len(evaluators.README_END)] == evaluators.readme_table(), \
        "README.md's health table drifted; put this in its place:\n" + evaluators.readme_table()
