"""One reconcile of a ModelDeployment: observe, let the lifecycle decide, carry the decision out.

Kept apart from kopf so that the handlers stay thin: this module reads the children, has the
verifier run the smoke tests when the lifecycle asks for them (off this thread; the verdict comes
back as another reconcile), applies the Deployment the decision names, records the rollback
target, and writes ``status`` before acting, so that an operator killed at any point resumes from
what it recorded (a revert is written once; a verdict is recorded once, and then its
ControllerRevision is created).

A spec that will not get better (invalid, or a child name taken by someone else) ends in a
condition and one Warning event, never in a retry loop; an API hiccup (an error answer or a
broken connection) is raised for a retry. A spec is parsed and validated once per generation.

What a generation was decided as stays decided when the operator changes: a failed release is
blocked by (generation, retry token), whatever its rendering now hashes to, and a verified
release keeps serving its recorded revision until the spec changes, so an upgrade of the
operator that renders differently rolls nothing out by itself.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes.client.rest import ApiException

from slipway.api import models, validation
from slipway.clients import kube, smoke
from slipway.engine import metrics, verifier
from slipway.logic import conditions, lifecycle, render, rollout, targets

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
StatusWriter = Callable[[str, str, dict[str, Any]], object]


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


def read_fresh(namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelDeployment as the API server has it now (None: gone); Retry when unreachable."""
    try:
        return kube.read_model_deployment(namespace, name)
    except kube.TRANSPORT_ERRORS as error:
        raise Retry(f"API server unreachable: {type(error).__name__}: {error}") from error
    except ApiException as error:
        if _is_transient(error):
            raise Retry(f"API error {error.status}: {error.reason}") from error
        raise


# --------------------------------------------------------------------------------------------
# Parsing once per generation: a pod event must not re-run JSON Schema checks of the spec.


