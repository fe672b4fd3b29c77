"""Two operators against one API server, one Lease: only the leader acts, and when it is killed
in the middle of a bad release the standby takes over and finishes it with one verdict and one
revert.

The suite's own operator stops for this test (it releases the Lease), and two candidates with
short timings (6 s lease, 4 s renew deadline, 1 s retry) run in its place; the suite's operator
starts again afterwards and takes the released Lease at once.
"""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request
from typing import Any

import pytest

from slipway_dev import cluster as dev_cluster
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import IMAGE, NAME, Story, release

LEASE_SECONDS = 6
FAST = {"SLIPWAY_LEASE_SECONDS": str(LEASE_SECONDS), "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": "4",
        "SLIPWAY_LEASE_RETRY_SECONDS": "1"}
WRITES = ("create", "patch", "update", "delete")


def writes(operator: Operator) -> float:
    """Requests other than reads this operator's reconciles made (its Lease not counted)."""
    from prometheus_client import parser

    total = 0.0
    for family in parser.text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == "slipway_api_requests_total" and sample.labels["verb"] in WRITES:
                total += sample.value
    return total


def health(operator: Operator) -> dict[str, Any]:
    """What /healthz says (kopf's liveness endpoint, with Slipway's leadership probe)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as page:
            return dict(json.loads(page.read()))
    except OSError as error:
        raise AssertionError(f"no /healthz yet: {error}") from None


def lease(kubectl: Kubectl) -> dict[str, Any]:
    return kubectl.get("lease", "slipway-operator", "slipway-system") or {}


def the_leader(a: Operator, b: Operator) -> tuple[Operator, Operator] | None:
    roles = {op.identity: op.metric("slipway_leader") for op in (a, b)}
    if sorted(roles.values()) != [0.0, 1.0]:
        return None
    return (a, b) if roles[a.identity] == 1.0 else (b, a)


@pytest.fixture
def pair(cluster: dev_cluster.ClusterState, operator: Operator,
         operator_kubeconfig: str) -> Any:
    logs = pathlib.Path(cluster.state_dir) / "logs"
    candidates = []
    for identity in ("ha-a", "ha-b"):
        port = dev_cluster.free_port()
        candidate = Operator(operator_kubeconfig, logs / f"operator-{identity}.log",
                             identity=identity, env=FAST,
                             args=["--liveness", f"http://127.0.0.1:{port}/healthz"])
        candidate.health_port = port
        candidates.append(candidate)
    a, b = candidates
    operator.stop()  # the suite's operator: a clean stop releases the Lease
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()
        operator.start()


def test_only_the_leader_acts_and_the_standby_finishes_a_bad_release_after_the_leader_is_killed(
    kubectl: Kubectl, pair: tuple[Operator, Operator], namespace: str,
) -> None:
    a, b = pair
    # Given two operators: exactly one leads, the Lease names it
    leader, standby = wait_until(lambda: the_leader(a, b), timeout=60, what="one leader of two",
                                 diagnose=lambda: a.tail(20) + "\n---\n" + b.tail(20))
    assert lease(kubectl)["spec"]["holderIdentity"] == leader.identity
    # /healthz says which is which (kopf caches probe results for a while: wait for it)
    # (and the standby's naming the holder: it learns it at its next look at the Lease, and
    # one read of the role before that saw holder '' once)
    wait_until(lambda: health(leader)["leader"]["role"] == "leader"
               and health(standby)["leader"]["role"] == "standby"
               and health(standby)["leader"]["holder"] == leader.identity, timeout=30,
               what="/healthz naming leader and standby, and the standby the holder")
    story = Story(kubectl, leader, namespace)
    # When v1 is applied, it is verified once: one set of Events, and the standby wrote nothing
    story.given_v1_is_ready()
    assert writes(leader) > 0
    assert writes(standby) == 0
    assert standby.metric("slipway_reconciles_total", result="ok") == 0
    # And a bad release (slow, wrong answers) is being verified when the leader is killed
    slow = release("2.0.0", "1.0.0-wrong-model-path-slow")
    slow["spec"]["rollout"]["smokeTestTimeoutSeconds"] = 10
    story.apply(slow)
    story.wait_phase("Progressing")
    story.wait_until_the_slow_release_is_under_test()
    assert writes(standby) == 0
    leader.kill()
    killed = time.monotonic()
    # Then the standby takes over within the lease and a few seconds
    wait_until(lambda: standby.metric("slipway_leader") == 1.0, timeout=LEASE_SECONDS + 20,
               what="the standby leading", diagnose=lambda: standby.tail(30))
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL: {takeover:.1f} s (lease {LEASE_SECONDS} s)")
    assert takeover <= LEASE_SECONDS + 5
    assert lease(kubectl)["spec"]["holderIdentity"] == standby.identity
    # And finishes the release: one verdict for it, one revert, v1 serving, no Event twice
    story.operator = standby
    md = story.wait_phase("RolledBack", timeout=180)
    story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    verdicts = [entry for entry in md["status"]["history"]
                if entry["revision"] == md["status"]["desiredRevision"]]
    assert [entry["outcome"] for entry in verdicts] == ["Failed"], md["status"]["history"]
    assert standby.metric("slipway_reverts_total", reason="SmokeTestFailed") == 1
    revisions = kubectl.get("replicasets", namespace=namespace)["items"]
    assert len(revisions) == 2  # v1's and the slow release's: the revert reused v1's
    assert story.serving_image() == f"{IMAGE}:1.0.0"


def test_a_status_decided_on_an_older_copy_is_refused_and_nothing_is_written(
    kubectl: Kubectl, cluster: dev_cluster.ClusterState, operator: Operator, namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fence behind the Lease: a deposed leader's status write carries the resourceVersion
    it decided on, so a newer decision is never overwritten."""
    from kubernetes.config import kube_config

    from slipway.clients import kube

    # The kubernetes client reads KUBECONFIG when it is imported: point its default instead.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", cluster.kubeconfig)
    kube.api_client.cache_clear()
    try:
        # Given a ModelDeployment as a leader read it, and then a newer decision on it
        kubectl.apply(release("1.0.0"), namespace)
        first = kubectl.get("md", NAME, namespace)
        old = first["metadata"]["resourceVersion"]
        wait_until(lambda: kubectl.get("md", NAME, namespace)["metadata"]["resourceVersion"]
                   != old, timeout=60, what="the operator's status write",
                   diagnose=lambda: operator.tail(20))
        # When a status decided on the old copy is written (a phase this good release never
        # gets)
        with pytest.raises(kube.StatusConflict, match=f"decided on resourceVersion {old}"):
            kube.patch_status(namespace, NAME, {"phase": "Invalid"}, old)
        # Then nothing was written
        assert kubectl.get("md", NAME, namespace)["status"]["phase"] != "Invalid"
    finally:
        kube.api_client.cache_clear()
