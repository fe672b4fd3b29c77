"""The guarded rollout, end to end, as a user drives it with kubectl.

Given/When/Then scenarios on the local cluster with the reference bundle: each asserts the whole
timeline of Events in order, the status a GitOps tool reads, and what the Deployment serves.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, condition, load_yaml, wait_until
from tests.conftest import EXAMPLES

IMAGE = "registry.example.com/slipway/reference-model"
NAME = "iris"


def release(version: str, image_tag: str = "1.0.0") -> dict[str, Any]:
    """The reference release at a model version, served by an image of the bundle."""
    doc = load_yaml(EXAMPLES / "reference.yaml")
    doc["spec"]["model"]["version"] = version
    doc["spec"]["model"]["uri"] = f"file:///opt/models/iris-classifier/{version}/model.json"
    doc["spec"]["runtime"]["image"] = f"{IMAGE}:{image_tag}"
    doc["spec"]["rollout"]["progressDeadlineSeconds"] = 45
    for test in doc["spec"]["smokeTests"]:
        for value in test.get("expect", {}).get("values", []):
            if value["path"] == "$.model.version":
                value["equals"] = version
    return doc


V1 = release("1.0.0")
V2_WRONG_MODEL_PATH = release("2.0.0", "1.0.0-wrong-model-path")
V3_CRASHES_AT_START = release("3.0.0", "1.0.0-missing-dep")
V4_GOOD = release("1.1.0")


class Story:
    """Given/When/Then helpers around one ModelDeployment in one namespace."""

    def __init__(self, kubectl: Kubectl, operator: Operator, namespace: str,
                 name: str = NAME) -> None:
        self.name = name
        self.kubectl = kubectl
        self.operator = operator
        self.namespace = namespace
        self.seen = 0  # events already asserted

    def diagnose(self) -> str:
        return self.kubectl.describe("md", self.name, self.namespace) + "\n--- operator log:\n" + \
            self.operator.tail(60)

    def apply(self, doc: dict[str, Any]) -> None:
        self.kubectl.apply(doc, self.namespace)

    def md(self) -> dict[str, Any]:
        return self.kubectl.get("md", self.name, self.namespace)  # type: ignore[no-any-return]

    def wait_phase(self, phase: str, timeout: float = 120,
                   each: Callable[[], None] | None = None) -> dict[str, Any]:
        """The object once its status reached ``phase`` for its generation; ``each`` runs at
        each look (to watch pods that will be gone by then)."""
        def reached() -> dict[str, Any] | None:
            if each is not None:
                each()
            md = self.md()
            status = md.get("status") or {}
            if status.get("phase") == phase and \
                    status.get("observedGeneration") == md["metadata"]["generation"]:
                return md
            return None
        return wait_until(reached, timeout=timeout, what=f"phase {phase}",  # type: ignore[no-any-return]
                          diagnose=self.diagnose)

    def md_events(self) -> list[dict[str, Any]]:
        return [e for e in self.kubectl.events(self.namespace, self.name)
                if e["involvedObject"]["kind"] == "ModelDeployment"]

    def expect_events(self, expected: list[tuple[str, str]], settle: float = 1.0) -> list[dict]:
        """The next Events, in order, are exactly ``expected`` (type, reason)."""
        # Events are posted asynchronously: wait for as many as expected, then a little longer
        # so that an extra one (which would fail the test) has the time to show up.
        deadline = time.monotonic() + 20
        while len(self.md_events()) - self.seen < len(expected) and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(settle)
        events = self.md_events()[self.seen:]
        got = [(e["type"], e["reason"]) for e in events]
        assert got == expected, "\n".join(f"{e['type']} {e['reason']}: {e['message']}"
                                          for e in events) + "\n" + self.operator.tail(30)
        self.seen += len(events)
        return events

    def serving_image(self) -> str:
        deployment = self.kubectl.get("deployment", self.name, self.namespace)
        return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

    def ready_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl.get("pods", namespace=self.namespace,
                                selector=f"slipway.dev/model-deployment={self.name}")["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp") and
                (condition(p, "Ready") or {}).get("status") == "True"]

    def kubectl_wait_ready(self, timeout: str) -> bool:
        result = self.kubectl.run("wait", "--for=condition=Ready", f"md/{self.name}", "-n",
                                  self.namespace, f"--timeout={timeout}", check=False,
                                  timeout=120)
        return result.returncode == 0

    def wait_until_the_slow_release_is_under_test(self) -> None:
        """A pod of the "-slow" release is up and its (4 s) smoke tests are running."""
        def under_test() -> bool:
            pods = self.kubectl.get("pods", namespace=self.namespace,
                                    selector=f"slipway.dev/model-deployment={self.name}")["items"]
            return any(p["spec"]["containers"][0]["image"].endswith("-slow")
                       and (condition(p, "ContainersReady") or {}).get("status") == "True"
                       for p in pods)
        wait_until(under_test, timeout=60, what="a pod of the release under test",
                   diagnose=self.diagnose)
        time.sleep(1.5)

    def given_v1_is_ready(self) -> dict[str, Any]:
        self.apply(V1)
        md = self.wait_phase("Ready")
        self.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                            ("Normal", "Verified")])
        return md


@pytest.fixture
def story(kubectl: Kubectl, operator: Operator, namespace: str) -> Story:
    return Story(kubectl, operator, namespace)


def test_v1_is_verified_and_becomes_the_rollback_target(story: Story) -> None:
    # Given the operator; When v1 is applied
    md = story.given_v1_is_ready()
    # Then each pod was verified by its own smoke tests before its readiness gate opened, and
    # the Service once every pod was in
    status = md["status"]
    smoke = status["lastSmokeTest"]
    assert smoke["outcome"] == "Passed" and smoke["revision"] == status["desiredRevision"]
    assert {r["target"] for r in smoke["results"]} == {f"service/{NAME}"}
    pods = story.kubectl.get("pods", namespace=story.namespace,
                             selector=f"slipway.dev/model-deployment={NAME}")["items"]
    assert sorted(p["pod"] for p in smoke["pods"]) == sorted(p["metadata"]["name"] for p in pods)
    assert {p["outcome"] for p in smoke["pods"]} == {"Passed"}
    for pod in pods:
        assert condition(pod, "slipway.dev/verified")["status"] == "True"  # type: ignore[index]
    assert status["verifiedPods"] == "2/2"
    # And v1 is the rollback target, kept in a ControllerRevision owned by the ModelDeployment
    target = status["rollbackTarget"]
    assert target["revision"] == status["currentRevision"] == status["desiredRevision"]
    assert target["modelVersion"] == "1.0.0"
    revision = story.kubectl.get("controllerrevision", target["controllerRevision"],
                                 story.namespace)
    assert revision["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert revision["data"]["podTemplate"]["spec"]["containers"][0]["image"] == f"{IMAGE}:1.0.0"
    # And kstatus reads it as Current; kubectl wait returns
    assert condition(md, "Ready")["status"] == "True"  # type: ignore[index]
    assert condition(md, "Reconciling")["status"] == "False"  # type: ignore[index]
    assert condition(md, "Stalled")["status"] == "False"  # type: ignore[index]
    assert story.kubectl_wait_ready("30s")


def test_v2_with_the_wrong_model_path_fails_its_smoke_test_and_v1_serves_again(
    story: Story,
) -> None:
    v1 = story.given_v1_is_ready()
    reverts = story.operator.metric("slipway_reverts_total", reason="SmokeTestFailed")
    # When v2 (ready, but 500 on every request) is applied
    story.apply(V2_WRONG_MODEL_PATH)
    # Then its first pod fails its smoke tests behind its readiness gate, Slipway reverts by
    # itself and checks v1 again (v1's pods never went away)
    md = story.wait_phase("RolledBack")
    events = story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    assert "got 500" in events[1]["message"]
    # And the Deployment is back on v1's template with Ready pods
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    assert md["status"]["currentRevision"] == v1["status"]["rollbackTarget"]["revision"]
    wait_until(lambda: len(story.ready_pods()) == 2, timeout=60, what="2 Ready v1 pods",
               diagnose=story.diagnose)
    # And the conditions say what happened, naming the failing test and the status code
    rolled_back = condition(md, "RolledBack")
    assert rolled_back["status"] == "True"  # type: ignore[index]
    assert "smoke test '" in rolled_back["message"] and "500" in rolled_back["message"]  # type: ignore[index]
    assert condition(md, "Ready")["status"] == "False"  # type: ignore[index]
    assert condition(md, "Stalled")["reason"] == "SmokeTestFailed"  # type: ignore[index]
    # And the user's spec was never rewritten (no drift for Argo CD or Flux)
    assert md["spec"]["runtime"]["image"] == f"{IMAGE}:1.0.0-wrong-model-path"
    # And `kubectl wait --for=condition=Ready` does not return for v2
    assert not story.kubectl_wait_ready("5s")
    # And the metrics endpoint counted the revert, and shows the phase
    assert story.operator.metric("slipway_reverts_total", reason="SmokeTestFailed") == \
        reverts + 1
    assert story.operator.metric("slipway_model_deployment_phase", namespace=story.namespace,
                                 name=NAME, phase="RolledBack") == 1
    assert story.operator.metric("slipway_smoke_test_duration_seconds_count",
                                 outcome="Failed") >= 1


def test_v3_that_crashes_at_start_is_caught_as_a_crash_loop_and_reverted(story: Story) -> None:
    story.given_v1_is_ready()
    # When v3 (its container exits at start: a dependency is missing) is applied
    story.apply(V3_CRASHES_AT_START)
    # Then the crash loop is detected before the progress deadline and v1 serves again
    md = story.wait_phase("RolledBack")
    story.expect_events([("Normal", "Progressing"), ("Warning", "CrashLoop"),
                         ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    assert "CrashLoopBackOff" in condition(md, "Stalled")["message"]  # type: ignore[index]
    assert story.serving_image() == f"{IMAGE}:1.0.0"


def test_an_image_that_cannot_be_pulled_is_reverted_after_the_grace_period(story: Story) -> None:
    story.given_v1_is_ready()
    # When a release names an image no registry has
    story.apply(release("5.0.0", "9.9.9-does-not-exist"))
    # Then, once the pull has failed for the grace period, v1 serves again
    md = story.wait_phase("RolledBack")
    story.expect_events([("Normal", "Progressing"), ("Warning", "ImagePullFailed"),
                         ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    assert "cannot pull image" in condition(md, "Stalled")["message"]  # type: ignore[index]
    assert story.serving_image() == f"{IMAGE}:1.0.0"


def test_a_release_that_never_becomes_ready_fails_at_the_progress_deadline_and_is_reverted(
    story: Story,
) -> None:
    story.given_v1_is_ready()
    # When a release's pods start and stay alive but never pass readiness (the model takes an
    # hour to load), with a progress deadline of 15 s
    never_ready = release("6.0.0", "1.0.0-slow-start")
    never_ready["spec"]["runtime"]["env"] = [{"name": "SLIPWAY_INIT_DELAY", "value": "3600"}]
    never_ready["spec"]["rollout"]["progressDeadlineSeconds"] = 15
    story.apply(never_ready)
    # Then the Deployment's ProgressDeadlineExceeded fails the release and v1 serves again
    md = story.wait_phase("RolledBack")
    story.expect_events([("Normal", "Progressing"), ("Warning", "ProgressDeadlineExceeded"),
                         ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    assert md["status"]["lastFailure"]["reason"] == "ProgressDeadlineExceeded"
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    wait_until(lambda: len(story.ready_pods()) == 2, timeout=60, what="2 Ready v1 pods",
               diagnose=story.diagnose)


def test_a_failed_release_is_not_retried_until_asked_and_a_good_one_replaces_the_target(
    story: Story,
) -> None:
    v1 = story.given_v1_is_ready()
    story.apply(V2_WRONG_MODEL_PATH)
    story.wait_phase("RolledBack")
    story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    deployment_generation = story.kubectl.get("deployment", NAME, story.namespace)[
        "metadata"]["generation"]
    # When v2 is re-applied unchanged (a GitOps re-sync)
    story.apply(V2_WRONG_MODEL_PATH)
    # Then nothing is rolled out again
    story.expect_events([], settle=4)
    assert story.kubectl.get("deployment", NAME, story.namespace)["metadata"]["generation"] == \
        deployment_generation
    assert story.md()["status"]["phase"] == "RolledBack"
    # When the user asks for a retry with the annotation
    story.kubectl.run("annotate", f"md/{NAME}", "-n", story.namespace,
                      "slipway.dev/retry=first-retry")
    # Then it is tried again (and fails again, and v1 serves again)
    wait_until(lambda: len(story.md_events()) > story.seen + 3, timeout=90,
               what="the retried release to fail again", diagnose=story.diagnose)
    story.wait_phase("RolledBack")
    story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    # When v4, a good release, is applied (keeping one verified revision only)
    v4 = copy.deepcopy(V4_GOOD)
    v4["spec"]["rollback"]["revisionHistoryLimit"] = 1
    story.apply(v4)
    md = story.wait_phase("Ready")
    story.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                         ("Normal", "Verified")])
    # Then it is Ready, becomes the new rollback target, and kubectl wait returns
    assert md["status"]["rollbackTarget"]["modelVersion"] == "1.1.0"
    assert md["status"]["rollbackTarget"]["revision"] != v1["status"]["rollbackTarget"][
        "revision"]
    assert condition(md, "RolledBack")["status"] == "False"  # type: ignore[index]
    assert story.kubectl_wait_ready("30s")
    # And the history beyond revisionHistoryLimit was pruned: only v4's revision is kept
    kept = story.kubectl.get("controllerrevisions", namespace=story.namespace)["items"]
    assert [r["metadata"]["name"] for r in kept] == [md["status"]["rollbackTarget"][
        "controllerRevision"]]
    history = [(h["modelVersion"], h["outcome"]) for h in md["status"]["history"]]
    assert history == [("1.0.0", "Verified"), ("2.0.0", "Failed"), ("1.0.0", "RolledBack"),
                       ("2.0.0", "Failed"), ("1.0.0", "RolledBack"), ("1.1.0", "Verified")]


def test_a_first_release_that_fails_is_marked_failed_and_left_as_it_is(story: Story) -> None:
    # Given no verified revision; When the first release is broken
    story.apply(V2_WRONG_MODEL_PATH)
    md = story.wait_phase("Failed")
    # Then it is Failed and Stalled, nothing is reverted, and the failing pods stay for a look
    story.expect_events([("Normal", "Progressing"), ("Warning", "SmokeTestFailed")])
    assert "no verified revision to roll back to" in condition(md, "Stalled")["message"]  # type: ignore[index]
    assert "rollbackTarget" not in md["status"]
    assert story.serving_image() == f"{IMAGE}:1.0.0-wrong-model-path"
    # And no pod of it gets traffic: each waits behind its closed readiness gate
    assert story.ready_pods() == []
    story.expect_events([], settle=3)


def test_the_operator_killed_while_verifying_finishes_with_one_verdict_and_one_revert(
    story: Story,
) -> None:
    story.given_v1_is_ready()
    # When a release whose answers take 4 s (and are wrong) is being verified
    slow = release("2.0.0", "1.0.0-wrong-model-path-slow")
    slow["spec"]["rollout"]["smokeTestTimeoutSeconds"] = 10
    story.apply(slow)
    story.wait_phase("Progressing")
    story.wait_until_the_slow_release_is_under_test()
    # And the operator is killed right then, and started again
    story.operator.kill()
    story.operator.start()
    # Then it finishes: one verdict, one revert, v1 verified again
    md = story.wait_phase("RolledBack", timeout=180)
    story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    revisions = story.kubectl.get("replicasets", namespace=story.namespace)["items"]
    assert len(revisions) == 2  # v1's and the slow release's: the revert reused v1's
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    assert md["status"]["lastFailure"]["reason"] == "SmokeTestFailed"


def test_a_rollback_target_that_fails_too_stops_instead_of_oscillating(story: Story) -> None:
    # Given v1, whose scoring script comes from a ConfigMap, verified
    script = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "scoring"},
              "data": {"script": str(EXAMPLES / "bundle" / "score.py")}}
    story.kubectl.apply(script, story.namespace)
    v1 = copy.deepcopy(V1)
    v1["spec"]["runtime"]["env"] = [{"name": "SCORE_SCRIPT", "valueFrom": {
        "configMapKeyRef": {"name": "scoring", "key": "script"}}}]
    # All pods may go at once: a release replaces v1's pods, and a revert brings up new ones
    # (with the default maxUnavailable 0, v1's pods would never go away and the revert would
    # find them still serving).
    v1["spec"]["rollout"]["maxUnavailable"] = "100%"
    story.apply(v1)
    story.wait_phase("Ready")
    story.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                         ("Normal", "Verified")])
    # And the ConfigMap later breaks what v1's pods will load
    script["data"]["script"] = str(EXAMPLES / "bundle" / "variants" / "wrong_model_path.py")
    story.kubectl.apply(script, story.namespace)
    # When a broken release is applied, and the revert brings up new v1 pods
    v2 = copy.deepcopy(V2_WRONG_MODEL_PATH)
    v2["spec"]["runtime"]["env"] = v1["spec"]["runtime"]["env"]
    v2["spec"]["rollout"]["maxUnavailable"] = "100%"
    story.apply(v2)
    # Then v1 fails its smoke tests too, and Slipway stops: Failed, no further revert
    md = story.wait_phase("Failed", timeout=180)
    story.expect_events([
        ("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
        ("Warning", "RollingBack"), ("Warning", "RollbackFailed")])
    assert condition(md, "Stalled")["reason"] == "RollbackFailed"  # type: ignore[index]
    generation = story.kubectl.get("deployment", NAME, story.namespace)["metadata"]["generation"]
    story.expect_events([], settle=5)
    assert story.kubectl.get("deployment", NAME, story.namespace)["metadata"][
        "generation"] == generation


def test_status_is_fully_kept_by_the_api_server(story: Story) -> None:
    """Nothing the operator writes is pruned: the CRD declares every status field."""
    story.given_v1_is_ready()
    status = story.md()["status"]
    for field in ("phase", "observedGeneration", "conditions", "currentRevision",
                  "desiredRevision", "rollbackTarget", "lastSmokeTest", "history"):
        assert field in status, json.dumps(status, indent=1)
    assert status["lastSmokeTest"]["generation"] == story.md()["metadata"]["generation"]
