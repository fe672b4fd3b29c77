"""The install manifests against the real API server: accepted, and admitted as "restricted"."""

from __future__ import annotations

from typing import Any

import yaml

from tests.cluster.kube import Kubectl, wait_until
from tests.conftest import ROOT


def rendered(kubectl: Kubectl) -> list[dict[str, Any]]:
    text = kubectl.run("kustomize", str(ROOT / "manifests")).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_kubectl_apply_k_manifests_passes_a_server_side_dry_run(kubectl: Kubectl,
                                                                 operator_kubeconfig: str) -> None:
    result = kubectl.run("apply", "-k", str(ROOT / "manifests"), "--dry-run=server")
    kinds = {line.split("/")[0] for line in result.stdout.splitlines()}
    assert {"namespace", "customresourcedefinition.apiextensions.k8s.io", "serviceaccount",
            "clusterrole.rbac.authorization.k8s.io", "deployment.apps",
            "networkpolicy.networking.k8s.io"} <= kinds, result.stdout


def test_kubectl_apply_f_crds_applies_the_crd_and_nothing_else(kubectl: Kubectl,
                                                                operator_kubeconfig: str) -> None:
    # A new user's first try: the folder with -f, not -k. kubectl reads every .yaml, .yml and
    # .json file in it, so nothing but the CRD may carry those names there.
    result = kubectl.run("apply", "-f", str(ROOT / "crds"), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(
        "customresourcedefinition.apiextensions.k8s.io/modeldeployments.slipway.dev "), line
    assert line.endswith("(server dry run)"), line


def test_the_namespaced_variant_passes_a_server_side_dry_run(kubectl: Kubectl,
                                                              operator_kubeconfig: str) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "models"}})
    result = kubectl.run("apply", "-k", str(ROOT / "manifests" / "namespaced"),
                         "--dry-run=server")
    assert "role.rbac.authorization.k8s.io/slipway-operator" in result.stdout, result.stdout


def test_kubectl_apply_k_manifests_is_accepted_and_the_operator_pod_admitted_as_restricted(
    kubectl: Kubectl, operator_kubeconfig: str
) -> None:
    # When the whole base is applied for real
    result = kubectl.run("apply", "-k", str(ROOT / "manifests"))
    assert "deployment.apps/slipway-operator" in result.stdout, result.stdout
    namespace = kubectl.get("namespace", "slipway-system")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (deployment,) = [d for d in rendered(kubectl) if d["kind"] == "Deployment"]
    # Then the ReplicaSet's pod is admitted under "restricted" Pod Security. (The pods start,
    # and stand by behind the suite's operator, which holds the Lease; they are deleted at the
    # end. test_in_cluster_ha runs them as the operator.)
    try:
        pods = wait_until(
            lambda: kubectl.get("pods", namespace="slipway-system",
                                selector="app.kubernetes.io/name=slipway")["items"],
            timeout=60, what="the operator pod to be created",
            diagnose=lambda: kubectl.run("get", "events", "-n", "slipway-system",
                                         check=False).stdout)
        assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True
        warnings = [e for e in kubectl.events("slipway-system")
                    if e["reason"] == "FailedCreate"]
        assert warnings == []
    finally:
        kubectl.run("delete", "deployment", deployment["metadata"]["name"], "-n",
                    "slipway-system", "--wait=false", check=False)
