"""The release lifecycle as a pure state machine.

Progressing (the Deployment rolls out) → Verifying (smoke tests) → Ready (verified; becomes the
rollback target), or → Failed → RollingBack → RolledBack (the target serves again, re-verified).

``decide`` takes what was recorded in ``status`` and what is observed now, and returns the next
phase, the conditions, the Events of the transition and the one action to take. It performs no
I/O, so every path (including the ones after an operator restart) is covered by table tests, and
the controller only carries decisions out. Two rules keep it from looping:

- a revision that failed is *blocked* for that generation and that value of the
  ``slipway.dev/retry`` annotation: it is not rolled out again until the spec changes or a user
  asks for a retry;
- if the rollback target fails too, the release is Failed and left alone: never oscillate.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Literal

from slipway.logic import artifact, conditions, rollout

RETRY_ANNOTATION = "slipway.dev/retry"

# Bounds of the failure triggers.
CRASHLOOP_RESTARTS = 2  # restarts in CrashLoopBackOff before a release counts as crash-looping
IMAGE_PULL_GRACE_SECONDS = 20.0  # ImagePullBackOff this long (from pod creation) fails a release
COULD_NOT_TEST_LIMIT = 5  # "could not test" verdicts in a row before giving up
COULD_NOT_TEST_DELAYS = (2.0, 4.0, 8.0, 15.0, 30.0)

# Reasons (condition reasons and Event reasons).
VERIFIED = "Verified"
VERIFYING = "Verifying"
PROGRESSING = "Progressing"
SMOKE_TEST_FAILED = "SmokeTestFailed"
SMOKE_TESTS_NOT_RUN = "SmokeTestsNotRun"
PREDICTIONS_DISAGREE = "PredictionsDisagree"  # a new pod's answers differ from the serving one's
DEADLINE = "ProgressDeadlineExceeded"
CRASH_LOOP = "CrashLoop"
IMAGE_PULL_FAILED = "ImagePullFailed"
# The fetch init container's failures (the first word of its termination message)
ARTIFACT_DIGEST_MISMATCH = artifact.DIGEST_MISMATCH
ARTIFACT_FETCH_FAILED = artifact.FETCH_FAILED
FETCH_CONTAINER = artifact.FETCH_CONTAINER
ROLLING_BACK = "RollingBack"
ROLLED_BACK = "RolledBack"
ROLLBACK_FAILED = "RollbackFailed"
NO_ROLLBACK_TARGET = "NoRollbackTarget"
ROLLBACK_DISABLED = "RollbackDisabled"
# Reasons of a condition that is False for want of its cause, each with a message of its own
# (not the phase's reason with an empty message: `kubectl describe` shows them).
NO_FAILURE = "NoFailure"  # Stalled=False
NOT_ROLLED_BACK = "NotRolledBack"  # RolledBack=False: the spec's revision is the one released
NOTHING_REVERTED = "NotReverted"  # RolledBack=False: a failure not reverted (could not test)

Action = Literal["apply-desired", "apply-target", "verify", "wait", "none"]
Outcome = Literal["Passed", "Failed", "Error"]


@dataclasses.dataclass(frozen=True)
class PodProblem:
    reason: str  # CRASH_LOOP, IMAGE_PULL_FAILED or an ARTIFACT_* reason
    message: str


@dataclasses.dataclass(frozen=True)
class SmokeResult:
    """The verdict of the smoke tests just run against ``revision``."""

    revision: str
    outcome: Outcome
    message: str
    reason: str = ""  # a failure's own reason (PREDICTIONS_DISAGREE); default SmokeTestFailed


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What ``status`` says (the operator's memory across restarts)."""

    phase: str | None = None
    desired_revision: str | None = None
    last_failure: dict[str, Any] | None = None
    last_smoke: dict[str, Any] | None = None
    rollback_check: dict[str, Any] | None = None  # the rollback target's re-check

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Recorded:
        return cls(
            phase=status.get("phase"),
            desired_revision=status.get("desiredRevision"),
            last_failure=status.get("lastFailure"),
            last_smoke=status.get("lastSmokeTest"),
            rollback_check=status.get("rollbackCheck"),
        )

    def checks(self) -> list[dict[str, Any]]:
        return [check for check in (self.last_smoke, self.rollback_check) if check]


