"""The release lifecycle, decided without a cluster: every transition as a table row."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from slipway.logic import lifecycle
from slipway.logic.lifecycle import Observed, PodProblem, Recorded, SmokeResult
from slipway.logic.rollout import RolloutStatus

COMPLETE = RolloutStatus("Complete", "RolloutComplete", "2 of 2 available", 2, 2)
ROLLING = RolloutStatus("Progressing", "Progressing", "1 of 2 updated replicas are available")
DEADLINE = RolloutStatus("Failed", "ProgressDeadlineExceeded", "timed out progressing")
CRASH = PodProblem(lifecycle.CRASH_LOOP, "pod p container c is in CrashLoopBackOff")

GEN = 4


def observed(**kw: Any) -> Observed:
    base = dict(generation=GEN, desired="d2", desired_label="model m 2", target="t1",
                target_label="model m 1", deployment_revision="d2", rollout=COMPLETE)
    return Observed(**{**base, **kw})  # type: ignore[arg-type]


def failure(revision: str = "d2", **kw: Any) -> dict[str, Any]:
    return {"revision": revision, "generation": GEN, "reason": lifecycle.SMOKE_TEST_FAILED,
            "message": "smoke test 'setosa' on pod/p: expected status 200, got 500",
            "retryToken": "", **kw}


def passed(revision: str, generation: int = GEN) -> dict[str, Any]:
    return {"revision": revision, "generation": generation, "outcome": "Passed"}


def smoke(revision: str, outcome: str, message: str = "details") -> SmokeResult:
    return SmokeResult(revision, outcome, message)  # type: ignore[arg-type]


# (id, recorded, observed, phase, action, Ready, Stalled, RolledBack, event reasons)
CASES: list[tuple[str, Recorded, Observed, str, str, bool, bool, bool, list[str]]] = [
    ("new-revision-is-rolled-out", Recorded(phase="Ready", desired_revision="d1"),
     observed(deployment_revision="t1"), "Progressing", "apply-desired", False, False, False,
     ["Progressing"]),
    ("first-release-without-deployment", Recorded(), observed(deployment_revision=None,
                                                              target=None, rollout=None),
     "Progressing", "apply-desired", False, False, False, ["Progressing"]),
    # The status write after a new revision's children failed: the next look finds the
    # Deployment on it, already crash-looping or complete; its rollout is announced too
    ("an-unrecorded-rollout-that-already-failed-announces-it-too",
     Recorded(phase="RolledBack", desired_revision="d1"), observed(pod_problem=CRASH),
     "RollingBack", "apply-target", False, True, False,
     ["Progressing", "CrashLoop", "RollingBack"]),
    ("an-unrecorded-rollout-that-is-complete-announces-it-before-verifying",
     Recorded(phase="Ready", desired_revision="d1"), observed(), "Verifying", "verify", False,
     False, False, ["Progressing", "Verifying"]),
    ("rolling-out-waits-quietly", Recorded(phase="Progressing", desired_revision="d2"),
     observed(rollout=ROLLING), "Progressing", "wait", False, False, False, []),
    ("complete-rollout-is-verified", Recorded(phase="Progressing", desired_revision="d2"),
     observed(), "Verifying", "verify", False, False, False, ["Verifying"]),
    ("passed-smoke-tests-make-it-ready-and-the-target",
     Recorded(phase="Verifying", desired_revision="d2"), observed(smoke=smoke("d2", "Passed")),
     "Ready", "none", True, False, False, ["Verified"]),
    ("verified-earlier-stays-ready-without-retesting",
     Recorded(phase="Ready", desired_revision="d2", last_smoke=passed("d2")), observed(),
     "Ready", "none", True, False, False, []),
    ("verified-for-an-older-generation-is-retested",
     Recorded(phase="Ready", desired_revision="d2", last_smoke=passed("d2", GEN - 1)),
     observed(), "Verifying", "verify", False, False, False, ["Verifying"]),
    ("failed-smoke-test-reverts-to-rollback-target",
     Recorded(phase="Verifying", desired_revision="d2"),
     observed(smoke=smoke("d2", "Failed", "expected status 200, got 500")),
     "RollingBack", "apply-target", False, True, False, ["SmokeTestFailed", "RollingBack"]),
    ("progress-deadline-reverts", Recorded(phase="Progressing", desired_revision="d2"),
     observed(rollout=DEADLINE), "RollingBack", "apply-target", False, True, False,
     ["ProgressDeadlineExceeded", "RollingBack"]),
    ("crash-loop-reverts-before-the-deadline", Recorded(phase="Progressing",
                                                        desired_revision="d2"),
     observed(rollout=ROLLING, pod_problem=CRASH), "RollingBack", "apply-target", False, True,
     False, ["CrashLoop", "RollingBack"]),
    ("first-release-failure-is-left-as-it-is", Recorded(phase="Verifying",
                                                        desired_revision="d2"),
     observed(target=None, smoke=smoke("d2", "Failed")), "Failed", "none", False, True, False,
     ["SmokeTestFailed"]),
    ("no-automatic-rollback-when-disabled", Recorded(phase="Verifying", desired_revision="d2"),
     observed(automatic=False, smoke=smoke("d2", "Failed")), "Failed", "none", False, True,
     False, ["SmokeTestFailed"]),
    ("blocked-revision-puts-the-target-back", Recorded(phase="RollingBack",
                                                       last_failure=failure()),
     observed(deployment_revision="d2"), "RollingBack", "apply-target", False, True, False, []),
    ("target-rolling-out-waits", Recorded(phase="RollingBack", last_failure=failure()),
     observed(deployment_revision="t1", rollout=ROLLING), "RollingBack", "wait", False, True,
     False, []),
    ("target-rolled-out-is-verified-again", Recorded(phase="RollingBack",
                                                     last_failure=failure()),
     observed(deployment_revision="t1"), "RollingBack", "verify", False, True, False, []),
    ("target-verified-is-rolled-back", Recorded(phase="RollingBack", last_failure=failure()),
     observed(deployment_revision="t1", smoke=smoke("t1", "Passed")), "RolledBack", "none",
     False, True, True, ["RolledBack"]),
    ("rolled-back-is-steady", Recorded(phase="RolledBack", last_failure=failure(),
                                       last_smoke=passed("t1")),
     observed(deployment_revision="t1"), "RolledBack", "none", False, True, True, []),
    ("target-failing-too-stops-without-oscillating",
     Recorded(phase="RollingBack", last_failure=failure()),
     observed(deployment_revision="t1", smoke=smoke("t1", "Failed")), "Failed", "none", False,
     True, False, ["RollbackFailed"]),
    ("target-crash-looping-stops", Recorded(phase="RollingBack", last_failure=failure()),
     observed(deployment_revision="t1", rollout=ROLLING, pod_problem=CRASH), "Failed", "none",
     False, True, False, ["RollbackFailed"]),
    ("after-a-failed-rollback-nothing-is-applied",
     Recorded(phase="Failed", last_failure=failure(rollbackFailed=True,
                                                   rollbackMessage="target failed")),
     observed(deployment_revision="t1"), "Failed", "none", False, True, False, []),
    ("unchanged-reapply-of-failed-spec-is-not-retried",
     Recorded(phase="RolledBack", last_failure=failure(), last_smoke=passed("t1")),
     observed(deployment_revision="t1"), "RolledBack", "none", False, True, True, []),
    ("retry-annotation-tries-again", Recorded(phase="RolledBack", last_failure=failure(),
                                              last_smoke=passed("t1")),
     observed(deployment_revision="t1", retry_token="2026-11-25T18:00:00Z"), "Progressing",
     "apply-desired", False, False, False, ["Progressing"]),
    ("new-generation-tries-again", Recorded(phase="RolledBack", last_failure=failure(),
                                            last_smoke=passed("t1")),
     observed(deployment_revision="t1", generation=GEN + 1), "Progressing", "apply-desired",
     False, False, False, ["Progressing"]),
    ("could-not-test-waits-and-retries", Recorded(phase="Verifying", desired_revision="d2"),
     observed(smoke=smoke("d2", "Error", "no Ready pod")), "Verifying", "wait", False, False,
     False, []),
    ("could-not-test-gives-up-after-the-limit",
     Recorded(phase="Verifying", desired_revision="d2",
              last_smoke={"revision": "d2", "generation": GEN, "outcome": "Error",
                          "attempts": lifecycle.COULD_NOT_TEST_LIMIT - 1}),
     observed(smoke=smoke("d2", "Error", "no Ready pod")), "Failed", "none", False, True, False,
     ["SmokeTestsNotRun"]),
    ("could-not-test-is-never-reverted-later",
     Recorded(phase="Failed", last_failure=failure(reason=lifecycle.SMOKE_TESTS_NOT_RUN)),
     observed(deployment_revision="d2"), "Failed", "none", False, True, False, []),
    ("an-upgrade-that-renders-differently-keeps-the-block",
     Recorded(phase="RolledBack", last_failure=failure("d2-as-rendered-before"),
              last_smoke=passed("t1")),
     observed(deployment_revision="t1"), "RolledBack", "none", False, True, True, []),
    ("target-equal-to-desired-is-not-a-way-back",
     Recorded(phase="Verifying", desired_revision="d2"),
     observed(target="d2", smoke=smoke("d2", "Failed")), "Failed", "none", False, True, False,
     ["SmokeTestFailed"]),
    # Readiness gates: each pod is tested before it gets traffic.
    ("a-pod-failing-behind-its-gate-reverts-before-the-rollout-ends",
     Recorded(phase="Progressing", desired_revision="d2"),
     observed(rollout=ROLLING, pod_verdict=smoke("d2", "Failed", "pod p: got 500")),
     "RollingBack", "apply-target", False, True, False, ["SmokeTestFailed", "RollingBack"]),
    ("a-pod-that-could-not-be-tested-stops-without-a-revert",
     Recorded(phase="Progressing", desired_revision="d2"),
     observed(rollout=ROLLING, pod_verdict=smoke("d2", "Error", "pod p: refused")),
     "Failed", "none", False, True, False, ["SmokeTestsNotRun"]),
    ("a-pod-verdict-of-another-revision-is-not-this-release's",
     Recorded(phase="Progressing", desired_revision="d2"),
     observed(rollout=ROLLING, pod_verdict=smoke("t1", "Failed")), "Progressing", "wait",
     False, False, False, []),
    ("a-scale-up-of-a-verified-revision-stays-ready",
     Recorded(phase="Ready", desired_revision="d2", last_smoke=passed("d2")),
     observed(rollout=ROLLING), "Ready", "none", True, False, False, []),
    ("a-verified-revision-is-not-reverted-for-one-bad-pod",
     Recorded(phase="Ready", desired_revision="d2", last_smoke=passed("d2")),
     observed(rollout=DEADLINE, pod_problem=CRASH), "Ready", "none", True, False, False, []),
    ("the-target's-re-check-is-read-from-rollbackCheck",
     Recorded(phase="RollingBack", last_failure=failure(),
              last_smoke={**passed("d2"), "outcome": "Failed"}, rollback_check=passed("t1")),
     observed(deployment_revision="t1"), "RolledBack", "none", False, True, True,
     ["RolledBack"]),
]


@pytest.mark.parametrize(
    ("recorded", "obs", "phase", "action", "ready", "stalled", "rolled_back", "events"),
    [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lifecycle(recorded: Recorded, obs: Observed, phase: str, action: str, ready: bool,
                   stalled: bool, rolled_back: bool, events: list[str]) -> None:
    decision = lifecycle.decide(recorded, obs)
    assert (decision.phase, decision.action) == (phase, action)
    conds = decision.conditions
    assert conds["Ready"].status is ready
    assert conds["Stalled"].status is stalled
    assert conds["RolledBack"].status is rolled_back
    # Reconciling: working towards the spec. A revert leads away from it: Stalled, not both
    # (kstatus takes whichever of the two comes first, Argo CD's check reads Stalled first).
    assert conds["Reconciling"].status is (phase in ("Progressing", "Verifying"))
    assert not (conds["Reconciling"].status and conds["Stalled"].status)
    assert [e.reason for e in decision.events] == events
    for cond in conds.values():
        assert cond.message, cond  # False ones too: kubectl describe shows them
    if not conds["Stalled"].status:
        assert conds["Stalled"].reason == lifecycle.NO_FAILURE


def test_a_revert_is_a_warning_that_names_the_failing_test_and_status() -> None:
    decision = lifecycle.decide(
        Recorded(phase="Verifying", desired_revision="d2"),
        observed(smoke=smoke("d2", "Failed", "smoke test 'setosa' on pod/p: expected status "
                                             "200, got 500: {\"error\": \"no model\"}")))
    warnings = [e for e in decision.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["SmokeTestFailed", "RollingBack"]
    assert "'setosa'" in warnings[0].message and "got 500" in warnings[0].message
    assert "revision t1" in warnings[1].message
    assert decision.failure == {"revision": "d2", "generation": GEN, "reason": "SmokeTestFailed",
                                "message": decision.failure["message"],  # type: ignore[index]
                                "retryToken": ""}
    assert decision.serving == "t1"


def test_rolled_back_condition_message_names_the_cause() -> None:
    decision = lifecycle.decide(
        Recorded(phase="RollingBack", last_failure=failure()),
        observed(deployment_revision="t1", smoke=smoke("t1", "Passed")))
    message = decision.conditions["RolledBack"].message
    assert "revision t1" in message and "'setosa'" in message and "got 500" in message


def test_passed_verdict_records_the_target_and_clears_the_failure() -> None:
    decision = lifecycle.decide(
        Recorded(phase="Verifying", last_failure=failure("d1", generation=GEN - 1)),
        observed(smoke=smoke("d2", "Passed")))
    assert decision.record_target and decision.clear_failure


def test_could_not_test_names_why_nothing_was_reverted() -> None:
    decision = lifecycle.decide(
        Recorded(phase="Verifying", desired_revision="d2",
                 last_smoke={"revision": "d2", "generation": GEN, "outcome": "Error",
                             "attempts": lifecycle.COULD_NOT_TEST_LIMIT - 1}),
        observed(smoke=smoke("d2", "Error", "could not reach it: connection refused")))
    assert decision.serving == "d2" and decision.failure is not None
    assert decision.failure["reason"] == lifecycle.SMOKE_TESTS_NOT_RUN
    message = decision.conditions["Stalled"].message
    assert "could not reach it: connection refused" in message and "not reverted" in message


def test_a_rollback_failure_is_recorded_so_a_restart_does_not_retry_it() -> None:
    decision = lifecycle.decide(Recorded(phase="RollingBack", last_failure=failure()),
                                observed(deployment_revision="t1", smoke=smoke("t1", "Failed")))
    assert decision.failure is not None and decision.failure["rollbackFailed"] is True
    again = lifecycle.decide(Recorded(phase="Failed", last_failure=decision.failure),
                             observed(deployment_revision="t1"))
    assert (again.phase, again.action, again.events) == ("Failed", "none", ())


def test_decisions_depend_only_on_recorded_status_and_observations() -> None:
    """What lets a restarted operator reach the same decision from what it recorded."""
    for _, recorded, obs, *_ in CASES:
        first = lifecycle.decide(recorded, obs)
        assert lifecycle.decide(recorded, obs) == first


def pod(name: str, revision: str, reason: str, restarts: int = 0, created: str =
        "2026-11-25T17:00:00Z", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"slipway.dev/revision": revision},
                         "creationTimestamp": created},
            "status": {"containerStatuses": [{
                "name": "model-server", "image": "img:2", "restartCount": restarts,
                "state": {"waiting": {"reason": reason, "message": "back-off"}}, **extra}]}}


NOW = 1795626000.0 + 3600  # well after the creation times below


def test_crash_loop_past_the_bound_is_a_problem() -> None:
    pods = [pod("a", "d2", "CrashLoopBackOff", restarts=lifecycle.CRASHLOOP_RESTARTS,
                lastState={"terminated": {"exitCode": 1, "message": "ModuleNotFoundError"}})]
    check = lifecycle.check_pods(pods, "d2", NOW)
    assert check.problem is not None and check.problem.reason == "CrashLoop"
    assert "exit code 1" in check.problem.message and "ModuleNotFoundError" in \
        check.problem.message


def test_a_first_crash_is_not_yet_a_crash_loop() -> None:
    pods = [pod("a", "d2", "CrashLoopBackOff", restarts=1)]
    assert lifecycle.check_pods(pods, "d2", NOW).problem is None


def test_pods_of_another_revision_are_ignored() -> None:
    pods = [pod("old", "d1", "CrashLoopBackOff", restarts=9)]
    assert lifecycle.check_pods(pods, "d2", NOW).problem is None


def test_image_pull_back_off_fails_after_a_grace_period() -> None:
    import datetime

    created = datetime.datetime.fromtimestamp(NOW - 5, datetime.UTC).isoformat()
    young = [pod("a", "d2", "ImagePullBackOff", created=created)]
    check = lifecycle.check_pods(young, "d2", NOW)
    assert check.problem is None
    assert check.recheck_after == pytest.approx(lifecycle.IMAGE_PULL_GRACE_SECONDS - 5 + 0.5)
    old = [pod("a", "d2", "ImagePullBackOff")]
    check = lifecycle.check_pods(old, "d2", NOW)
    assert check.problem is not None and check.problem.reason == "ImagePullFailed"


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_the_ready_condition_reads_the_same_before_and_after_the_verdict_is_recorded() -> None:
    """The reconcile after the verdict must find nothing to write (no needless status patch)."""
    verdict = lifecycle.decide(Recorded(phase="Verifying", desired_revision="d2"),
                               observed(smoke=smoke("d2", "Passed", "4 smoke tests passed")))
    later = lifecycle.decide(
        Recorded(phase="Ready", desired_revision="d2",
                 last_smoke={**passed("d2"), "message": "4 smoke tests passed"}), observed())
    assert later.conditions == verdict.conditions and later.events == ()


def test_a_failed_release_of_the_targets_own_template_says_what_really_happened() -> None:
    decision = lifecycle.decide(
        Recorded(phase="Verifying", desired_revision="d2"),
        observed(target="d2", target_generation=GEN - 1,
                 smoke=smoke("d2", "Failed", "expected 'setosa', got 'virginica'")))
    message = decision.conditions["Ready"].message
    assert "first release" not in message
    assert f"rollback target itself (verified for generation {GEN - 1}" in message
    assert "its pods keep serving" in message


def test_a_target_pod_failing_behind_its_gate_during_the_revert_stops_it() -> None:
    decision = lifecycle.decide(
        Recorded(phase="RollingBack", last_failure=failure()),
        observed(deployment_revision="t1", rollout=ROLLING,
                 pod_verdict=smoke("t1", "Failed", "pod q: got 500")))
    assert (decision.phase, [e.reason for e in decision.events]) == ("Failed",
                                                                      ["RollbackFailed"])
    assert "pod q: got 500" in decision.conditions["Stalled"].message


@pytest.mark.parametrize(("checks", "phase"), [("c1", "Ready"), ("c2", "Verifying"),
                                               ("", "Verifying")])
def test_a_new_generation_keeps_the_verdict_only_when_its_checks_are_the_same(
        checks: str, phase: str) -> None:
    # A replica count changed (a new generation, the same pod template and tests): still
    # verified; other tests, or checks not known: verified again.
    recorded = Recorded(phase="Ready", desired_revision="d2",
                        last_smoke={**passed("d2", GEN - 1), "checks": "c1"})
    decision = lifecycle.decide(recorded, observed(checks=checks))
    assert decision.phase == phase
    if phase == "Ready":
        assert decision.events == () and decision.action == "none"
    else:
        assert decision.action == "verify"


def test_every_phase_a_decision_enters_is_a_kill_point() -> None:
    import typing

    from slipway.api import models

    # Pending is before any decision; Invalid is a stall of the controller, not a decision.
    assert set(typing.get_args(models.Phase)) - {"Pending", "Invalid"} == \
        set(lifecycle.DECIDED_PHASES)
    source = (pathlib.Path(lifecycle.__file__)).read_text()
    decided = set(re.findall(r'phase="(\w+)"', source))
    assert decided == set(lifecycle.DECIDED_PHASES)


def fetching_pod(name: str, state: dict[str, Any], last: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    init = {"name": "fetch-model", "image": "op:1", "restartCount": 1 if last else 0,
            "state": state, "lastState": {"terminated": last} if last else {}}
    server = {"name": "model-server", "image": "img:2", "restartCount": 0,
              "state": {"waiting": {"reason": "PodInitializing"}}}
    return {"metadata": {"name": name, "labels": {"slipway.dev/revision": "d2"},
                         "creationTimestamp": "2026-11-25T17:00:00Z"},
            "status": {"initContainerStatuses": [init], "containerStatuses": [server]}}


MISMATCH = ("ArtifactDigestMismatch: s3://models/iris/1.0.0/: expected sha256:" + "a" * 64 +
            ", got sha256:" + "b" * 64)


def test_a_digest_mismatch_fails_at_the_first_exit_naming_both_digests() -> None:
    pods = [fetching_pod("a", {"terminated": {"exitCode": 2, "reason": "Error",
                                              "message": MISMATCH + "\n"}})]
    check = lifecycle.check_pods(pods, "d2", NOW)
    assert check.problem is not None
    assert check.problem.reason == lifecycle.ARTIFACT_DIGEST_MISMATCH
    assert check.problem.message == ("pod a: the artifact fetch failed: s3://models/iris/1.0.0/:"
                                     f" expected sha256:{'a' * 64}, got sha256:{'b' * 64}")
    # seen as well once the init container waits to be started again (Init:CrashLoopBackOff)
    waiting = [fetching_pod("a", {"waiting": {"reason": "CrashLoopBackOff"}},
                            last={"exitCode": 2, "message": MISMATCH})]
    assert lifecycle.check_pods(waiting, "d2", NOW).problem == check.problem


def test_a_fetch_that_fails_without_saying_why_is_a_fetch_failure_with_the_logs_tail() -> None:
    pods = [fetching_pod("a", {"running": {}}, last={
        "exitCode": 137, "message": "Traceback ...\nMemoryError"})]
    check = lifecycle.check_pods(pods, "d2", NOW)
    assert check.problem is not None
    assert check.problem.reason == lifecycle.ARTIFACT_FETCH_FAILED
    assert check.problem.message.endswith("exit code 137: Traceback ...\nMemoryError")


def test_a_fetch_that_succeeded_or_still_runs_is_no_problem() -> None:
    running = [fetching_pod("a", {"running": {}})]
    done = [fetching_pod("a", {"terminated": {"exitCode": 0, "reason": "Completed"}})]
    assert lifecycle.check_pods(running, "d2", NOW).problem is None
    assert lifecycle.check_pods(done, "d2", NOW).problem is None


def test_an_init_container_that_cannot_be_pulled_fails_the_release() -> None:
    pod = fetching_pod("a", {"waiting": {"reason": "ImagePullBackOff", "message": "no"}})
    check = lifecycle.check_pods([pod], "d2", NOW)
    assert check.problem is not None and check.problem.reason == "ImagePullFailed"
    assert "op:1" in check.problem.message
