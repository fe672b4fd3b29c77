"""One reconcile of a ModelDeployment: observe, let the lifecycle decide, carry the decision out.

Kept apart from kopf so that the handlers stay thin: this module reads the children, runs the
smoke tests when the lifecycle asks for it, applies the Deployment the decision names, records
the rollback target, and writes ``status`` before acting, so that an operator killed at any point
resumes from what it recorded (a revert is written once; a verdict is recorded once).

A spec that will not get better (invalid, or a child name taken by someone else) ends in a
condition and one Warning event, never in a retry loop; an API hiccup is raised for a retry.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from slipway.api import models, validation
from slipway.clients import kube, smoke
from slipway.engine import metrics
from slipway.logic import conditions, lifecycle, render, rollout

HISTORY_LIMIT = 20
# How often a ChildConflict is looked at again (the stranger may have been removed).
CONFLICT_RECHECK_SECONDS = 30.0
SMOKE_ROUTE_ENV = "SLIPWAY_SMOKE_ROUTE"  # auto (default), direct, or proxy


Event = lifecycle.Event


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None


class Retry(Exception):
    """A transient failure: the API was not reachable or answered 5xx/409/429."""


EventSink = Callable[[Event], None]
StatusWriter = Callable[[str, str, dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# Coalescing: one reconcile per ModelDeployment at a time; events that arrive meanwhile make it
# run once more instead of queueing threads behind a lock.


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()

    def run(self, key: tuple[str, str], func: Callable[[], None]) -> bool:
        """Run ``func`` now, or mark the key dirty if it already runs. Returns True if it ran."""
        with self._lock:
            if key in self._running:
                self._dirty.add(key)
                return False
            self._running.add(key)
        try:
            while True:
                func()
                with self._lock:
                    if key not in self._dirty:
                        return True
                    self._dirty.discard(key)
        finally:
            with self._lock:
                self._running.discard(key)
                self._dirty.discard(key)


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning ``old`` into ``new``, or None when nothing changed."""
    patch = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


def _is_transient(error: ApiException) -> bool:
    return error.status in (0, None, 409, 429) or (error.status or 0) >= 500


# --------------------------------------------------------------------------------------------
# Statuses for specs that cannot be rolled out at all


def _stalled_status(old: dict[str, Any], generation: int | None, reason: str, message: str,
                    phase: str) -> dict[str, Any]:
    status = dict(old)
    conds = old.get("conditions") or []
    conds = conditions.set_condition(conds, conditions.READY, False, reason, message,
                                     generation=generation)
    conds = conditions.set_condition(conds, conditions.RECONCILING, False, reason,
                                     "nothing to do until the spec changes", generation=generation)
    conds = conditions.set_condition(conds, conditions.STALLED, True, reason, message,
                                     generation=generation)
    status.update({"phase": phase, "observedGeneration": generation, "conditions": conds})
    return status


def _stall_events(old: dict[str, Any], generation: int | None, reason: str,
                  message: str) -> list[Event]:
    """One Warning per generation and cause: a resync must not flood the Events."""
    stalled = conditions.get(old.get("conditions"), conditions.STALLED)
    if stalled and stalled.get("status") == "True" and stalled.get("reason") == reason and \
            stalled.get("observedGeneration") == generation and stalled.get("message") == message:
        return []
    return [Event("Warning", reason, message)]


# --------------------------------------------------------------------------------------------
# The rollback target


@dataclasses.dataclass(frozen=True)
class Target:
    revision: str
    controller_revision: str
    spec: models.ModelDeploymentSpec
    pod_template: dict[str, Any]

    @property
    def label(self) -> str:
        return describe(self.spec)


def describe(spec: models.ModelDeploymentSpec) -> str:
    return f"model {spec.model.name} {spec.model.version}, image {spec.runtime.image}"


def controller_revision_name(meta: render.Meta, revision: str) -> str:
    return f"{meta.name}-{revision}"