@dataclasses.dataclass(frozen=True)
class Observed:
    generation: int
    desired: str
    desired_label: str  # "model 1.0.1 (image …)", for messages
    checks: str = ""  # what the desired revision's verdict rests on (render.checks_of)
    retry_token: str = ""
    automatic: bool = True
    target: str | None = None  # revision of the rollback target
    target_label: str = ""
    target_generation: int | None = None  # the generation the target was verified for
    deployment_revision: str | None = None  # revision label of the live Deployment's template
    rollout: rollout.RolloutStatus | None = None
    pod_problem: PodProblem | None = None
    smoke: SmokeResult | None = None
    # A pod of the revision being released (the desired one, or the rollback target during a
    # revert) that failed its own smoke tests behind its readiness gate (outcome "Failed"), or
    # could not be tested however often tried ("Error").
    pod_verdict: SmokeResult | None = None


# The phases a decision enters. Each is a kill point of the chaos tests
# (tests/cluster/test_kill_points.py, which has a story for each): the operator is killed
# right after the status write that enters it, and must converge after a restart with one
# verdict per revision, one revert at most, and each Event once. A phase added here without a
# story there fails that test.
DECIDED_PHASES = ("Progressing", "Verifying", "Ready", "Failed", "RollingBack", "RolledBack")


@dataclasses.dataclass(frozen=True)
class Cond:
    status: bool
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Decision:
    phase: str
    action: Action
    conditions: dict[str, Cond]
    events: tuple[Event, ...] = ()
    verify_revision: str | None = None  # with action "verify"
    failure: dict[str, Any] | None = None  # a new lastFailure to record
    clear_failure: bool = False
    record_target: bool = False  # the desired revision is verified: it becomes the target
    serving: str | None = None  # the revision the Deployment serves after the action
    requeue_after: float | None = None


def blocks(failure: dict[str, Any] | None, generation: int, retry_token: str) -> bool:
    """A recorded failure blocks the release of its generation until the retry token changes.

    Not the rendered revision: an operator upgrade that renders the same spec differently must
    not make a failed release look new and roll it out again.
    """
    return bool(
        failure
        and failure.get("generation") == generation
        and (failure.get("retryToken") or "") == retry_token
    )


def is_blocked(recorded: Recorded, observed: Observed) -> bool:
    return blocks(recorded.last_failure, observed.generation, observed.retry_token)


def verified(recorded: Recorded, revision: str, generation: int, checks: str = "") -> bool:
    """The release check of ``revision`` passed for this generation, or for an earlier one
    with the same ``checks`` (the same tests of the same pod template: a new replica count
    is no new release). ``lastSmokeTest`` for the desired revision, ``rollbackCheck`` for the
    rollback target."""
    return any(smoke.get("revision") == revision and smoke.get("outcome") == "Passed"
               and (smoke.get("generation") == generation
                    or (bool(checks) and smoke.get("checks") == checks))
               for smoke in recorded.checks())


def could_not_test_count(recorded: Recorded, revision: str, generation: int) -> int:
    for smoke in recorded.checks():
        if smoke.get("revision") == revision and smoke.get("generation") == generation and \
                smoke.get("outcome") == "Error":
            return int(smoke.get("attempts") or 1)
    return 0


def retry_delay(tries: int) -> float:
    """Back-off before the next "could not test" try."""
    return COULD_NOT_TEST_DELAYS[min(tries, len(COULD_NOT_TEST_DELAYS)) - 1]


def _transition(recorded: Recorded, phase: str, *events: Event) -> tuple[Event, ...]:
    """Events only on a change of phase: a resync of an unchanged object says nothing."""
    return events if recorded.phase != phase else ()


def decide(recorded: Recorded, observed: Observed) -> Decision:
    if is_blocked(recorded, observed):
        return _after_failure(recorded, observed, recorded.last_failure or {})
    decision = _pursue_desired(recorded, observed)
    if recorded.desired_revision != observed.desired and decision.phase != "Progressing":
        # The rollout of this revision was never recorded: the status write that follows a
        # new revision's children (applied first, one round trip sooner) failed, and the
        # Deployment was already on it when the next look came, which found the release
        # verifying or already failed. Its Progressing is announced with what came of it.
        started = Event("Normal", PROGRESSING, f"rolling out revision {observed.desired} "
                                               f"({observed.desired_label})")
        decision = dataclasses.replace(decision, events=(started, *decision.events))
    return decision


# --------------------------------------------------------------------------------------------
# The desired revision is allowed: roll it out, verify it, or fail it.


