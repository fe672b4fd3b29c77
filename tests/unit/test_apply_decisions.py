"""Children are written only when the live object differs from what Slipway renders."""

from __future__ import annotations

import contextvars
import copy
import threading
import time
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from slipway.clients import cache, kube
from slipway.engine import controller
from slipway.logic import lifecycle, render, rollout
from tests.conftest import EXAMPLES

DESIRED = {
    "metadata": {"name": "iris", "namespace": "ns", "labels": {"slipway.dev/model-deployment":
                                                               "iris"}},
    "spec": {"replicas": 2, "template": {"spec": {"containers": [{
        "name": "model-server", "image": "img:1",
        "resources": {"limits": {"cpu": "1000m", "memory": "1Gi"}},
        "ports": [{"containerPort": 8080}],
    }]}}},
}


def live_copy() -> dict:
    live = copy.deepcopy(DESIRED)
    live["metadata"]["resourceVersion"] = "42"
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["cpu"] = "1"  # the API server's canonical form
    container["terminationMessagePath"] = "/dev/termination-log"  # a server default
    live["status"] = {"replicas": 2}
    return live


def test_server_defaults_and_canonical_quantities_are_not_drift() -> None:
    assert not kube.needs_write(DESIRED, live_copy())


def test_a_zero_the_server_omits_is_not_drift() -> None:
    desired = copy.deepcopy(DESIRED)
    desired["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {
        "initialDelaySeconds": 0, "periodSeconds": 5}
    live = live_copy()
    live["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"periodSeconds": 5}
    assert not kube.needs_write(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"periodSeconds": 9}
    assert kube.needs_write(desired, live)


def test_a_changed_image_is_drift() -> None:
    live = live_copy()
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "img:hacked"
    assert kube.needs_write(DESIRED, live)


def test_an_extra_list_item_is_drift() -> None:
    live = live_copy()
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert kube.needs_write(DESIRED, live)


def test_a_missing_child_needs_a_write() -> None:
    assert kube.needs_write(DESIRED, None)


def test_applied_hash_changes_when_a_field_is_removed_from_the_rendering() -> None:
    smaller = copy.deepcopy(DESIRED)
    del smaller["spec"]["replicas"]
    assert kube.applied_hash(smaller) != kube.applied_hash(DESIRED)
    live = live_copy()
    live["metadata"]["annotations"][kube.APPLIED_HASH] = kube.applied_hash(DESIRED)
    # Without the hash, the smaller object would look like a subset and the stale field stay.
    assert kube.needs_write(kube.with_applied_hash(smaller), live)
    assert not kube.needs_write(kube.with_applied_hash(DESIRED), live)


def test_refuses_to_adopt_an_object_owned_by_another_controller() -> None:
    desired = copy.deepcopy(DESIRED)
    desired["metadata"]["ownerReferences"] = [{"uid": "mine", "controller": True}]
    live = live_copy()
    live["kind"] = "Deployment"
    live["metadata"]["ownerReferences"] = [{"uid": "theirs", "controller": True,
                                            "kind": "HelmRelease", "name": "x"}]
    with pytest.raises(kube.ChildConflict, match="controlled by HelmRelease x"):
        kube.check_ownership(desired, live)


def test_refuses_to_adopt_an_unlabelled_stranger_but_adopts_its_own_orphan() -> None:
    desired = copy.deepcopy(DESIRED)
    desired["metadata"]["ownerReferences"] = [{"uid": "mine", "controller": True}]
    stranger = live_copy()
    stranger["metadata"]["labels"] = {}
    with pytest.raises(kube.ChildConflict, match="not managed by Slipway"):
        kube.check_ownership(desired, stranger)
    kube.check_ownership(desired, live_copy())  # orphan with our label: adopted


def test_status_patch_is_none_when_nothing_changed() -> None:
    status = {"phase": "Ready", "conditions": [{"type": "Ready"}]}
    assert controller.status_patch(status, dict(status)) is None
    assert controller.status_patch(status, {"phase": "Failed"}) == {"phase": "Failed",
                                                                    "conditions": None}


def test_composed_status_is_stable_across_identical_reconciles() -> None:
    state = rollout.RolloutStatus("Complete", "RolloutComplete", "2 of 2", 2, 2)
    observed = lifecycle.Observed(generation=3, desired="abc", desired_label="model m 1",
                                  deployment_revision="abc", rollout=state)
    decision = lifecycle.decide(lifecycle.Recorded(), observed)
    first = controller._compose({}, decision, observed, state)
    second = controller._compose(first, decision, observed, state)
    assert controller.status_patch(first, second) is None
    assert first["observedGeneration"] == 3 and first["desiredRevision"] == "abc"


def test_invalid_spec_becomes_stalled_with_one_warning_per_generation() -> None:
    body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 4,
                         "resourceVersion": "41"},
            "spec": {"model": {"name": "iris"}}}
    written: list[dict] = []
    decided_on: list[str | None] = []
    posted: list[controller.Event] = []

    def write(namespace: str, name: str, patch: dict, version: str | None) -> str:
        written.append(patch)
        decided_on.append(version)
        return str(int(version or 0) + 1)

    first = controller.reconcile(body, posted.append, write)
    assert first.status["phase"] == "Invalid"
    assert written and written[0]["phase"] == "Invalid"
    # The Warning is recorded with the decision (the outbox), posted, then the outbox emptied
    assert [(a["type"], a["reason"]) for a in written[0]["announcements"]] == \
        [("Warning", "InvalidSpec")]
    assert written[1] == {"announcements": None} and "announcements" not in first.status
    # each write carries the copy it was decided on: the write's precondition
    assert decided_on == ["41", "42"]
    stalled = [c for c in first.status["conditions"] if c["type"] == "Stalled"][0]
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"
    assert "spec.model.version" in stalled["message"]
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "InvalidSpec")]
    again = controller.reconcile({**body, "status": first.status}, posted.append, write)
    assert again.events == [] and len(written) == 2 and len(posted) == 1
    assert controller.status_patch(first.status, again.status) is None


