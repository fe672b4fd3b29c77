"""``helm install`` of charts/slipway on a local cluster of its own, and the operator running from
it: the chart's CRD installed by Helm, the operator pods (run by the node agent with the
kubelet's contract) leading on the Lease, and a release verified by them.

A cluster of its own: the suite's cluster already holds the operator's RBAC from manifests/
(applied by kubectl, which Helm would refuse to adopt, and its uninstall would take away).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from slipway_dev import binaries
from slipway_dev import cluster as dev_cluster
from tests.cluster.kube import Kubectl, condition, wait_until
from tests.cluster.test_guarded_rollout import NAME, V1
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces "
                                "and mount namespaces (a pod's volumes)")

CHART = ROOT / "charts" / "slipway"
SYSTEM = "slipway-system"
SELECTOR = "app.kubernetes.io/name=slipway,app.kubernetes.io/component=operator"


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory,
                request: pytest.FixtureRequest) -> Iterator[dev_cluster.ClusterState]:
    state_dir = tmp_path_factory.mktemp("helm-cluster")
    state = dev_cluster.up(state_dir, nodes=1, quiet=True)
    failed = request.session.testsfailed
    try:
        yield state
    finally:
        dev_cluster.down(state_dir, quiet=True,
                         keep_logs=request.session.testsfailed > failed)


def test_helm_install_runs_the_operator_and_it_verifies_a_release(
        own_cluster: dev_cluster.ClusterState) -> None:
    kubectl = Kubectl(own_cluster.binaries["kubectl"], own_cluster.kubeconfig)
    helm = [str(binaries.ensure_helm(verbose=False)), "--kubeconfig", own_cluster.kubeconfig]

    def diagnose() -> str:
        pods = kubectl.run("get", "pods", "-A", "-o", "wide", check=False).stdout
        logs = sorted(pathlib.Path(own_cluster.state_dir).glob(
            f"nodes/**/pods/{SYSTEM}_*/operator/*.log"))
        tails = [f"--- {log.name}\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-30:]) for log in logs]
        return pods + "\n".join(tails)

    # When the chart is installed as the README says
    done = subprocess.run([*helm, "install", "slipway", str(CHART), "-n", SYSTEM,
                           "--create-namespace", "--wait", "--timeout", "3m"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr + done.stdout + diagnose()
    # Then Helm installed the CRD from the chart, and the operator pods run and one leads
    crd = kubectl.get("crd", "modeldeployments.slipway.dev")
    assert (condition(crd, "Established") or {}).get("status") == "True"

    def ready_pods() -> list[str]:
        items = kubectl.get("pods", namespace=SYSTEM, selector=SELECTOR)["items"]
        return [p["metadata"]["name"] for p in items
                if (condition(p, "Ready") or {}).get("status") == "True"]
    wait_until(lambda: len(ready_pods()) == 2, timeout=120, what="2 operator pods Ready",
               diagnose=diagnose)

    def leader() -> str:
        lease = kubectl.get("lease", "slipway-operator", SYSTEM) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")
    wait_until(lambda: leader() in ready_pods(), timeout=60, what="an operator pod leading",
               diagnose=diagnose)

    # And a release applied to a namespace of models is verified by that operator
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "models", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    wait_until(lambda: kubectl.get("serviceaccount", "default", "models"), timeout=60,
               what="ServiceAccount default in models")
    kubectl.apply(V1, "models")

    def ready() -> dict[str, Any] | None:
        md = kubectl.get("md", NAME, "models")
        status = (md or {}).get("status") or {}
        return md if status.get("phase") == "Ready" and \
            status.get("observedGeneration") == md["metadata"]["generation"] else None
    md = wait_until(ready, timeout=180, what="the release Ready",
                    diagnose=lambda: kubectl.describe("md", NAME, "models") + diagnose())
    assert md["status"]["rollbackTarget"]["revision"] == md["status"]["currentRevision"]
    events = [e for e in kubectl.events("models", NAME)
              if e["involvedObject"]["kind"] == "ModelDeployment"]
    assert [e["reason"] for e in events] == ["Progressing", "Verifying", "Verified"]
    assert {e.get("reportingInstance") or e.get("source", {}).get("host", "") for e in events} \
        <= set(ready_pods()) | {""}

    # And helm uninstall takes the operator away (the CRD stays: Helm never deletes crds/)
    done = subprocess.run([*helm, "uninstall", "slipway", "-n", SYSTEM, "--wait"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert kubectl.get("deployment", "slipway-operator", SYSTEM) is None
    assert kubectl.get("crd", "modeldeployments.slipway.dev") is not None