def load_target(meta: render.Meta, status: dict[str, Any]) -> Target | None:
    """The recorded target; if status lost it, the newest ControllerRevision we own."""
    recorded = status.get("rollbackTarget") or {}
    body = None
    if recorded.get("controllerRevision"):
        body = kube.read_controller_revision(meta.namespace, recorded["controllerRevision"])
    if body is None:
        owned = [cr for cr in kube.list_controller_revisions(meta.namespace, meta.name)
                 if any(ref.get("uid") == meta.uid
                        for ref in cr["metadata"].get("ownerReferences") or [])]
        body = owned[-1] if owned else None
    if body is None:
        return None
    data = body.get("data") or {}
    try:
        spec = validation.parse_spec(data.get("spec"))
    except validation.SpecError:
        return None
    return Target(revision=body["metadata"]["labels"][render.LABEL_REVISION],
                  controller_revision=body["metadata"]["name"], spec=spec,
                  pod_template=data.get("podTemplate") or {})


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def record_target(meta: render.Meta, spec: models.ModelDeploymentSpec,
                  rendered: render.Rendered, generation: int | None) -> dict[str, Any]:
    """Keep what re-creates this verified revision, then prune the oldest beyond the limit."""
    existing = kube.list_controller_revisions(meta.namespace, meta.name)
    number = max((int(cr.get("revision") or 0) for cr in existing), default=0) + 1
    name = controller_revision_name(meta, rendered.revision)
    verified_at = conditions.now()
    body = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": {**render.selector_labels(meta), render.LABEL_REVISION: rendered.revision},
            "ownerReferences": render.owner_references(meta),
        },
        # ControllerRevision data is immutable and compared as bytes: keys sorted, as the API
        # server's own encoder writes them, so that a metadata patch (the garbage collector
        # orphaning it, say) does not count as a change of data.
        "data": _sorted_keys({
            "podTemplate": rendered.deployment["spec"]["template"],
            "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "generation": generation,
            "modelVersion": spec.model.version,
            "image": spec.runtime.image,
            "verifiedAt": verified_at,
        }),
        "revision": number,
    }
    kube.create_controller_revision(body)
    kept = [cr for cr in existing if cr["metadata"]["name"] != name]
    excess = len(kept) + 1 - spec.rollback.revision_history_limit
    for cr in kept[:max(excess, 0)]:
        kube.delete_controller_revision(meta.namespace, cr["metadata"]["name"])
    return {
        "revision": rendered.revision,
        "controllerRevision": name,
        "generation": generation,
        "modelVersion": spec.model.version,
        "image": spec.runtime.image,
        "verifiedAt": verified_at,
    }


# --------------------------------------------------------------------------------------------
# Smoke tests


def _smoke_targets(meta: render.Meta, spec: models.ModelDeploymentSpec, revision: str,
                   pods: list[dict[str, Any]]) -> tuple[list[smoke.Target], smoke.ClientSettings]:
    route = os.environ.get(SMOKE_ROUTE_ENV, "auto")
    direct = route == "direct" or (route == "auto" and kube.in_cluster())
    ready = sorted(
        (pod for pod in pods
         if (pod["metadata"].get("labels") or {}).get(render.LABEL_REVISION) == revision
         and not pod["metadata"].get("deletionTimestamp")
         and (conditions.get((pod.get("status") or {}).get("conditions"), "Ready") or {})
         .get("status") == "True"),
        key=lambda pod: pod["metadata"]["name"])
    port = spec.runtime.port
    if direct:
        targets = [smoke.Target(f"pod/{p['metadata']['name']}",
                                f"http://{p['status']['podIP']}:{port}") for p in ready
                   if (p.get("status") or {}).get("podIP")]
        if targets:
            targets.append(smoke.Target(
                f"service/{meta.name}",
                f"http://{meta.name}.{meta.namespace}.svc:{render.SERVICE_PORT}"))
        return targets, smoke.ClientSettings()
    proxy = kube.api_proxy()
    targets = [smoke.Target(f"pod/{p['metadata']['name']}",
                            proxy.pod_url(meta.namespace, p["metadata"]["name"], port),
                            via_api_proxy=True) for p in ready]
    if targets:
        targets.append(smoke.Target(f"service/{meta.name}",
                                    proxy.service_url(meta.namespace, meta.name,
                                                      render.PORT_NAME),
                                    via_api_proxy=True))
    return targets, smoke.ClientSettings(verify=proxy.verify, cert=proxy.cert,
                                         headers=proxy.headers)