def _pursue_desired(recorded: Recorded, observed: Observed) -> Decision:
    desired = observed.desired
    new_rollout = recorded.desired_revision != desired
    if observed.deployment_revision != desired:
        message = f"rolling out revision {desired} ({observed.desired_label})"
        return _progressing(recorded, observed, "apply-desired", message, announce=True)
    if verified(recorded, desired, observed.generation, observed.checks):
        # Verified stays verified: a scale-up, a drained node or a restarted container brings
        # pods that wait behind their readiness gates for their own tests, and one that fails
        # them stays out of traffic (the controller says so), but the revision is not released
        # again, nor reverted. The same words as when the verdict was recorded: a later
        # reconcile changes nothing.
        return _ready(recorded, observed, str((recorded.last_smoke or {}).get("message")
                                              or "revision verified earlier"))
    if observed.pod_problem is not None:
        return _fail(recorded, observed, observed.pod_problem.reason, observed.pod_problem.message)
    pod_verdict = observed.pod_verdict
    if pod_verdict is not None and pod_verdict.revision == desired:
        if pod_verdict.outcome == "Failed":
            return _fail(recorded, observed, pod_verdict.reason or SMOKE_TEST_FAILED,
                         pod_verdict.message)
        if pod_verdict.outcome == "Error":
            return _not_run(recorded, observed, pod_verdict.message)
    state = observed.rollout or rollout.RolloutStatus("Progressing", PROGRESSING,
                                                      "waiting for the Deployment")
    if state.state == "Failed":
        return _fail(recorded, observed, DEADLINE, state.message)
    if state.state == "Progressing":
        return _progressing(recorded, observed, "wait", state.message, announce=new_rollout)
    smoke = observed.smoke
    if smoke is None or smoke.revision != desired:
        return _verifying(recorded, observed, desired)
    if smoke.outcome == "Passed":
        return _ready(recorded, observed, smoke.message, record=True)
    if smoke.outcome == "Failed":
        return _fail(recorded, observed, SMOKE_TEST_FAILED, smoke.message)
    tries = could_not_test_count(recorded, desired, observed.generation) + 1
    if tries >= COULD_NOT_TEST_LIMIT:
        return _not_run(recorded, observed,
                        f"could not run the smoke tests {tries} times: {smoke.message}")
    decision = _verifying(recorded, observed, desired,
                          message=f"could not test yet ({tries} of {COULD_NOT_TEST_LIMIT}): "
                                  f"{smoke.message}")
    return dataclasses.replace(decision, action="wait", requeue_after=retry_delay(tries))


def _progressing(recorded: Recorded, observed: Observed, action: Action, message: str,
                 *, announce: bool) -> Decision:
    events = (Event("Normal", PROGRESSING, message),) if announce or \
        recorded.phase != "Progressing" else ()
    return Decision(
        phase="Progressing",
        action=action,
        conditions=_conds(ready=Cond(False, PROGRESSING, message),
                          reconciling=Cond(True, PROGRESSING, message),
                          stalled=_no_failure(observed, "is rolling out"),
                          rolled_back=_not_rolled_back(observed, "is rolling out")),
        events=events,
        serving=observed.desired,
    )


def _verifying(recorded: Recorded, observed: Observed, revision: str,
               message: str | None = None) -> Decision:
    message = message or f"running the smoke tests against revision {revision}"
    return Decision(
        phase="Verifying",
        action="verify",
        verify_revision=revision,
        conditions=_conds(ready=Cond(False, VERIFYING, message),
                          reconciling=Cond(True, VERIFYING, message),
                          stalled=_no_failure(observed, "is being verified"),
                          rolled_back=_not_rolled_back(observed, "is being verified")),
        events=_transition(recorded, "Verifying", Event("Normal", VERIFYING, message)),
        serving=observed.desired,
    )


def _ready(recorded: Recorded, observed: Observed, detail: str, *,
           record: bool = False) -> Decision:
    message = f"revision {observed.desired} ({observed.desired_label}) is rolled out and " \
              f"verified: {detail}"
    events: tuple[Event, ...] = ()
    if record:
        events = (Event("Normal", VERIFIED,
                        f"{message}; it is now the rollback target"),)
    return Decision(
        phase="Ready",
        action="none",
        conditions=_conds(ready=Cond(True, VERIFIED, message),
                          reconciling=Cond(False, VERIFIED, message),
                          stalled=_no_failure(observed, "is verified"),
                          rolled_back=_not_rolled_back(observed, "serves")),
        events=events,
        clear_failure=True,
        record_target=record,
        serving=observed.desired,
    )