def test_coalescer_runs_once_more_for_events_that_arrive_during_a_run() -> None:
    import threading

    coalescer = controller.Coalescer()
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def slow() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            started.set()
            release.wait(5)

    worker = threading.Thread(target=coalescer.run, args=(("ns", "md"), slow))
    worker.start()
    started.wait(5)
    # Three events while the first run is busy: none blocks, and they fold into one more run.
    assert [coalescer.run(("ns", "md"), slow) for _ in range(3)] == [False, False, False]
    assert coalescer.run(("ns", "other"), lambda: None) is True  # other objects are not held up
    release.set()
    worker.join(5)
    assert runs == [0, 1]


def test_a_request_that_comes_as_a_run_ends_is_never_lost() -> None:
    """The race a cluster run met: a verdict's wake-up came just as the object's reconcile
    ended, between its last look at the dirty mark and its leaving; it was dropped, and the
    pod's gate stayed closed until the progress deadline."""
    import threading

    class Lock:
        """A lock that runs a hook (once) right after a release: a thread switch there."""

        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.after_release: Any = None

        def __enter__(self) -> None:
            self.inner.acquire()

        def __exit__(self, *_: object) -> None:
            self.inner.release()
            hook, self.after_release = self.after_release, None
            if hook is not None:
                hook()

    coalescer = controller.Coalescer()
    lock = Lock()
    coalescer._lock = lock  # type: ignore[assignment]
    runs: list[str] = []

    def reconcile() -> None:
        runs.append("run")
        if len(runs) == 1:  # the verdict's wake-up, as the run checks whether to go again
            lock.after_release = lambda: coalescer.run(("ns", "md"), reconcile)

    assert coalescer.run(("ns", "md"), reconcile) is True
    assert runs == ["run", "run"], "the request that came at the end was dropped"
    assert coalescer.run(("ns", "md"), lambda: None) is True  # nothing left held


def test_a_stall_after_a_status_written_mid_reconcile_is_not_a_new_cause() -> None:
    # Given a ModelDeployment already stalled on ApplyFailed for this generation
    body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 2},
            "spec": {"model": {"name": "iris"}}}
    first = controller.Reconciler(body, lambda e: None, lambda *a: None).stall(
        "ApplyFailed", "the API server rejected a child: 403", "Failed")
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ApplyFailed")]
    # When the next reconcile writes Progressing first and then fails the same way
    posted: list[controller.Event] = []
    written: list[dict] = []
    again = controller.Reconciler({**body, "status": first.status}, posted.append,
                                  lambda ns, name, patch, version: written.append(patch))
    again.write({**first.status, "phase": "Progressing", "conditions": []})
    outcome = again.stall("ApplyFailed", "the API server rejected a child: 403", "Failed",
                          recheck_after=7)
    # Then no second Warning, the status ends as it began, and the recheck is asked for
    assert posted == [] and outcome.events == []
    assert controller.status_patch(first.status, outcome.status) is None
    assert outcome.requeue_after == 7
    # But a different cause, or a new generation, is a new Warning
    other = controller.Reconciler({**body, "status": first.status}, posted.append,
                                  lambda *a: None).stall("ChildConflict", "Service iris", "Failed")
    newer = controller.Reconciler({**body, "metadata": {**body["metadata"], "generation": 3},
                                   "status": first.status}, posted.append, lambda *a: None
                                  ).stall("ApplyFailed", "the API server rejected a child: 403",
                                          "Failed")
    assert [e.reason for e in other.events + newer.events] == ["ChildConflict", "ApplyFailed"]


