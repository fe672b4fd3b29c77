"""The operator as ``kubectl apply -k manifests/`` installs it: two replicas in the cluster,
each a pod the node agent runs with the kubelet's contract (its projected service-account
token, ``KUBERNETES_SERVICE_HOST`` routed to the API server, its liveness probe), one of them
leading on the Lease. Its leader is SIGKILLed in the middle of a bad release, which still ends
RolledBack with one verdict and one revert; then killed with its pod force-deleted in the
middle of the next one, which the standby takes over within the Lease and finishes.

The suite's operator stops for this test (releasing the Lease) and starts again afterwards.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from slipway_dev import cluster as dev_cluster
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, condition, wait_until
from tests.cluster.test_api_faults import CRASH_AND_BACK, FAILED_AND_BACK, announced
from tests.cluster.test_guarded_rollout import (IMAGE, V2_WRONG_MODEL_PATH,
                                                V3_CRASHES_AT_START, Story)
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces "
                                "and mount namespaces (a pod's volumes)")

SYSTEM = "slipway-system"
SELECTOR = "app.kubernetes.io/name=slipway,app.kubernetes.io/component=operator"
LEASE_SECONDS = 15  # the manifests' (the default)
PROBE_NOISE = re.compile(r"aiohttp\.access|Activity 'leader' succeeded")


class InCluster:
    """The operator pods, seen from outside: their logs (on the node agent's disk) and
    processes, for the Story helpers' diagnostics."""

    def __init__(self, cluster: dev_cluster.ClusterState, kubectl: Kubectl) -> None:
        self.state_dir = pathlib.Path(cluster.state_dir)
        self.kubectl = kubectl
        self.process = None

    def pods(self) -> list[dict[str, Any]]:
        items = self.kubectl.get("pods", namespace=SYSTEM, selector=SELECTOR)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.pods()
                if (condition(p, "Ready") or {}).get("status") == "True"]

    def leader(self) -> str:
        lease = self.kubectl.get("lease", "slipway-operator", SYSTEM) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def pid(self, pod: str) -> int:
        """The running operator container's process, from the node agent's log."""
        log = (self.state_dir / "logs" / "node-agent.log").read_text(errors="replace")
        found = re.findall(rf"{SYSTEM}/{re.escape(pod)}: started operator pid (\d+)", log)
        assert found, f"no operator process of {pod} in the node agent's log"
        return int(found[-1])

    def tail(self, lines: int = 60) -> str:
        """The Lease, the node agent's lines about the operator pods, and each operator
        container's log without the probes' lines (every 10 s, they pushed the rest out)."""
        try:
            lease = (self.kubectl.get("lease", "slipway-operator", SYSTEM) or {}).get("spec")
        except AssertionError as error:  # diagnostics must not hide the failure they explain
            lease = f"not read: {error}"
        out = [f"--- lease: {lease}", "--- node agent:"]
        agent = self.state_dir / "logs" / "node-agent.log"
        if agent.exists():
            out += [line for line in agent.read_text(errors="replace").splitlines()
                    if f"{SYSTEM}/" in line][-20:]
        for log in sorted(self.state_dir.glob(f"nodes/**/pods/{SYSTEM}_*/operator/*.log")):
            text = [line for line in log.read_text(errors="replace").splitlines()
                    if not PROBE_NOISE.search(line)][-lines:]
            out += [f"--- {log.parent.parent.name}/{log.name}", *text]
        return "\n".join(out)


@pytest.fixture
def in_cluster(cluster: dev_cluster.ClusterState, kubectl: Kubectl, operator: Operator,
               operator_kubeconfig: str) -> Iterator[InCluster]:
    operator.stop()  # the suite's operator: a clean stop releases the Lease
    pods = InCluster(cluster, kubectl)
    try:
        kubectl.run("apply", "-k", str(ROOT / "manifests"))
        yield pods
    finally:
        kubectl.run("delete", "deployment", "slipway-operator", "-n", SYSTEM, "--wait=true",
                    "--timeout=60s", check=False)
        wait_until(lambda: not pods.pods(), timeout=60, what="the operator pods gone")
        operator.start()


