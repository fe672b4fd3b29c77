"""Smoke tests go to the ModelDeployment's own pods and Service only (pure checks)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from slipway.api import validation
from slipway.logic import render, targets
from tests.conftest import EXAMPLES

META = render.Meta(name="iris", namespace="ml", uid="uid-1", generation=3)


def pod(name: str, ip: str, *, revision: str = "r1", ready: bool = True, owner: str = "iris-5d9f",
        host_network: bool = False, label_owner: str = "iris", deleting: bool = False
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {render.LABEL_OWNER: label_owner, render.LABEL_REVISION: revision},
        "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "spec": {"hostNetwork": host_network},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


PODS = [pod("iris-5d9f-a", "10.1.0.5"), pod("iris-5d9f-b", "10.1.0.6"),
        pod("iris-old-c", "10.1.0.7", revision="r0", owner="iris-old")]


def test_only_our_ready_pods_of_the_revision_are_targets() -> None:
    strangers = [
        pod("impostor", "10.9.0.1", owner="someone-else"),  # not our ReplicaSet
        pod("iris-hostnet", "192.168.0.10", host_network=True),  # the node's address
        pod("iris-notready", "10.1.0.8", ready=False),
        pod("iris-going", "10.1.0.9", deleting=True),
        pod("other-label", "10.1.0.10", label_owner="other"),
    ]
    chosen = targets.verifiable_pods(PODS + strangers, META, "r1")
    assert [p["metadata"]["name"] for p in chosen] == ["iris-5d9f-a", "iris-5d9f-b"]


def rendered_service() -> dict[str, Any]:
    spec = validation.parse_document(yaml.safe_load((EXAMPLES / "minimal.yaml").read_text()))
    return render.render_service(spec, META)


def live_service(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "iris", "ownerReferences": [
                {"kind": "ModelDeployment", "uid": "uid-1", "controller": True}]},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.12",
                     "selector": render.selector_labels(META),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}], **spec}}


def slices(*addresses: str) -> list[dict[str, Any]]:
    return [{"endpoints": [{"addresses": [address]} for address in addresses]}]


def test_the_owned_rendered_service_is_tested_by_its_cluster_ip() -> None:
    target = targets.service_target(META, rendered_service(), live_service(),
                                    slices("10.1.0.5", "10.1.0.7"), PODS)
    assert target == targets.ServiceTarget("10.96.0.12", None)


@pytest.mark.parametrize("change, refusal", [
    (lambda s: None, "does not exist yet"),
    (lambda s: s["metadata"].update(ownerReferences=[]), "not controlled by this"),
    (lambda s: s["spec"].update(type="ExternalName", externalName="kubernetes.default"),
     "of type ExternalName"),
    (lambda s: s["spec"].update(clusterIP="None"), "no cluster IP"),
    (lambda s: s["spec"].update(selector={"app": "other"}), "selects {'app': 'other'}"),
    (lambda s: s["spec"].update(ports=[{"port": 80, "targetPort": 10250}]), "no port 80"),
])
def test_a_changed_service_is_refused(change: Any, refusal: str) -> None:
    live: dict[str, Any] | None = live_service()
    if refusal == "does not exist yet":
        live = None
    else:
        change(live)
    target = targets.service_target(META, rendered_service(), live, slices("10.1.0.5"), PODS)
    assert target.cluster_ip is None and target.refusal is not None
    assert refusal in target.refusal


def test_a_service_routing_to_a_stranger_is_refused() -> None:
    target = targets.service_target(META, rendered_service(), live_service(),
                                    slices("10.1.0.5", "10.0.0.1", "172.17.0.2"), PODS)
    assert target.refusal == ("Service iris routes to 10.0.0.1, 172.17.0.2, which are not a pod "
                              "of this ModelDeployment")


def test_pod_ips_are_only_our_pods() -> None:
    impostor = pod("impostor", "10.9.0.1", owner="x")
    assert targets.pod_ips(copy.deepcopy(PODS) + [impostor], META) == {
        "10.1.0.5", "10.1.0.6", "10.1.0.7"}


def test_a_service_without_endpoints_is_not_dialled() -> None:
    target = targets.service_target(META, rendered_service(), live_service(), [], PODS)
    assert target == targets.ServiceTarget(None, "Service iris has no endpoints yet")
