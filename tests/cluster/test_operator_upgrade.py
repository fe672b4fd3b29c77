"""What a generation was decided as stays decided: an operator upgrade that renders pods
differently rolls out no Ready, Failed or RolledBack release by itself; and a verified target
whose ControllerRevision went missing is made again."""

from __future__ import annotations

import copy
from typing import Any

from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import IMAGE, V1, V2_WRONG_MODEL_PATH, release
from tests.cluster.test_hostile_specs import make_namespace
from tests.cluster.upgraded_operator import ANNOTATION

NAME = "iris"


def phase(kubectl: Kubectl, namespace: str) -> str | None:
    md = kubectl.get("md", NAME, namespace) or {}
    status = md.get("status") or {}
    if status.get("observedGeneration") != md.get("metadata", {}).get("generation"):
        return None
    return status.get("phase")


def wait_phase(kubectl: Kubectl, namespace: str, wanted: str, operator: Operator) -> None:
    wait_until(lambda: phase(kubectl, namespace) == wanted, timeout=180,
               what=f"{namespace} {wanted}", diagnose=lambda: operator.tail(40))


def snapshot(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    md = kubectl.get("md", NAME, namespace)
    deployment = kubectl.get("deployment", NAME, namespace)
    events = [e for e in kubectl.events(namespace, NAME)
              if e["involvedObject"]["kind"] == "ModelDeployment"]
    return {"phase": md["status"]["phase"],
            "desiredRevision": md["status"]["desiredRevision"],
            "currentRevision": md["status"].get("currentRevision"),
            "deploymentGeneration": deployment["metadata"]["generation"],
            "events": [(e["reason"], e.get("count")) for e in events]}


def test_an_upgrade_that_renders_differently_rolls_out_nothing_by_itself(
    kubectl: Kubectl, operator: Operator, namespace: str,
) -> None:
    ready, failed, rolled_back = namespace, f"{namespace}-failed", f"{namespace}-back"
    try:
        # Given a Ready release, a first release that Failed, and one RolledBack to v1
        for other in (failed, rolled_back):
            make_namespace(kubectl, other)
        kubectl.apply(V1, ready)
        kubectl.apply(V2_WRONG_MODEL_PATH, failed)
        kubectl.apply(V1, rolled_back)
        wait_phase(kubectl, ready, "Ready", operator)
        wait_phase(kubectl, failed, "Failed", operator)
        wait_phase(kubectl, rolled_back, "Ready", operator)
        kubectl.apply(V2_WRONG_MODEL_PATH, rolled_back)
        wait_phase(kubectl, rolled_back, "RolledBack", operator)
        before = {ns: snapshot(kubectl, ns) for ns in (ready, failed, rolled_back)}
        # When the operator is replaced by one whose pod templates differ (a new annotation)
        operator.stop()
        operator.start(module="tests.cluster.upgraded_operator")
        # Then it looks at every one of them (it lists them at start)...
        wait_until(lambda: operator.metric("slipway_reconciles_total", result="ok") >= 3,
                   timeout=60, what="the new operator to reconcile the three",
                   diagnose=lambda: operator.tail(40))
        kubectl.run("annotate", "md", NAME, "-n", ready, "look-again=1", "--overwrite")
        wait_until(lambda: operator.metric("slipway_reconciles_total", result="ok") >= 4,
                   timeout=60, what="one more reconcile")
        # ...and rolls out nothing, writes no new verdict and posts no Event
        after = {ns: snapshot(kubectl, ns) for ns in (ready, failed, rolled_back)}
        assert after == before
        # When the Ready release gets a new generation, Then that is rendered the new way
        v11 = release("1.1.0")
        kubectl.apply(v11, ready)
        wait_until(lambda: phase(kubectl, ready) == "Ready" and kubectl.get(
            "md", NAME, ready)["status"]["desiredRevision"] != before[ready]["desiredRevision"],
            timeout=180, what="1.1.0 Ready", diagnose=lambda: operator.tail(40))
        template = kubectl.get("deployment", NAME, ready)["spec"]["template"]
        assert template["metadata"]["annotations"][ANNOTATION] == "next-release"
    finally:
        operator.stop()
        operator.start()
        for other in (failed, rolled_back):
            kubectl.run("delete", "namespace", other, "--wait=false", check=False)


def test_a_verified_target_whose_controller_revision_is_missing_is_made_again(
    kubectl: Kubectl, operator: Operator, namespace: str,
) -> None:
    # Given a Ready release, whose rollback target's ControllerRevision is then deleted (as if
    # the operator had stopped between recording the verdict and creating it)
    kubectl.apply(copy.deepcopy(V1), namespace)
    wait_phase(kubectl, namespace, "Ready", operator)
    target = kubectl.get("md", NAME, namespace)["status"]["rollbackTarget"]
    original = kubectl.get("controllerrevision", target["controllerRevision"], namespace)
    kubectl.run("delete", "controllerrevision", target["controllerRevision"], "-n", namespace)
    # When the operator next looks at it
    kubectl.run("annotate", "md", NAME, "-n", namespace, "look-again=1", "--overwrite")
    # Then the ControllerRevision is there again: same pod template, marked verified
    again = wait_until(lambda: kubectl.get("controllerrevision", target["controllerRevision"],
                                           namespace), timeout=60,
                       what="the ControllerRevision made again")
    assert again["metadata"]["uid"] != original["metadata"]["uid"]
    assert again["data"]["podTemplate"] == original["data"]["podTemplate"]
    assert again["metadata"]["labels"]["slipway.dev/verified"] == "true"
    assert again["data"]["podTemplate"]["spec"]["containers"][0]["image"] == f"{IMAGE}:1.0.0"