def test_apply_k_manifests_runs_two_replicas_and_a_killed_leader_still_ends_rolled_back(
    in_cluster: InCluster, kubectl: Kubectl, namespace: str,
) -> None:
    # Given the manifests applied: two operator pods Ready, one of them holding the Lease
    wait_until(lambda: len(in_cluster.ready()) == 2, timeout=120,
               what="2 operator pods Ready", diagnose=in_cluster.tail)
    wait_until(lambda: in_cluster.leader() in in_cluster.ready(), timeout=60,
               what="an operator pod leading", diagnose=in_cluster.tail)
    pods = set(in_cluster.ready())
    story = Story(kubectl, in_cluster, namespace)  # type: ignore[arg-type]
    started = time.monotonic()
    story.given_v1_is_ready()
    # When a bad release is applied, and the leader is SIGKILLed once it is rolling
    story.apply(V2_WRONG_MODEL_PATH)
    wait_until(lambda: (story.md().get("status") or {}).get("phase") == "Progressing",
               timeout=60, what="v2 progressing", diagnose=story.diagnose)
    leader = in_cluster.leader()
    pid = in_cluster.pid(leader)
    command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"slipway.cli" in command, command  # the operator itself, not a wrapper
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    # Then the release ends reverted, with one verdict and one revert, every Event once
    md = story.wait_phase("RolledBack", timeout=240)
    announced(story)
    reverted = time.monotonic()
    story.expect_events(FAILED_AND_BACK, settle=3)
    assert [h["outcome"] for h in md["status"]["history"]] == ["Verified", "Failed",
                                                               "RolledBack"]
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    replica_sets = kubectl.get("replicasets", namespace=namespace)["items"]
    assert len(replica_sets) == 2  # v1's and v2's: the revert reused v1's
    # And the killed container was restarted in its pod; two replicas again, one leading
    wait_until(lambda: len(in_cluster.ready()) == 2, timeout=120,
               what="2 operator pods Ready again", diagnose=in_cluster.tail)
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
                for p in in_cluster.pods()}
    assert restarts[leader] >= 1, restarts
    assert in_cluster.leader() in in_cluster.ready()
    # When the next bad release (a crash loop) is rolling, and the leader is SIGKILLed with
    # its pod force-deleted (no restart in place, the Lease never released)
    story.apply(V3_CRASHES_AT_START)
    wait_until(lambda: (story.md().get("status") or {}).get("phase") == "Progressing",
               timeout=60, what="v3 progressing", diagnose=story.diagnose)
    second = in_cluster.leader()
    os.kill(in_cluster.pid(second), signal.SIGKILL)
    kubectl.run("delete", "pod", second, "-n", SYSTEM, "--grace-period=0", "--force")
    deposed = time.monotonic()
    # Then the standby takes over within the Lease and a few seconds, and finishes it
    wait_until(lambda: in_cluster.leader() not in ("", second), timeout=LEASE_SECONDS + 15,
               what="the standby leading", diagnose=in_cluster.tail)
    took = time.monotonic() - deposed
    story.wait_phase("RolledBack", timeout=240)
    announced(story)
    story.expect_events(CRASH_AND_BACK, settle=3)
    md = story.md()
    assert [h["outcome"] for h in md["status"]["history"]] == [
        "Verified", "Failed", "RolledBack", "Failed", "RolledBack"]
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    pods |= set(in_cluster.ready())
    # And it was the operator pods that acted: each Event names the pod that posted it
    assert {e.get("reportingInstance") for e in story.md_events()} <= pods, story.md_events()
    print(f"\nin-cluster: v1 Ready and v2 applied in {killed - started:.0f} s; leader {leader} "
          f"SIGKILLed; RolledBack {reverted - killed:.0f} s later (restarts {restarts}); then "
          f"{second} killed and force-deleted: the standby led {took:.0f} s later")