# --------------------------------------------------------------------------------------------
# The rollback target: only ever a revision recorded as verified


def controller_revision(name: str, revision: str, *, verified: bool, number: int,
                        uid: str = "md-uid") -> dict:
    spec = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())["spec"]
    labels = {"slipway.dev/revision": revision, render.LABEL_OWNER: "iris",
              render.LABEL_MANAGED_BY: render.MANAGER}
    if verified:
        labels[controller.VERIFIED_LABEL] = "true"
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"cr-{name}",
                         "resourceVersion": str(number), "labels": labels,
                         "ownerReferences": [{"uid": uid, "controller": True}]},
            "revision": number, "data": {"spec": spec, "podTemplate": {}, "generation": 1}}


class Revisions:
    """ControllerRevisions as the watch put them in the informer cache."""

    def __init__(self, store: cache.Store) -> None:
        self.store = store

    def __iadd__(self, items: list[dict]) -> Revisions:
        for item in items:
            self.store.put(cache.CONTROLLER_REVISION, item)
        return self

    def append(self, item: dict) -> None:
        self.store.put(cache.CONTROLLER_REVISION, item)

    def replace(self, items: list[dict]) -> None:
        self.store.clear()
        self += items


@pytest.fixture
def revisions(monkeypatch: pytest.MonkeyPatch) -> Revisions:
    store = cache.Store()
    monkeypatch.setattr(cache, "STORE", store)
    return Revisions(store)


META = render.Meta(name="iris", namespace="ns", uid="md-uid", generation=2)


def test_a_lost_target_falls_back_only_to_a_revision_recorded_as_verified(
        revisions: Revisions) -> None:
    # An older verified one, then one created before its verdict was recorded (an older
    # operator could leave that behind after a crash): the fallback is the verified one.
    revisions += [controller_revision("iris-old", "old", verified=True, number=1),
                  controller_revision("iris-new", "new", verified=False, number=2)]
    target = controller.load_target(META, {})
    assert target is not None and target.revision == "old"
    # Status history naming a revision as Verified counts as recorded too.
    target = controller.load_target(META, {"history": [{"revision": "new",
                                                        "outcome": "Verified"}]})
    assert target is not None and target.revision == "new"
    # Nothing recorded as verified: no target at all, rather than an unverified one.
    revisions.replace([controller_revision("iris-new", "new", verified=False, number=2)])
    assert controller.load_target(META, {}) is None


def test_a_revision_owned_by_another_object_is_never_a_target(revisions: Revisions) -> None:
    revisions.append(controller_revision("iris-x", "x", verified=True, number=1, uid="other"))
    assert controller.load_target(META, {}) is None


def test_the_recorded_target_is_read_by_name(revisions: Revisions) -> None:
    revisions += [controller_revision("iris-a", "a", verified=True, number=1),
                  controller_revision("iris-b", "b", verified=True, number=2)]
    target = controller.load_target(META, {"rollbackTarget": {"revision": "a",
                                                              "controllerRevision": "iris-a"}})
    assert target is not None and (target.revision, target.generation) == ("a", 1)


def test_progress_is_folded_into_a_later_write_but_decisions_go_out_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "PROGRESS", controller.ProgressFold(fold_seconds=0.3))
    condition = {"type": "Ready", "status": "False", "reason": "Progressing",
                 "observedGeneration": 2, "message": "rolling out"}
    status = {"phase": "Progressing", "readyReplicas": 0, "conditions": [condition]}
    body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 2}, "status": status}
    written: list[dict] = []

    def reconciler() -> controller.Reconciler:
        return controller.Reconciler(body, lambda e: None,
                                     lambda ns, name, patch, version: written.append(patch))

    # Given a status write just made
    first = reconciler()
    first.write({**status, "readyReplicas": 1})
    assert len(written) == 1 and first.progress_due is None
    # When a count and a message change right after: held back, with a look again due
    progress = {**first.written, "readyReplicas": 2,
                "conditions": [{**condition, "message": "1 of 2 updated replicas"}]}
    held = reconciler()
    held.write(progress)
    assert len(written) == 1
    assert held.progress_due is not None and 0 < held.progress_due <= 0.3
    # But a decision in the same window is written at once, and carries the progress along
    decision = {**progress, "phase": "Verifying",
                "conditions": [{**condition, "reason": "Verifying"}]}
    reconciler().write(decision)
    assert len(written) == 2
    assert written[1]["phase"] == "Verifying" and written[1]["readyReplicas"] == 2
    # And once the window has passed, progress alone is written too
    time.sleep(0.35)
    later = reconciler()
    later.write({**status, "readyReplicas": 2})
    assert len(written) == 3 and later.progress_due is None