def _fail(recorded: Recorded, observed: Observed, reason: str, message: str) -> Decision:
    desired = observed.desired
    failure = {
        "revision": desired,
        "generation": observed.generation,
        "reason": reason,
        "message": message,
        "retryToken": observed.retry_token,
    }
    what = f"revision {desired} ({observed.desired_label}) failed: {message}"
    target = observed.target
    if observed.automatic and target and target != desired:
        revert = f"reverting to the rollback target, revision {target} ({observed.target_label})"
        return Decision(
            phase="RollingBack",
            action="apply-target",
            conditions=_rolling_back_conds(reason, what, revert),
            events=(Event("Warning", reason, what), Event("Warning", ROLLING_BACK, revert)),
            failure=failure,
            serving=target,
        )
    why = what + _no_revert(observed)
    return Decision(
        phase="Failed",
        action="none",
        conditions=_conds(ready=Cond(False, reason, why),
                          reconciling=Cond(False, reason, why),
                          stalled=Cond(True, reason, why),
                          rolled_back=_no_revert_cond(observed)),
        events=(Event("Warning", reason, why),),
        failure=failure,
        serving=observed.deployment_revision,
    )


def _no_revert(observed: Observed) -> str:
    """Why a failed release is not reverted, as the end of its message."""
    if not observed.automatic:
        return "; automatic rollback is disabled (spec.rollback.automatic: false)"
    if observed.target and observed.target == observed.desired:
        # The same pod template as the verified release (only the tests or other settings
        # changed): there is nothing else to go back to, and its pods, verified by the earlier
        # tests, keep serving.
        earlier = f" for generation {observed.target_generation}" \
            if observed.target_generation is not None else ""
        return (f"; it is the rollback target itself (verified{earlier} with the smoke tests "
                "of then), so there is nothing else to revert to: its pods keep serving; fix "
                "the smoke tests or the model")
    return "; there is no verified revision to roll back to (first release)"


def _no_revert_cond(observed: Observed) -> Cond:
    """RolledBack=False for a failure that nothing is reverted to: why not."""
    return Cond(False, NO_ROLLBACK_TARGET if observed.automatic else ROLLBACK_DISABLED,
                _no_revert(observed).removeprefix("; "))


def _no_failure(observed: Observed, doing: str) -> Cond:
    return Cond(False, NO_FAILURE, f"nothing has failed: revision {observed.desired} {doing}")


def _not_rolled_back(observed: Observed, doing: str) -> Cond:
    return Cond(False, NOT_ROLLED_BACK,
                f"revision {observed.desired}, the one the spec renders to, {doing}")


def _rolling_back_conds(reason: str, what: str, revert: str) -> dict[str, Cond]:
    """A failure being handled: Stalled (the spec's revision will not be reached by itself),
    not Reconciling (the work under way leads away from the spec, not towards it). Never both
    True: kstatus takes whichever of the two comes first in the list, Argo CD's check reads
    Stalled first; with one of them True, both say Failed/Degraded, in any order."""
    return _conds(ready=Cond(False, reason, what),
                  reconciling=Cond(False, ROLLING_BACK, revert),
                  stalled=Cond(True, reason, f"{what}; {revert}"),
                  rolled_back=Cond(False, ROLLING_BACK, revert))


NOT_REVERTED = ("; not reverted: Slipway could not reach the pods, which says nothing about "
                "the release (check the NetworkPolicy, the port, the API server's proxy)")


def _not_run(recorded: Recorded, observed: Observed, message: str) -> Decision:
    """Could not test, however often tried: stop and say so, but revert nothing. The operator's
    own reach (a NetworkPolicy, a partition) is no verdict on the model."""
    failure = {
        "revision": observed.desired,
        "generation": observed.generation,
        "reason": SMOKE_TESTS_NOT_RUN,
        "message": message,
        "retryToken": observed.retry_token,
    }
    why = f"revision {observed.desired} ({observed.desired_label}) is not verified: " \
          f"{message}{NOT_REVERTED}"
    return dataclasses.replace(_stopped(recorded, observed, SMOKE_TESTS_NOT_RUN, why,
                                        rolled_back=_not_reverted()),
                               failure=failure,
                               events=(Event("Warning", SMOKE_TESTS_NOT_RUN, why),))


# --------------------------------------------------------------------------------------------
# The desired revision failed for this generation: serve the rollback target, or stay Failed.


