"""Verified before traffic: no user request ever reaches an unverified pod.

A client sends the sample request through the Service every 100 ms while bad releases come and
go; every pod waits behind its readiness gate (``slipway.dev/verified``) until its own smoke
tests pass, so the client sees only good answers, and the Service never has fewer ready
endpoints than replicas.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from typing import Any

from slipway_dev import cluster as dev_cluster
from tests.cluster.kube import condition, wait_until
from tests.cluster.test_guarded_rollout import NAME, V1, V3_CRASHES_AT_START, \
    V2_WRONG_MODEL_PATH, V4_GOOD, Story, release, story  # noqa: F401 - story is a fixture
from tests.cluster.traffic import ReadyEndpoints, Traffic, user_requests

GATE = "slipway.dev/verified"


def compared(doc: dict[str, Any]) -> dict[str, Any]:
    """The release, its answers compared with the serving revision's, and with no smoke test
    pinning the versicolor and virginica labels: only the agreement check can catch a model
    that swaps them."""
    doc = copy.deepcopy(doc)
    doc["spec"]["agreement"] = {"paths": [{"path": "$.predictions",
                                           "tolerance": {"absolute": 0.001}}]}
    for test in doc["spec"]["smokeTests"]:
        values = test.get("expect", {}).get("values")
        if values:
            test["expect"]["values"] = [v for v in values if v["path"] != "$.predictions[2].label"]
    return doc


G1, G4 = compared(V1), compared(V4_GOOD)
BAD = [
    ("wrong model path (500)", compared(V2_WRONG_MODEL_PATH), "SmokeTestFailed"),
    ("a 200 that breaks spec.schema.output", compared(release("2.1.0", "1.0.0-bad-output")),
     "SmokeTestFailed"),
    ("swapped labels", compared(release("2.2.0", "1.0.0-swapped-labels")),
     "PredictionsDisagree"),
    ("crash loop", compared(V3_CRASHES_AT_START), "CrashLoop"),
]


def pods(story: Story) -> list[dict[str, Any]]:
    items = story.kubectl.get("pods", namespace=story.namespace,
                              selector=f"slipway.dev/model-deployment={NAME}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def gate_status(pod: dict[str, Any]) -> str | None:
    cond = condition(pod, GATE)
    return cond.get("status") if cond else None


def test_bad_releases_never_get_a_user_request_and_capacity_never_drops(
    story: Story, cluster: dev_cluster.ClusterState,
) -> None:
    story.apply(G1)
    story.wait_phase("Ready")
    with ReadyEndpoints(cluster, story.namespace, NAME) as endpoints:
        # Ready can come a moment before the EndpointSlice controller has listed the second
        # pod: capacity is counted from when both are there.
        wait_until(lambda: endpoints.count() == 2, timeout=30, what="2 ready endpoints")
        full = time.time()
        with Traffic(cluster, story.namespace, NAME) as traffic:
            wait_until(lambda: len(traffic.answers) >= 10, timeout=30, what="traffic")
            reasons = []
            for what, bad, _ in BAD:
                story.apply(bad)
                md = story.wait_phase("RolledBack", timeout=120)
                failure = md["status"]["lastFailure"]
                reasons.append(failure["reason"])
                if failure["reason"] in ("SmokeTestFailed", "PredictionsDisagree"):
                    # The failed revision's own results survive the revert.
                    smoke = md["status"]["lastSmokeTest"]
                    assert smoke["outcome"] == "Failed", (what, smoke)
                    assert smoke["revision"] == failure["revision"], (what, smoke)
                    assert smoke["pods"] and smoke["pods"][0]["outcome"] == "Failed", smoke
                    assert md["status"]["rollbackCheck"]["outcome"] == "Passed", what
                if failure["reason"] == "PredictionsDisagree":
                    message = condition(md, "Stalled")["message"]  # type: ignore[index]
                    assert "$.predictions[1]: .label: 'virginica' vs 'versicolor'" in message
                    assert "2 of 4 compared items agree" in message  # setosa: 1 of 1, batch: 1 of 3
            story.apply(G4)
            md = story.wait_phase("Ready", timeout=120)
            wait_until(lambda: {(p["metadata"]["labels"] or {}).get("app.kubernetes.io/version")
                                for p in pods(story)} == {"1.1.0"}
                       and endpoints.count() == 2, timeout=60, what="only v4's pods",
                       diagnose=story.diagnose)
            time.sleep(1)
    # Each bad release ended RolledBack with its own reason; v4 is the rollback target.
    assert reasons == [reason for _, _, reason in BAD]
    assert md["status"]["rollbackTarget"]["modelVersion"] == "1.1.0"
    assert md["status"]["verifiedPods"] == "2/2"
    # Not one answer was an error or came from a bad revision, and capacity never dropped.
    bad = traffic.bad({"1.0.0", "1.1.0"})
    assert len(traffic.answers) > 100
    assert bad == [], f"{len(bad)} of {len(traffic.answers)} bad answers: {bad[:5]}"
    assert {a.version for a in traffic.answers} == {"1.0.0", "1.1.0"}
    assert endpoints.least_since(full) >= 2, [s for s in endpoints.samples if s[0] >= full]
    # And `kubectl rollout status` of the Deployment ends.
    story.kubectl.run("rollout", "status", f"deployment/{NAME}", "-n", story.namespace,
                      "--timeout=60s", timeout=90)


def test_a_scale_up_gets_traffic_only_after_its_own_smoke_tests(
    story: Story, cluster: dev_cluster.ClusterState,
) -> None:
    # Given v1 with its replicas left to an autoscaler, scaled to 2 and verified
    autoscaled = copy.deepcopy(V1)
    del autoscaled["spec"]["replicas"]
    story.apply(autoscaled)
    story.wait_phase("Ready")
    story.kubectl.run("scale", f"deployment/{NAME}", "-n", story.namespace, "--replicas=2")
    wait_until(lambda: story.md()["status"].get("verifiedPods") == "2/2", timeout=60,
               what="verifiedPods 2/2", diagnose=story.diagnose)
    md = story.wait_phase("Ready")
    verdict = md["status"]["lastSmokeTest"]
    story.seen = len(story.md_events())
    # And the operator frozen, so that new pods wait behind their gates
    assert story.operator.process is not None
    group = os.getpgid(story.operator.process.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        # When the autoscaler scales the Deployment to 4
        story.kubectl.run("scale", f"deployment/{NAME}", "-n", story.namespace,
                          "--replicas=4")
        wait_until(lambda: len([p for p in pods(story)
                                if (condition(p, "ContainersReady") or {}).get("status")
                                == "True"]) == 4,
                   timeout=60, what="4 pods with ready containers", diagnose=story.diagnose)
        new = [p for p in pods(story) if gate_status(p) != "True"]
        assert len(new) == 2
        for pod in new:
            ready = condition(pod, "Ready") or {}
            assert (ready.get("status"), ready.get("reason")) == ("False",
                                                                  "ReadinessGatesNotReady")
        wide = story.kubectl.run("get", "pods", "-n", story.namespace, "-o", "wide").stdout
        assert "0/1" in wide and "1/1" in wide, wide
        # When users send requests meanwhile, none reaches a pod whose gate is False
        with Traffic(cluster, story.namespace, NAME) as traffic:
            wait_until(lambda: len(traffic.answers) >= 30, timeout=30, what="30 answers")
        assert traffic.bad({"1.0.0"}) == []
        for pod in new:
            assert user_requests(cluster, pod) == 0, pod["metadata"]["name"]
    finally:
        os.killpg(group, signal.SIGCONT)
    # Then the operator tests each new pod, opens its gate, and the Service routes to it
    with ReadyEndpoints(cluster, story.namespace, NAME) as endpoints:
        wait_until(lambda: endpoints.count() == 4, timeout=60, what="4 ready endpoints",
                   diagnose=story.diagnose)
    with Traffic(cluster, story.namespace, NAME) as traffic:
        wait_until(lambda: all(user_requests(cluster, p) > 0 for p in new), timeout=60,
                   what="user requests on the new pods")
    assert traffic.bad({"1.0.0"}) == []
    wide = story.kubectl.run("get", "pods", "-n", story.namespace, "-o", "wide").stdout
    assert "0/1" not in wide, wide
    # And the ModelDeployment stayed Ready, with the verdict it had: no release, no Event
    md = story.wait_phase("Ready")
    assert md["status"]["lastSmokeTest"]["finishedAt"] == verdict["finishedAt"]
    wait_until(lambda: story.md()["status"].get("verifiedPods") == "4/4", timeout=30,
               what="verifiedPods 4/4", diagnose=story.diagnose)
    story.expect_events([], settle=2)
    entries = story.md()["status"]["podVerification"]["pods"]
    assert {e["pod"] for e in entries} >= {p["metadata"]["name"] for p in new}