def test_a_new_objects_two_children_go_out_at_once_and_errors_come_back() -> None:
    # Each side waits for the other at a barrier: done one after the other, both time out.
    barrier = threading.Barrier(2, timeout=5)
    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="")
    tag.set("reconcile of ns/iris")  # kopf's logging context travels with the second call

    def side(name: str) -> tuple[str, str]:
        barrier.wait()
        return name, tag.get()

    assert controller.at_once(lambda: side("deployment"), lambda: side("service")) == (
        ("deployment", "reconcile of ns/iris"), ("service", "reconcile of ns/iris"))

    finished: list[str] = []

    def slow_second() -> None:
        time.sleep(0.2)
        finished.append("second")

    def failing_first() -> None:
        raise kube.ChildConflict("Deployment iris is controlled by someone else")

    with pytest.raises(kube.ChildConflict, match="someone else"):
        controller.at_once(failing_first, slow_second)
    assert finished == ["second"]  # the other request was waited for, not left running

    def failing_second() -> None:
        raise RuntimeError("503 from the API server")

    with pytest.raises(RuntimeError, match="503"):
        controller.at_once(lambda: None, failing_second)


def test_announcements_a_killed_operator_recorded_are_posted_and_counted_once() -> None:
    from slipway.engine import metrics
    from slipway.logic import announce

    # Given a status whose decision was written, but whose Events were never posted (killed)
    left = announce.make(("uid-k", 4, "40"), [
        controller.Event("Warning", "SmokeTestFailed", "1 of 1 smoke tests failed"),
        controller.Event("Warning", "RollingBack", "rolling back to abc")], cause="KilledCause")
    status = announce.with_outbox({"phase": "Invalid", "observedGeneration": 4}, set(), left)
    body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 4, "uid": "uid-k",
                         "resourceVersion": "41"},
            "spec": {"model": {"name": "iris"}}, "status": status}
    reverts = metrics.REVERTS.labels("KilledCause")
    before = reverts._value.get()
    written: list[dict] = []
    posted: list[announce.Announcement] = []
    failing = [True]

    def post(item: announce.Announcement) -> None:
        if item.reason == "InvalidSpec" and failing[0]:
            failing[0] = False
            raise ApiException(status=503, reason="Service Unavailable")
        posted.append(item)

    def write(namespace: str, name: str, patch: dict, version: str | None) -> str:
        written.append(patch)
        return str(int(version or 0) + 1)

    # When the next operator reconciles it (and the API server refuses one Event once)
    first = controller.reconcile(body, post, write)
    # Then the old ones come first, are counted once, and the refused one stays to be posted
    assert [a.reason for a in posted] == ["SmokeTestFailed", "RollingBack"]
    assert reverts._value.get() == before + 1
    assert [a["reason"] for a in written[-1]["announcements"]] == ["InvalidSpec"]
    assert first.requeue_after == controller.ANNOUNCE_RETRY_SECONDS
    # And the next look posts it and empties the outbox; nothing is posted or counted twice
    again = controller.reconcile({**body, "metadata": {**body["metadata"],
                                                       "resourceVersion": "43"},
                                  "status": {**first.status, **written[-1]}}, post, write)
    assert [a.reason for a in posted] == ["SmokeTestFailed", "RollingBack", "InvalidSpec"]
    assert written[-1] == {"announcements": None} and again.requeue_after is None
    assert reverts._value.get() == before + 1


def test_an_outbox_that_cannot_be_emptied_is_a_retry_not_a_lost_look() -> None:
    from slipway.logic import announce

    # Given a decision written and its Event posted, and then the API server failing the write
    # that empties the outbox (seen under injected faults: the look ended there, for good)
    body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 5, "uid": "uid-s",
                         "resourceVersion": "50"},
            "spec": {"model": {"name": "iris"}}, "status": {}}
    writes: list[dict] = []

    def write(namespace: str, name: str, patch: dict, version: str | None) -> str:
        writes.append(patch)
        if "announcements" in patch and patch["announcements"] is None:
            raise ApiException(status=500, reason="Internal Server Error")
        return str(int(version or 0) + 1)

    posted: list[announce.Announcement] = []
    # When it reconciles; Then it asks to be retried (the handlers look again in seconds)
    with pytest.raises(controller.Retry, match="API error 500"):
        controller.reconcile(body, posted.append, write)
    assert [a.reason for a in posted] == ["InvalidSpec"]
    assert writes[-1] == {"announcements": None}