def run_smoke(meta: render.Meta, spec: models.ModelDeploymentSpec, revision: str,
              pods: list[dict[str, Any]]) -> smoke.Verdict:
    targets, client = _smoke_targets(meta, spec, revision, pods)
    if not targets:
        now = conditions.now()
        return smoke.Verdict("Error", f"no Ready pod of revision {revision} to test", [],
                             now, now)
    return smoke.run_smoke_tests_sync(spec, targets, client)


# --------------------------------------------------------------------------------------------
# The reconcile


def _compose(old: dict[str, Any], decision: lifecycle.Decision, observed: lifecycle.Observed,
             state: rollout.RolloutStatus | None) -> dict[str, Any]:
    generation = observed.generation
    status = dict(old)
    conds = old.get("conditions") or []
    for type_, cond in decision.conditions.items():
        conds = conditions.set_condition(conds, type_, cond.status, cond.reason, cond.message,
                                         generation=generation)
    status.update({
        "phase": decision.phase,
        "observedGeneration": generation,
        "conditions": conds,
        "desiredRevision": observed.desired,
        "currentRevision": decision.serving,
    })
    if state is not None:
        status["readyReplicas"] = state.ready_replicas
        status["replicas"] = state.replicas
    if decision.failure is not None:
        status["lastFailure"] = decision.failure
    elif decision.clear_failure:
        status.pop("lastFailure", None)
    return {key: value for key, value in status.items() if value is not None}


_HISTORY_REASONS = {
    lifecycle.VERIFIED: "Verified", lifecycle.ROLLED_BACK: "RolledBack",
    lifecycle.ROLLBACK_FAILED: "RollbackFailed", lifecycle.SMOKE_TEST_FAILED: "Failed",
    lifecycle.DEADLINE: "Failed", lifecycle.CRASH_LOOP: "Failed",
    lifecycle.IMAGE_PULL_FAILED: "Failed", lifecycle.SMOKE_TESTS_NOT_RUN: "Failed",
}


# Verdicts about the rollback target rather than the desired revision.
_TARGET_REASONS = {lifecycle.ROLLED_BACK, lifecycle.ROLLBACK_FAILED}


def _with_history(status: dict[str, Any], events: tuple[lifecycle.Event, ...],
                  observed: lifecycle.Observed, spec: models.ModelDeploymentSpec,
                  target: Target | None) -> dict[str, Any]:
    entries = list(status.get("history") or [])
    for event in events:
        outcome = _HISTORY_REASONS.get(event.reason)
        if outcome is None:
            continue
        about_target = event.reason in _TARGET_REASONS and target is not None
        revision = target.revision if about_target and target else observed.desired
        label_spec = target.spec if about_target and target else spec
        entries.append({"revision": revision, "generation": observed.generation,
                        "modelVersion": label_spec.model.version,
                        "image": label_spec.runtime.image, "outcome": outcome,
                        "reason": event.reason, "at": conditions.now()})
    if entries != list(status.get("history") or []):
        status = {**status, "history": entries[-HISTORY_LIMIT:]}
    return status


def _count(decision: lifecycle.Decision) -> None:
    reasons = [event.reason for event in decision.events]
    for reason in reasons:
        outcome = _HISTORY_REASONS.get(reason)
        if outcome is not None:
            metrics.ROLLOUTS.labels(outcome, reason).inc()
    if lifecycle.ROLLING_BACK in reasons and decision.failure is not None:
        metrics.REVERTS.labels(str(decision.failure.get("reason"))).inc()