def _after_failure(recorded: Recorded, observed: Observed,
                   failure: dict[str, Any]) -> Decision:
    desired = observed.desired
    reason = str(failure.get("reason") or SMOKE_TEST_FAILED)
    what = f"revision {desired} ({observed.desired_label}) failed: {failure.get('message', '')}"
    hint = f"; change the spec or set the {RETRY_ANNOTATION} annotation to try it again"
    target = observed.target
    if failure.get("rollbackFailed"):
        message = str(failure.get("rollbackMessage") or "")
        return _stopped(recorded, observed, ROLLBACK_FAILED, message + hint,
                        rolled_back=Cond(False, ROLLBACK_FAILED, message))
    if reason == SMOKE_TESTS_NOT_RUN:
        what = f"revision {desired} ({observed.desired_label}) is not verified: " \
               f"{failure.get('message', '')}{NOT_REVERTED}"
        return _stopped(recorded, observed, reason, what + hint, rolled_back=_not_reverted())
    if not (observed.automatic and target and target != desired):
        return _stopped(recorded, observed, reason, what + _no_revert(observed) + hint,
                        rolled_back=_no_revert_cond(observed))

    revert = f"reverting to the rollback target, revision {target} ({observed.target_label})"
    rolling_back = dict(
        phase="RollingBack",
        conditions=_rolling_back_conds(reason, what + hint, revert),
        serving=target,
    )
    if observed.deployment_revision != target:
        return Decision(action="apply-target",
                        events=_transition(recorded, "RollingBack",
                                           Event("Warning", ROLLING_BACK, revert)),
                        **rolling_back)  # type: ignore[arg-type]
    state = observed.rollout or rollout.RolloutStatus("Progressing", PROGRESSING, "")
    if observed.pod_problem is not None:
        return _rollback_failed(recorded, observed, failure, observed.pod_problem.message)
    pod_verdict = observed.pod_verdict
    if pod_verdict is not None and pod_verdict.revision == target and \
            not verified(recorded, target, observed.generation):
        # A pod the revert brought up failed behind its gate (the old ones had gone).
        return _rollback_failed(recorded, observed, failure, pod_verdict.message)
    if state.state == "Failed":
        return _rollback_failed(recorded, observed, failure, state.message)
    if state.state == "Progressing":
        return Decision(action="wait", events=(), **rolling_back)  # type: ignore[arg-type]
    if verified(recorded, target, observed.generation):
        return _rolled_back(recorded, observed, failure, what + hint)
    smoke = observed.smoke
    if smoke is None or smoke.revision != target:
        return Decision(action="verify", verify_revision=target, events=(),
                        **rolling_back)  # type: ignore[arg-type]
    if smoke.outcome == "Passed":
        return _rolled_back(recorded, observed, failure, what + hint)
    if smoke.outcome == "Failed":
        return _rollback_failed(recorded, observed, failure, smoke.message)
    tries = could_not_test_count(recorded, target, observed.generation) + 1
    if tries >= COULD_NOT_TEST_LIMIT:
        return _rollback_failed(recorded, observed, failure,
                                f"could not run its smoke tests {tries} times: {smoke.message}")
    return Decision(action="wait", events=(), requeue_after=retry_delay(tries),
                    **rolling_back)  # type: ignore[arg-type]


def _rolled_back(recorded: Recorded, observed: Observed, failure: dict[str, Any],
                 what: str) -> Decision:
    target = observed.target
    message = f"rolled back: revision {target} ({observed.target_label}) serves in place of " \
              f"revision {observed.desired}, verified again by its smoke tests; {what}"
    reason = str(failure.get("reason") or SMOKE_TEST_FAILED)
    return Decision(
        phase="RolledBack",
        action="none",
        conditions=_conds(ready=Cond(False, reason, what),
                          reconciling=Cond(False, ROLLED_BACK, message),
                          stalled=Cond(True, reason, message),
                          rolled_back=Cond(True, reason, message)),
        events=_transition(recorded, "RolledBack", Event("Normal", ROLLED_BACK, message)),
        serving=target,
    )


def _rollback_failed(recorded: Recorded, observed: Observed, failure: dict[str, Any],
                     detail: str) -> Decision:
    message = f"the rollback target, revision {observed.target} ({observed.target_label}), " \
              f"failed too: {detail}; Slipway stops here instead of oscillating"
    updated = {**failure, "rollbackFailed": True, "rollbackMessage": message}
    decision = _stopped(recorded, observed, ROLLBACK_FAILED,
                        message + f"; fix the spec or set the {RETRY_ANNOTATION} annotation",
                        rolled_back=Cond(False, ROLLBACK_FAILED, message))
    return dataclasses.replace(decision, failure=updated,
                               events=(Event("Warning", ROLLBACK_FAILED, message),))