class SpecCache:
    """Parsed specs (or their errors) by (uid, generation), the raw spec kept to compare."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[
            tuple[str, int], tuple[Any, models.ModelDeploymentSpec | validation.SpecError]
        ] = collections.OrderedDict()

    def parse(self, key: tuple[str, int], raw: Any) -> models.ModelDeploymentSpec:
        with self._lock:
            found = self._items.get(key)
            if found is not None and found[0] == raw:
                self._items.move_to_end(key)
            else:
                found = None
        if found is None:
            result: models.ModelDeploymentSpec | validation.SpecError
            try:
                result = validation.parse_spec(raw)
            except validation.SpecError as error:
                result = error
            with self._lock:
                self._items[key] = (raw, result)
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        else:
            result = found[1]
        if isinstance(result, validation.SpecError):
            raise result
        return result


SPECS = SpecCache()
VERIFIER = verifier.Verifier()


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
    generation: int | None = None

    @property
    def label(self) -> str:
        return describe(self.spec)


def describe(spec: models.ModelDeploymentSpec) -> str:
    return f"model {spec.model.name} {spec.model.version}, image {spec.runtime.image}"


def controller_revision_name(meta: render.Meta, revision: str) -> str:
    return f"{meta.name}-{revision}"


def _verified_revisions(status: dict[str, Any]) -> set[str]:
    """Revisions that status records as verified (the target, and Verified history entries)."""
    out = {str(entry.get("revision")) for entry in status.get("history") or []
           if entry.get("outcome") == "Verified"}
    recorded = (status.get("rollbackTarget") or {}).get("revision")
    if recorded:
        out.add(str(recorded))
    return out


def load_target(meta: render.Meta, status: dict[str, Any]) -> Target | None:
    """The recorded target; if status lost it, the newest ControllerRevision we own that was
    recorded as verified: it carries the verified label (created only after the verdict was in
    status), or status history names its revision as Verified."""
    recorded = status.get("rollbackTarget") or {}
    body = None
    if recorded.get("controllerRevision"):
        body = kube.read_controller_revision(meta.namespace, recorded["controllerRevision"])
    if body is None:
        verified = _verified_revisions(status)
        owned = [cr for cr in kube.list_controller_revisions(meta.namespace, meta.name)
                 if any(ref.get("uid") == meta.uid
                        for ref in cr["metadata"].get("ownerReferences") or [])
                 and ((cr["metadata"].get("labels") or {}).get(VERIFIED_LABEL) == "true"
                      or (cr["metadata"].get("labels") or {}).get(render.LABEL_REVISION)
                      in verified)]
        body = owned[-1] if owned else None
    if body is None:
        return None
    data = body.get("data") or {}
    uid = str(body["metadata"].get("uid") or body["metadata"]["name"])
    try:
        spec = SPECS.parse((uid, 0), data.get("spec"))  # immutable: parsed once per uid
    except validation.SpecError:
        return None
    generation = data.get("generation")
    return Target(revision=body["metadata"]["labels"][render.LABEL_REVISION],
                  controller_revision=body["metadata"]["name"], spec=spec,
                  pod_template=data.get("podTemplate") or {},
                  generation=generation if isinstance(generation, int) else None)


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


VERIFIED_LABEL = "slipway.dev/verified"


def target_record(meta: render.Meta, spec: models.ModelDeploymentSpec, revision: str,
                  generation: int | None) -> dict[str, Any]:
    """``status.rollbackTarget`` for a revision just verified (written before its
    ControllerRevision exists: the verdict first, then what re-creates it)."""
    return {
        "revision": revision,
        "controllerRevision": controller_revision_name(meta, revision),
        "generation": generation,
        "modelVersion": spec.model.version,
        "image": spec.runtime.image,
        "verifiedAt": conditions.now(),
    }


def store_target(meta: render.Meta, spec: models.ModelDeploymentSpec,
                 rendered: render.Rendered, record: dict[str, Any]) -> None:
    """Create the ControllerRevision that ``record`` names (idempotent), then prune the oldest
    beyond the history limit. Called only once status holds the verdict."""
    existing = kube.list_controller_revisions(meta.namespace, meta.name)
    number = max((int(cr.get("revision") or 0) for cr in existing), default=0) + 1
    name = record["controllerRevision"]
    body = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": {**render.selector_labels(meta), render.LABEL_REVISION: record["revision"],
                       VERIFIED_LABEL: "true"},
            "ownerReferences": render.owner_references(meta),
        },
        # ControllerRevision data is immutable and compared as bytes: keys sorted, as the API
        # server's own encoder writes them, so that a metadata patch (the garbage collector
        # orphaning it, say) does not count as a change of data.
        "data": _sorted_keys({
            "podTemplate": rendered.deployment["spec"]["template"],
            "spec": spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "generation": record.get("generation"),
            "modelVersion": spec.model.version,
            "image": spec.runtime.image,
            "verifiedAt": record.get("verifiedAt"),
        }),
        "revision": number,
    }
    kube.create_controller_revision(body)
    kept = [cr for cr in existing if cr["metadata"]["name"] != name]
    excess = len(kept) + 1 - spec.rollback.revision_history_limit
    for cr in kept[:max(excess, 0)]:
        kube.delete_controller_revision(meta.namespace, cr["metadata"]["name"])


# --------------------------------------------------------------------------------------------
# Smoke tests


def smoke_targets(meta: render.Meta, revision: str, port: int, pods: list[dict[str, Any]],
                  service: targets.ServiceTarget
                  ) -> tuple[list[smoke.Target], smoke.ClientSettings]:
    """The pods of ``revision`` and the Service, by the route this operator uses: straight to
    pod and cluster IPs (in the cluster), or through the API server's proxy (outside it)."""
    route = os.environ.get(SMOKE_ROUTE_ENV, "auto")
    direct = route == "direct" or (route == "auto" and kube.in_cluster())
    ready = targets.verifiable_pods(pods, meta, revision)
    service_name = f"service/{meta.name}"
    if direct:
        out = [smoke.Target(f"pod/{p['metadata']['name']}", f"http://{p['status']['podIP']}:{port}")
               for p in ready if (p.get("status") or {}).get("podIP")]
        if out:
            out.append(smoke.Target(service_name,
                                    f"http://{service.cluster_ip}:{render.SERVICE_PORT}"
                                    if service.cluster_ip else "http://0.0.0.0",
                                    refusal=service.refusal))
        return out, smoke.ClientSettings()
    proxy = kube.api_proxy()
    out = [smoke.Target(f"pod/{p['metadata']['name']}",
                        proxy.pod_url(meta.namespace, p["metadata"]["name"], port),
                        via_api_proxy=True) for p in ready]
    if out:
        out.append(smoke.Target(service_name,
                                proxy.service_url(meta.namespace, meta.name, render.PORT_NAME),
                                via_api_proxy=True, refusal=service.refusal))
    return out, smoke.ClientSettings(verify=proxy.verify, cert=proxy.cert,
                                     headers=proxy.headers)


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
                 conflict_recheck: float = CONFLICT_RECHECK_SECONDS,
                 verifications: verifier.Verifier | None = None,
                 on_verdict: Callable[[], None] | None = None) -> None:
        self.body = body
        self.conflict_recheck = conflict_recheck
        self.meta = render.Meta.from_body(body)
        self.written = dict(body.get("status") or {})
        self.post = post
        self.write_status = write_status
        self.verifications = verifications or VERIFIER
        self.on_verdict = on_verdict or (lambda: None)
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
        generation = self.meta.generation or 0
        try:
            spec = SPECS.parse((self.meta.uid or self.meta.name, generation),
                               self.body.get("spec"))
        except validation.SpecError as error:
            self.verifications.keep_only(self.meta.namespace, self.meta.name, None)
            message = "invalid spec: " + "; ".join(str(e) for e in error.errors)
            return self.stall(conditions.INVALID_SPEC, message[:4000], "Invalid")
        try:
            return self._run(spec, generation)
        except kube.OwnerGone:
            # Deleted while we looked: nothing to write, and the children are not ours to keep.
            return Outcome(self.written)
        except kube.ChildConflict as error:
            # No event announces that the stranger was deleted or renamed (it carries none of
            # our labels): look again now and then; an unchanged conflict writes nothing.
            return self.stall(conditions.CHILD_CONFLICT, str(error), "Failed",
                              recheck_after=self.conflict_recheck)
        except kube.TRANSPORT_ERRORS as error:
            raise Retry(f"API server unreachable: {type(error).__name__}: {error}") from error
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
                 desired: str, target: Target | None, generation: int
                 ) -> tuple[lifecycle.Observed, rollout.RolloutStatus | None,
                            list[dict[str, Any]], float | None]:
        meta = self.meta
        deployment = self.deployment = kube.read_deployment(meta.namespace, meta.name)
        service = self.service = kube.read_service(meta.namespace, meta.name)
        # Fail before deciding or writing anything when a child's name is a stranger's: a
        # status written first (Progressing) and the conflict after would flap the conditions
        # and post a Warning on every reconcile.
        for want, live in ((rendered.deployment, deployment), (rendered.service, service)):
            if live is not None:
                kube.check_ownership(want, live)
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
            desired=desired,
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

    def _decided(self, spec: models.ModelDeploymentSpec, rendered: render.Rendered,
                 target: Target | None, generation: int) -> tuple[str, render.Rendered]:
        """The revision this generation stands for, and the objects that serve it.

        Normally what the spec renders to now. But a generation that was already decided
        keeps its decision when this operator renders differently (an upgrade): a failed one
        stays the revision that failed (blocked by generation and retry token), a verified
        one keeps its verified template from the rollback target.
        """
        status = self.written
        token = str(((self.body.get("metadata") or {}).get("annotations") or {})
                    .get(lifecycle.RETRY_ANNOTATION) or "")
        failure = status.get("lastFailure") or {}
        if lifecycle.blocks(failure, generation, token) and failure.get("revision"):
            return str(failure["revision"]), rendered
        recorded = status.get("desiredRevision")
        if (status.get("observedGeneration") == generation and recorded
                and recorded != rendered.revision and target is not None
                and target.revision == recorded and target.generation == generation):
            deployment = render.render_deployment(target.spec, self.meta,
                                                  pod_template=target.pod_template,
                                                  revision=target.revision)
            return recorded, render.Rendered(recorded, deployment, rendered.service)
        return rendered.revision, rendered

    def _run(self, spec: models.ModelDeploymentSpec, generation: int) -> Outcome:
        meta = self.meta
        fresh = render.render(spec, meta)
        target = load_target(meta, self.written)
        if self._target_missing(target, fresh, generation):
            store_target(meta, spec, fresh, self.written["rollbackTarget"])
            target = load_target(meta, self.written)
        desired, rendered = self._decided(spec, fresh, target, generation)
        observed, state, pods, recheck = self._observe(spec, rendered, desired, target,
                                                       generation)
        recorded = lifecycle.Recorded.from_status(self.written)
        decision = lifecycle.decide(recorded, observed)
        posted: list[Event] = []
        job: verifier.Job | None = None

        if decision.action == "verify":
            # Say so before the requests go out: a restart mid-way finds Verifying and runs
            # the (read-only) smoke tests again; the verdict is recorded once, below.
            status = _compose(self.written, decision, observed, state)
            self.write(status)
            events = list(decision.events)
            self.emit(events)
            posted += events
            revision = decision.verify_revision or observed.desired
            verify_spec = spec if revision == observed.desired or target is None else target.spec
            job = verifier.Job(meta.namespace, meta.name, revision, generation,
                               lifecycle.could_not_test_count(recorded, revision, generation),
                               float(verify_spec.rollout.verification_deadline_seconds))
            verdict = self.verifications.result(job)
            if verdict is None:
                # Drift is put back while the tests run, too (a Service switched to
                # ExternalName, say); the run itself goes by the objects as they were read.
                self._act(decision, spec, rendered, target, observed)
                self._start_verification(job, verify_spec, pods)
                # The verdict brings a reconcile of its own; this one is only a safety net.
                return Outcome(status, posted,
                               requeue_after=job.deadline + verifier.MARGIN_SECONDS + 5)
            attempts = job.attempt + 1 if verdict.outcome == "Error" else 1
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
            self.verifications.keep_only(meta.namespace, meta.name, None)
            status = _compose(self.written, decision, observed, state)

        record = None
        if decision.record_target:
            record = status["rollbackTarget"] = target_record(meta, spec, observed.desired,
                                                              generation)
        status = _with_history(status, decision.events, observed, spec, target)

        # Record first, then act: a restart after this point finds the decision and repeats
        # only idempotent applies (and creates the target's ControllerRevision if it is missing).
        self.write(status)
        if job is not None:
            self.verifications.forget(job)
        if record is not None:
            store_target(meta, spec, rendered, record)
        self._act(decision, spec, rendered, target, observed)
        events = list(decision.events)
        self.emit(events)
        posted += events
        _count(decision)
        requeue = decision.requeue_after
        if recheck is not None and decision.phase in ("Progressing", "RollingBack"):
            requeue = recheck if requeue is None else min(requeue, recheck)
        return Outcome(status, posted, requeue_after=requeue)

    def _target_missing(self, target: Target | None, fresh: render.Rendered,
                        generation: int) -> bool:
        """Status names a target verified for this generation whose ControllerRevision is
        missing (the operator stopped between recording the verdict and creating it): it is
        to be made now, from the same spec and rendering."""
        record = self.written.get("rollbackTarget") or {}
        return bool(record.get("controllerRevision")) \
            and record.get("revision") == fresh.revision \
            and record.get("generation") == generation \
            and (target is None or target.controller_revision != record["controllerRevision"])

    def _start_verification(self, job: verifier.Job, spec: models.ModelDeploymentSpec,
                            pods: list[dict[str, Any]]) -> None:
        """Hand the smoke tests of ``job`` to the verifier (unless they already run)."""
        if self.verifications.running(job):
            return
        meta = self.meta
        slices = kube.list_endpoint_slices(meta.namespace, meta.name)
        rendered_service = render.render_service(spec, meta)
        service = targets.service_target(meta, rendered_service, self.service, slices, pods)
        chosen, client = smoke_targets(meta, job.revision, spec.runtime.port, pods, service)

        async def run(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
            if not chosen:
                now = conditions.now()
                return smoke.Verdict("Error", f"no Ready pod of revision {job.revision} to test",
                                     [], now, now)
            return await smoke.run_smoke_tests(spec, chosen, client, limiters=limiters)

        self.verifications.submit(job, run, self.on_verdict)

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
              conflict_recheck: float = CONFLICT_RECHECK_SECONDS,
              verifications: verifier.Verifier | None = None,
              on_verdict: Callable[[], None] | None = None) -> Outcome:
    """Bring the children of one ModelDeployment in line with its spec and lifecycle."""
    return Reconciler(body, post, write_status, conflict_recheck, verifications,
                      on_verdict).run()
