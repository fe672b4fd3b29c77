"""Kills at every decision point: the operator is SIGKILLed right after the status write that
enters each phase a decision can enter (``lifecycle.DECIDED_PHASES``), and right after a pod's
readiness gate is written, then started again.

Each run must converge to the right end state with one verdict per revision in
``status.history``, at most one revert, every Event of the story exactly once (the ones decided
before the kill included: the outbox in ``status.announcements`` holds them), and the
restarted operator counting in its metrics what it announced for its predecessor.

The kill comes from the operator itself (``SLIPWAY_CRASH_AFTER``, scoped to the test's
namespace), so it lands exactly between the write and what follows it, every run.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import pytest

from slipway.logic import lifecycle
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import IMAGE, V1, V2_WRONG_MODEL_PATH, Story

GOOD = [("Normal", "Progressing"), ("Normal", "Verifying"), ("Normal", "Verified")]
BAD_FIRST = [("Normal", "Progressing"), ("Warning", "SmokeTestFailed")]
BAD_AFTER_V1 = [("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
                ("Warning", "RollingBack"), ("Normal", "RolledBack")]


# point → (story, end phase, the announcement the killed operator left for its successor,
#          the metric sample the successor must then count once)
STORIES: dict[str, tuple[str, str, str | None, tuple[str, dict[str, str]]]] = {
    "status:Progressing": ("good", "Ready", "Progressing",
                           ("slipway_rollouts_total", {"result": "Verified",
                                                       "reason": "Verified"})),
    "status:Verifying": ("good", "Ready", "Verifying",
                         ("slipway_rollouts_total", {"result": "Verified",
                                                     "reason": "Verified"})),
    "status:Ready": ("good", "Ready", "Verified",
                     ("slipway_rollouts_total", {"result": "Verified", "reason": "Verified"})),
    "gate": ("good", "Ready", None,
             ("slipway_rollouts_total", {"result": "Verified", "reason": "Verified"})),
    "status:Failed": ("bad-first", "Failed", "SmokeTestFailed",
                      ("slipway_rollouts_total", {"result": "Failed",
                                                  "reason": "SmokeTestFailed"})),
    "status:RollingBack": ("bad-after-v1", "RolledBack", "RollingBack",
                           ("slipway_reverts_total", {"reason": "SmokeTestFailed"})),
    "status:RolledBack": ("bad-after-v1", "RolledBack", "RolledBack",
                          ("slipway_rollouts_total", {"result": "RolledBack",
                                                      "reason": "RolledBack"})),
}
POINTS = [f"status:{phase}" for phase in lifecycle.DECIDED_PHASES] + ["gate"]


def test_every_kill_point_has_a_story() -> None:
    assert set(POINTS) == set(STORIES), "a new decision point needs a kill story here"


@pytest.fixture
def story(kubectl: Kubectl, operator: Operator, namespace: str) -> Story:
    return Story(kubectl, operator, namespace)


def _killed_at(story: Story, point: str) -> dict[str, Any]:
    """Wait until the operator killed itself at ``point``; the object as it left it."""
    process = story.operator.process
    assert process is not None
    wait_until(lambda: process.poll() is not None, timeout=180,
               what=f"the operator to be killed at {point}", diagnose=story.diagnose)
    assert process.returncode == -9, story.operator.tail()
    return story.md()


@pytest.mark.parametrize("point", POINTS)
def test_killed_right_after_a_decision_point_it_converges_and_announces_each_once(
    story: Story, point: str,
) -> None:
    kind, end, left, (metric, labels) = STORIES[point]
    crash = {"SLIPWAY_CRASH_AFTER": f"{point}@{story.namespace}"}
    if kind == "bad-after-v1":
        story.given_v1_is_ready()
    # Given an operator that will be killed right after that write of this namespace's object
    story.operator.kill()
    story.operator.start(env=crash)
    started = time.monotonic()
    # When the release is applied and the operator dies at that point
    story.apply(V1 if kind == "good" else V2_WRONG_MODEL_PATH)
    at_kill = _killed_at(story, point)
    status = at_kill.get("status") or {}
    if point.startswith("status:"):
        assert status.get("phase") == point.removeprefix("status:")
    if left is not None:
        # The decision was recorded with its announcement, which was never posted
        assert left in [a["reason"] for a in status.get("announcements") or []], status
        assert left not in [e["reason"] for e in story.md_events()[story.seen:]]
    # And it is started again
    story.operator.start()
    # Then it converges to the right end state, with nothing left to announce
    md = story.wait_phase(end, timeout=180)
    wait_until(lambda: not (story.md().get("status") or {}).get("announcements"), timeout=30,
               what="an empty outbox", diagnose=story.diagnose)
    expected = {"good": GOOD, "bad-first": BAD_FIRST, "bad-after-v1": BAD_AFTER_V1}[kind]
    story.expect_events(expected, settle=3)
    # One verdict per revision, at most one revert
    history = md["status"].get("history") or []
    verdicts = collections.Counter((h["revision"], h["outcome"]) for h in history)
    assert all(n == 1 for n in verdicts.values()), history
    if kind == "bad-after-v1":
        assert [h["outcome"] for h in history] == ["Verified", "Failed", "RolledBack"]
        assert story.serving_image() == f"{IMAGE}:1.0.0"
        replica_sets = story.kubectl.get("replicasets", namespace=story.namespace)["items"]
        assert len(replica_sets) == 2  # v1's and v2's: the revert reused v1's
    elif kind == "good":
        assert [h["outcome"] for h in history] == ["Verified"]
        assert md["status"]["rollbackTarget"]["revision"] == md["status"]["currentRevision"]
        revisions = story.kubectl.get("controllerrevisions",
                                      namespace=story.namespace)["items"]
        assert len(revisions) == 1  # the target's, created after the restart if need be
    else:
        assert [h["outcome"] for h in history] == ["Failed"]
    # And the restarted operator counted, once, what it announced
    wait_until(lambda: story.operator.metric(metric, **labels) >= 1, timeout=30,
               what=f"{metric}{labels} counted", diagnose=story.diagnose)
    assert story.operator.metric(metric, **labels) == 1
    print(f"\n{point}: converged {time.monotonic() - started:.1f} s after the apply")