def _not_reverted() -> Cond:
    return Cond(False, NOTHING_REVERTED, "nothing was reverted: the smoke tests could not be run, "
                                     "which says nothing about the release")


def _stopped(recorded: Recorded, observed: Observed, reason: str, message: str, *,
             rolled_back: Cond) -> Decision:
    return Decision(
        phase="Failed",
        action="none",
        conditions=_conds(ready=Cond(False, reason, message),
                          reconciling=Cond(False, reason, message),
                          stalled=Cond(True, reason, message),
                          rolled_back=rolled_back),
        events=_transition(recorded, "Failed", Event("Warning", reason, message)),
        serving=observed.deployment_revision,
    )


def _conds(*, ready: Cond, reconciling: Cond, stalled: Cond,
           rolled_back: Cond) -> dict[str, Cond]:
    return {conditions.READY: ready, conditions.RECONCILING: reconciling,
            conditions.STALLED: stalled, conditions.ROLLED_BACK: rolled_back}


# --------------------------------------------------------------------------------------------
# Observing pods: crash loops and image pulls, with their bounds.


@dataclasses.dataclass(frozen=True)
class PodCheck:
    problem: PodProblem | None
    recheck_after: float | None = None


def fetch_failure(pod: dict[str, Any]) -> PodProblem | None:
    """The fetch init container's failure, from its first non-zero exit on (no waiting for a
    crash loop: a digest that does not match will not match on a retry, and an artifact that
    cannot be fetched fails the release in seconds rather than at the progress deadline)."""
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status.get("name") != FETCH_CONTAINER:
            continue
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            ended = state.get("terminated") or {}
            if not ended or int(ended.get("exitCode") or 0) == 0:
                continue
            message = str(ended.get("message") or "").strip()
            first = message.split(":", 1)[0]
            if first in (ARTIFACT_DIGEST_MISMATCH, ARTIFACT_FETCH_FAILED):
                reason, detail = first, message.split(":", 1)[1].strip()
            else:
                reason = ARTIFACT_FETCH_FAILED
                detail = f"exit code {ended.get('exitCode')}" + \
                    (f": {message[-300:]}" if message else "")
            return PodProblem(reason, f"pod {pod['metadata']['name']}: the artifact fetch "
                              f"failed: {detail[:700]}")
    return None


def check_pods(pods: list[dict[str, Any]], revision: str, now: float) -> PodCheck:
    """Look at the pods of ``revision`` for a failed artifact fetch, a crash loop or an image
    that cannot be pulled (init containers and containers alike)."""
    recheck: float | None = None
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        meta = pod["metadata"]
        if (meta.get("labels") or {}).get("slipway.dev/revision") != revision or \
                meta.get("deletionTimestamp"):
            continue
        fetch = fetch_failure(pod)
        if fetch is not None:
            return PodCheck(fetch)
        pod_status = pod.get("status") or {}
        for status in [*(pod_status.get("initContainerStatuses") or []),
                       *(pod_status.get("containerStatuses") or [])]:
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            restarts = int(status.get("restartCount") or 0)
            if reason == "CrashLoopBackOff" and restarts >= CRASHLOOP_RESTARTS:
                last = (status.get("lastState") or {}).get("terminated") or {}
                detail = f"exit code {last.get('exitCode')}" if last else "no exit code"
                if last.get("message"):
                    detail += f": {str(last['message']).strip()[-300:]}"
                return PodCheck(PodProblem(
                    CRASH_LOOP,
                    f"pod {meta['name']} container {status.get('name')} is in CrashLoopBackOff "
                    f"after {restarts} restarts (last {detail})"))
            if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                age = now - _timestamp(meta.get("creationTimestamp"))
                if reason == "InvalidImageName" or age >= IMAGE_PULL_GRACE_SECONDS:
                    return PodCheck(PodProblem(
                        IMAGE_PULL_FAILED,
                        f"pod {meta['name']} cannot pull image {status.get('image')}: {reason}: "
                        f"{waiting.get('message', '')}".rstrip(": ")))
                wait = IMAGE_PULL_GRACE_SECONDS - age + 0.5
                recheck = wait if recheck is None else min(recheck, wait)
    return PodCheck(None, recheck)


def _timestamp(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
