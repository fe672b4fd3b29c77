"""Readiness gates, read without a cluster: what is due for each pod."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from slipway.api import validation
from slipway.logic import gates, render
from tests.conftest import EXAMPLES

META = render.Meta(name="iris", namespace="ml", uid="u-1")
GEN = 5
T0 = "2026-12-02T10:00:00Z"
T1 = "2026-12-02T10:00:07Z"  # the gate opened
T2 = "2026-12-02T10:05:00Z"  # later


def pod(name: str = "iris-abc-1", revision: str = "r1", *, containers_ready: bool = True,
        gate: dict[str, Any] | None = None, started: str = T0, running: bool = True,
        restarts: int = 0, gated: bool = True, ip: str | None = "10.0.0.5") -> dict[str, Any]:
    conds: list[dict[str, Any]] = [
        {"type": "ContainersReady", "status": "True" if containers_ready else "False"}]
    if gate is not None:
        conds.append(gate)
    state = {"running": {"startedAt": started}} if running else \
        {"waiting": {"reason": "CrashLoopBackOff"}}
    status: dict[str, Any] = {"conditions": conds, "containerStatuses": [
        {"name": "model-server", "state": state, "restartCount": restarts}]}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {"name": name, "uid": f"uid-{name}",
                     "labels": {render.LABEL_OWNER: "iris", render.LABEL_REVISION: revision},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "iris-abc",
                                          "controller": True}]},
        "spec": {"readinessGates": [{"conditionType": gates.GATE}] if gated else []},
        "status": status,
    }


def opened(generation: int = GEN, restarts: int = 0, at: str = T1) -> dict[str, Any]:
    return {"type": gates.GATE, "status": "True", "reason": gates.PASSED,
            "message": f"generation {generation}, restarts {restarts}: 2 of 2 smoke tests passed",
            "lastTransitionTime": at}


def closed(reason: str, generation: int = GEN, restarts: int = 0) -> dict[str, Any]:
    return {"type": gates.GATE, "status": "False", "reason": reason,
            "message": f"generation {generation}, restarts {restarts}: expected 200, got 500",
            "lastTransitionTime": T1}


CASES = [
    ("new pod, containers ready: test it", pod(), "test"),
    ("still starting", pod(containers_ready=False), "waiting"),
    ("no address yet", pod(ip=None), "waiting"),
    ("opened for this generation", pod(gate=opened()), "verified"),
    ("opened by an earlier generation's tests", pod(gate=opened(GEN - 1)), "earlier"),
    ("container started after the gate opened", pod(gate=opened(), started=T2), "close"),
    ("container not running any more", pod(gate=opened(), running=False), "close"),
    ("a restart came and went between two looks", pod(gate=opened(), restarts=1), "close"),
    ("failed this generation: not tested again", pod(gate=closed(gates.FAILED)), "failed"),
    ("could not be tested: not tested again", pod(gate=closed(gates.NOT_RUN)), "failed"),
    ("failed, then restarted: tested again", pod(gate=closed(gates.FAILED), restarts=1), "test"),
    ("failed an earlier generation's tests: tested again",
     pod(gate=closed(gates.FAILED, GEN - 1)), "test"),
    ("closed after a restart: tested again", pod(gate=closed(gates.RESTARTED)), "test"),
    ("a message written by someone else is no verdict",
     pod(gate={**opened(), "message": "looks fine to me"}), "earlier"),
]


@pytest.mark.parametrize(("pod_", "expected"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_what_is_due_for_a_pod(pod_: dict[str, Any], expected: str) -> None:
    assert gates.state(pod_, GEN) == expected


def test_a_pod_being_deleted_is_left_alone() -> None:
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = T2
    assert gates.state(deleting, GEN) == "waiting"


def test_census_counts_only_gated_pods_of_the_revision_that_are_ours() -> None:
    stranger = pod("iris-fake")
    stranger["metadata"]["ownerReferences"] = []
    pods = [pod("iris-abc-2", gate=opened()), pod("iris-abc-1"), pod("iris-old", "r0"),
            pod("iris-legacy", gated=False), stranger, pod("iris-abc-3", gate=opened(GEN - 1))]
    census = gates.census(pods, META, "r1", GEN)
    assert census.names("test") == ["iris-abc-1"]
    assert census.names("verified") == ["iris-abc-2"]
    assert census.names("earlier") == ["iris-abc-3"]
    assert (census.open, census.total) == (2, 3)


def test_the_written_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    before = opened()
    again = gates.condition(True, gates.PASSED, "generation 6, restarts 0: ok", before, T2)
    assert again["lastTransitionTime"] == T1
    flipped = gates.condition(False, gates.RESTARTED, "restarted", before, T2)
    assert flipped["lastTransitionTime"] == T2 and flipped["status"] == "False"
    assert gates.condition(True, gates.PASSED, "x" * 5000, None, T2)["message"] == "x" * 1024


def test_the_patch_names_the_pod_uid_and_carries_only_the_gate_condition() -> None:
    cond = gates.condition(True, gates.PASSED, "ok", None, T1)
    body = gates.patch_body("uid-7", cond)
    assert body == {"metadata": {"uid": "uid-7"}, "status": {"conditions": [cond]}}
    assert [c["type"] for c in body["status"]["conditions"]] == [gates.GATE]


def test_the_verdict_message_records_generation_and_restarts() -> None:
    restarted = pod(restarts=2)
    message = gates.verdict_message(9, restarted, "3 of 3 smoke tests passed")
    cond = {"message": message}
    assert (gates.gate_generation(cond), gates.gate_restarts(cond)) == (9, 2)
    assert gates.gate_generation({"message": "generation x: no"}) is None
    assert gates.gate_detail(cond) == "3 of 3 smoke tests passed"
    assert gates.gate_detail({"message": "generation x: no"}) == "generation x: no"


def test_every_rendered_pod_template_carries_the_gate() -> None:
    spec = validation.parse_spec(yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())["spec"])
    rendered = render.render(spec, META)
    template = rendered.deployment["spec"]["template"]
    assert template["spec"]["readinessGates"] == [{"conditionType": gates.GATE}]
    assert gates.is_gated(template)