class Reconciler:
    """Carries one reconcile out; writes status as it goes."""

    def __init__(self, body: dict[str, Any], post: EventSink,
                 write_status: StatusWriter = kube.patch_status,
                 conflict_recheck: float = CONFLICT_RECHECK_SECONDS) -> None:
        self.body = body
        self.conflict_recheck = conflict_recheck
        self.meta = render.Meta.from_body(body)
        self.written = dict(body.get("status") or {})
        self.post = post
        self.write_status = write_status
        self.deployment: dict[str, Any] | None = None  # as read by _observe
        self.service: dict[str, Any] | None = None  # as read by _observe

    def write(self, status: dict[str, Any]) -> None:
        patch = status_patch(self.written, status)
        if patch:
            self.write_status(self.meta.namespace, self.meta.name, patch)
            self.written = status

    def emit(self, events: list[Event]) -> None:
        for event in events:
            self.post(event)

    def stall(self, reason: str, message: str, phase: str,
              recheck_after: float | None = None) -> Outcome:
        """A spec that cannot be rolled out: a condition, and one Warning per cause.

        The Warning is weighed against the status this reconcile started from, not against
        what it wrote on the way: a reconcile that wrote Progressing before an apply failed
        must not count as a new cause.
        """
        generation = self.meta.generation or 0
        status = _stalled_status(self.written, generation, reason, message, phase)
        events = _stall_events(self.body.get("status") or {}, generation, reason,
                               message[:1000])
        self.write(status)
        self.emit(events)
        return Outcome(status, events, requeue_after=recheck_after)

    def run(self) -> Outcome:
        try:
            spec = validation.parse_spec(self.body.get("spec"))
        except validation.SpecError as error:
            message = "invalid spec: " + "; ".join(str(e) for e in error.errors)
            return self.stall(conditions.INVALID_SPEC, message[:4000], "Invalid")
        try:
            return self._run(spec, self.meta.generation or 0)
        except kube.OwnerGone:
            # Deleted while we looked: nothing to write, and the children are not ours to keep.
            return Outcome(self.written)
        except kube.ChildConflict as error:
            # No event announces that the stranger was deleted or renamed (it carries none of
            # our labels): look again now and then; an unchanged conflict writes nothing.
            return self.stall(conditions.CHILD_CONFLICT, str(error), "Failed",
                              recheck_after=self.conflict_recheck)
        except ApiException as error:
            if _is_transient(error):
                raise Retry(f"API error {error.status}: {error.reason}") from error
            if "NamespaceTerminating" in (error.body or ""):
                # Its namespace is going away, and the ModelDeployment with it.
                return Outcome(self.written)
            return self.stall(conditions.APPLY_FAILED,
                              f"the API server rejected a child: {error.status} {error.reason}: "
                              f"{(error.body or '')[:800]}", "Failed")

    def _observe(self, spec: models.ModelDeploymentSpec, rendered: render.Rendered,
                 target: Target | None, generation: int
                 ) -> tuple[lifecycle.Observed, rollout.RolloutStatus | None,
                            list[dict[str, Any]], float | None]:
        meta = self.meta
        deployment = self.deployment = kube.read_deployment(meta.namespace, meta.name)
        service = self.service = kube.read_service(meta.namespace, meta.name)
        # Fail before deciding or writing anything when a child's name is a stranger's: a
        # status written first (Progressing) and the conflict after would flap the conditions
        # and post a Warning on every reconcile.
        for desired, live in ((rendered.deployment, deployment), (rendered.service, service)):
            if live is not None:
                kube.check_ownership(desired, live)
        live_revision = None
        state = None
        pods: list[dict[str, Any]] = []
        if deployment is not None:
            live_revision = ((deployment["spec"]["template"].get("metadata") or {})
                             .get("labels") or {}).get(render.LABEL_REVISION)
            state = rollout.deployment_rollout_status(deployment)
            pods = kube.list_pods(meta.namespace, render.selector_labels(meta))
        check = lifecycle.check_pods(pods, live_revision or "", time.time())
        annotations = (self.body.get("metadata") or {}).get("annotations") or {}
        observed = lifecycle.Observed(
            generation=generation,
            desired=rendered.revision,
            desired_label=describe(spec),
            retry_token=str(annotations.get(lifecycle.RETRY_ANNOTATION) or ""),
            automatic=spec.rollback.automatic,
            target=target.revision if target else None,
            target_label=target.label if target else "",
            deployment_revision=live_revision,
            rollout=state,
            pod_problem=check.problem,
        )
        return observed, state, pods, check.recheck_after

    def _run(self, spec: models.ModelDeploymentSpec, generation: int) -> Outcome:
        meta = self.meta
        rendered = render.render(spec, meta)
        target = load_target(meta, self.written)
        observed, state, pods, recheck = self._observe(spec, rendered, target, generation)
        recorded = lifecycle.Recorded.from_status(self.written)
        decision = lifecycle.decide(recorded, observed)
        posted: list[Event] = []

        if decision.action == "verify":
            # Say so before the requests go out: a restart mid-way finds Verifying and re-runs
            # the (read-only) smoke tests; the verdict is recorded once, below.
            status = _compose(self.written, decision, observed, state)
            self.write(status)
            events = list(decision.events)
            self.emit(events)
            posted += events
            revision = decision.verify_revision or observed.desired
            verify_spec = spec if revision == observed.desired or target is None else target.spec
            started = time.monotonic()
            verdict = run_smoke(meta, verify_spec, revision, pods)
            metrics.SMOKE_DURATION.labels(verdict.outcome).observe(time.monotonic() - started)
            attempts = lifecycle.could_not_test_count(recorded, revision, generation) + 1 \
                if verdict.outcome == "Error" else 1
            smoke_status = verdict.to_status(revision=revision, generation=generation,
                                             attempts=attempts)
            smoke_status["message"] = verdict.message[:4096]
            observed = dataclasses.replace(observed, smoke=lifecycle.SmokeResult(
                revision, verdict.outcome, verdict.message))
            recorded = lifecycle.Recorded.from_status(self.written)
            decision = lifecycle.decide(recorded, observed)
            status = _compose(self.written, decision, observed, state)
            status["lastSmokeTest"] = smoke_status
        else:
            status = _compose(self.written, decision, observed, state)

        if decision.record_target:
            status["rollbackTarget"] = record_target(meta, spec, rendered, generation)
        status = _with_history(status, decision.events, observed, spec, target)

        # Record first, then act: a restart after this point finds the decision and repeats
        # only idempotent applies.
        self.write(status)
        self._act(decision, spec, rendered, target, observed)
        events = list(decision.events)
        self.emit(events)
        posted += events
        _count(decision)
        requeue = decision.requeue_after
        if recheck is not None and decision.phase in ("Progressing", "RollingBack"):
            requeue = recheck if requeue is None else min(requeue, recheck)
        return Outcome(status, posted, requeue_after=requeue)

    def _act(self, decision: lifecycle.Decision, spec: models.ModelDeploymentSpec,
             rendered: render.Rendered, target: Target | None,
             observed: lifecycle.Observed) -> None:
        meta = self.meta
        serving = decision.serving
        if decision.phase == "Failed" and decision.action == "none":
            # Left as it is: the admin sees the failing revision, nothing oscillates.
            kube.apply_service(rendered.service, self.service)
            return
        # The children as _observe read them: no second GET per reconcile. If it changed since,
        # that change is an event of its own and brings another reconcile.
        if serving == observed.desired or decision.action == "apply-desired":
            kube.apply_deployment(rendered.deployment, self.deployment)
        elif target is not None and serving == target.revision:
            template = target.pod_template
            deployment = render.render_deployment(target.spec, meta, pod_template=template,
                                                  revision=target.revision)
            kube.apply_deployment(deployment, self.deployment)
        kube.apply_service(rendered.service, self.service)


def reconcile(body: dict[str, Any], post: EventSink,
              write_status: StatusWriter = kube.patch_status,
              conflict_recheck: float = CONFLICT_RECHECK_SECONDS) -> Outcome:
    """Bring the children of one ModelDeployment in line with its spec and lifecycle."""
    return Reconciler(body, post, write_status, conflict_recheck).run()
