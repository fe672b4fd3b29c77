"""The operator's first loop against the real API server: create, adopt, correct drift, report.

Each test reads like the user story: Given a cluster with the operator, When a user does
something with kubectl, Then the children, the status and the Events say what happened.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, condition, load_yaml, wait_until
from tests.conftest import EXAMPLES


def minimal(name: str = "iris") -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / "minimal.yaml")
    doc["metadata"]["name"] = name
    return doc


def wait_ready(kubectl: Kubectl, namespace: str, name: str, operator: Operator,
               timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        md = kubectl.get("md", name, namespace)
        cond = condition(md, "Ready")
        if cond and cond["status"] == "True" and \
                cond["observedGeneration"] == md["metadata"]["generation"]:
            return md
        return None
    return wait_until(ready, timeout=timeout, what=f"md/{name} Ready",  # type: ignore[no-any-return]
                      diagnose=lambda: kubectl.describe("md", name, namespace)
                      + "\n--- operator:\n" + operator.tail())


def test_applying_an_example_creates_children_and_pods_become_ready(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    # Given the CRD and the operator; When a user applies the minimal example
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES / "minimal.yaml"))
    # Then `kubectl wait`, started before the operator has written any status, returns once
    # the ModelDeployment is Ready (the CI pattern: apply, then wait)
    waited = kubectl.run("wait", "--for=condition=Ready", "md/iris", "-n", namespace,
                         "--timeout=90s", check=False, timeout=120)
    assert waited.returncode == 0, waited.stderr + operator.tail()
    # And a Deployment and a Service appear, owned by the ModelDeployment
    md = wait_ready(kubectl, namespace, "iris", operator)
    deployment = kubectl.get("deployment", "iris", namespace)
    service = kubectl.get("service", "iris", namespace)
    for child in (deployment, service):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "ModelDeployment", md["metadata"]["uid"], True)
    # And the pods became Ready through real HTTP probes
    pods = kubectl.get("pods", namespace=namespace,
                       selector="slipway.dev/model-deployment=iris")["items"]
    assert pods and all(condition(p, "Ready")["status"] == "True" for p in pods)  # type: ignore[index]
    # And `kubectl get md` shows the printer columns
    table = kubectl.run("get", "md", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "VERSION", "PHASE", "READY", "SERVING",
                                "VERIFIED", "AGE"]
    row = table[1].split()
    assert row[:5] == ["iris", "iris-classifier", "1.0.0", "Ready", "True"]
    assert row[5] == md["status"]["currentRevision"]
    assert row[6] == f"{len(pods)}/{len(pods)}"
    # And the status carries the generation it describes
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    reasons = [e["reason"] for e in kubectl.events(namespace, "iris")
               if e["involvedObject"]["kind"] == "ModelDeployment"]
    assert reasons == ["Progressing", "Verifying", "Verified"]


def test_deleting_the_model_deployment_garbage_collects_its_children(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    kubectl.apply(minimal(), namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    kubectl.run("delete", "md", "iris", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(lambda: kubectl.get("deployment", "iris", namespace) is None and
               kubectl.get("service", "iris", namespace) is None and
               not kubectl.get("pods", namespace=namespace)["items"],
               timeout=90, what="children garbage-collected",
               diagnose=lambda: kubectl.describe("deployment", "iris", namespace))


def test_reapplying_an_unchanged_model_deployment_writes_nothing(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    kubectl.apply(minimal(), namespace)
    wait_ready(kubectl, namespace, "iris", operator)

    def versions() -> tuple[str, str, str]:
        return tuple(kubectl.get(kind, "iris", namespace)["metadata"]["resourceVersion"]
                     for kind in ("md", "deployment", "service"))  # type: ignore[return-value]

    def settled() -> tuple[str, str, str] | None:
        # The Deployment's own status may still move for a moment after Ready.
        first = versions()
        time.sleep(2)
        return first if versions() == first else None

    before = wait_until(settled, timeout=30, what="the objects to stop changing")
    kubectl.apply(minimal(), namespace)  # a GitOps re-sync
    time.sleep(3)
    assert versions() == before


def test_drift_in_a_child_is_put_back(kubectl: Kubectl, operator: Operator,
                                      namespace: str) -> None:
    kubectl.apply(minimal(), namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    # When someone edits the Deployment by hand
    kubectl.run("set", "image", "-n", namespace, "deployment/iris",
                "model-server=registry.example.com/slipway/reference-model:1.0.0-slow-start")
    # Then the operator restores the rendered image
    wait_until(lambda: kubectl.get("deployment", "iris", namespace)["spec"]["template"]["spec"]
               ["containers"][0]["image"] == "registry.example.com/slipway/reference-model:1.0.0",
               timeout=30, what="image restored",
               diagnose=lambda: operator.tail())
    # And a deleted Service comes back
    kubectl.run("delete", "service", "iris", "-n", namespace)
    wait_until(lambda: kubectl.get("service", "iris", namespace), timeout=30,
               what="service re-created", diagnose=lambda: operator.tail())


def test_a_spec_the_crd_accepts_but_slipway_cannot_use_is_reported_once(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    # Given a smoke-test body that violates spec.schema.input (only Slipway can tell)
    doc = minimal()
    doc["spec"]["smokeTests"][0]["body"] = {"instances": [[1.0, 2.0]]}
    kubectl.apply(doc, namespace)
    # Then: InvalidSpec on Ready and Stalled, no children, and one Warning event
    def stalled() -> dict[str, Any] | None:
        cond = condition(kubectl.get("md", "iris", namespace), "Stalled")  # one read per poll
        return cond if cond and cond["status"] == "True" else None
    cond = wait_until(stalled, timeout=30, what="Stalled=True", diagnose=operator.tail)
    assert cond["reason"] == "InvalidSpec"
    assert "spec.smokeTests[0].body.instances[0]" in cond["message"]
    md = kubectl.get("md", "iris", namespace)
    assert md["status"]["phase"] == "Invalid"
    assert condition(md, "Ready")["status"] == "False"  # type: ignore[index]
    assert kubectl.get("deployment", "iris", namespace) is None
    time.sleep(3)
    warnings = [e for e in kubectl.events(namespace, "iris") if e["type"] == "Warning"]
    assert [(w["reason"], w.get("count", 1)) for w in warnings] == [("InvalidSpec", 1)]
    # When the user fixes the spec, Then it proceeds
    kubectl.apply(minimal(), namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    assert condition(kubectl.get("md", "iris", namespace), "Stalled")["status"] == "False"  # type: ignore[index]


def test_a_child_name_taken_by_a_stranger_is_a_conflict_not_a_takeover(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    stranger = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris"},
                "spec": {"ports": [{"port": 1234}], "selector": {"app": "other"}}}
    kubectl.apply(stranger, namespace)
    kubectl.apply(minimal(), namespace)

    def conflict() -> dict[str, Any] | None:
        cond = condition(kubectl.get("md", "iris", namespace), "Stalled")  # one read per poll
        return cond if cond and cond["reason"] == "ChildConflict" else None
    # (90 s, as for Ready: the operator was started for this test and lists every kind first)
    cond = wait_until(conflict, timeout=90, what="ChildConflict",
                      diagnose=lambda: kubectl.describe("md", "iris", namespace)
                      + "\n--- operator:\n" + operator.tail())
    assert cond["status"] == "True" and "Service iris already exists" in cond["message"]
    # Nothing half-applied: ownership of every child is checked before anything is written
    assert kubectl.get("deployment", "iris", namespace) is None
    assert kubectl.get("service", "iris", namespace)["spec"]["ports"][0]["port"] == 1234

    # While the conflict lasts the operator looks again (every 2 s here) and changes nothing:
    # the condition does not flap and the Warning is not repeated.
    before = operator.metric("slipway_reconciles_total", result="ok")
    wait_until(lambda: operator.metric("slipway_reconciles_total", result="ok") >= before + 3,
               timeout=60, what="three more reconciles", diagnose=operator.tail)
    again = condition(kubectl.get("md", "iris", namespace), "Stalled")
    assert again == cond, operator.tail()
    warnings = [(e["reason"], e.get("count", 1)) for e in kubectl.events(namespace, "iris")
                if e["type"] == "Warning"]
    assert warnings == [("ChildConflict", 1)], (warnings, operator.tail())
    assert kubectl.get("deployment", "iris", namespace) is None

    # When the stranger is removed, Then the next look creates Slipway's own children
    kubectl.run("delete", "service", "iris", "-n", namespace, "--wait=true")
    md = wait_ready(kubectl, namespace, "iris", operator)
    assert condition(md, "Stalled")["status"] == "False"  # type: ignore[index]
    service = kubectl.get("service", "iris", namespace)
    assert service["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]


def test_an_orphaned_child_of_the_same_name_is_adopted(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    kubectl.apply(minimal(), namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    # Given the ModelDeployment is deleted with its children orphaned
    kubectl.run("delete", "md", "iris", "-n", namespace, "--cascade=orphan", "--wait=true")
    orphan = kubectl.get("deployment", "iris", namespace)
    wait_until(lambda: not kubectl.get("deployment", "iris", namespace)["metadata"]
               .get("ownerReferences"), timeout=30, what="owner reference removed")
    # When it is applied again, Then the existing Deployment is adopted, not replaced
    kubectl.apply(minimal(), namespace)
    md = wait_ready(kubectl, namespace, "iris", operator)
    adopted = kubectl.get("deployment", "iris", namespace)
    assert adopted["metadata"]["uid"] == orphan["metadata"]["uid"]
    assert adopted["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    # And so is the ControllerRevision that recorded the verified revision
    revision = kubectl.get("controllerrevision", md["status"]["rollbackTarget"][
        "controllerRevision"], namespace)
    assert revision["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]


def test_removing_replicas_leaves_the_count_to_an_autoscaler(
    kubectl: Kubectl, operator: Operator, namespace: str
) -> None:
    doc = minimal()
    kubectl.apply(doc, namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    # An autoscaler (here: kubectl scale) sets the replica count
    kubectl.run("scale", "deployment/iris", "-n", namespace, "--replicas=2")
    time.sleep(3)
    assert kubectl.get("deployment", "iris", namespace)["spec"]["replicas"] == 2
    # And a spec change unrelated to replicas does not reset it
    changed = copy.deepcopy(doc)
    changed["spec"]["rollout"] = {"progressDeadlineSeconds": 120}
    kubectl.apply(changed, namespace)
    wait_ready(kubectl, namespace, "iris", operator)
    deployment = kubectl.get("deployment", "iris", namespace)
    assert deployment["spec"]["progressDeadlineSeconds"] == 120
    assert deployment["spec"]["replicas"] == 2
