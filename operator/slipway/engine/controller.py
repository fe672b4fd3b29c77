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
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from slipway.api import models, validation
from slipway.clients import cache, kube, smoke
from slipway.engine import logs, metrics, verifier
from slipway.logic import announce, conditions, gates, lifecycle, render, rollout, targets

HISTORY_LIMIT = 20
log = logging.getLogger("slipway")
# For the kill tests only: SIGKILL this process right after the write named here, as a crash
# at exactly that point would: "status:<phase>" (the status write that enters that phase) or
# "gate" (a pod's readiness gate written), then "@<namespace>" (only for objects there).
# Unset in every manifest.
CRASH_AFTER_ENV = "SLIPWAY_CRASH_AFTER"
# How often a ChildConflict is looked at again (the stranger may have been removed).
CONFLICT_RECHECK_SECONDS = 30.0
SMOKE_ROUTE_ENV = "SLIPWAY_SMOKE_ROUTE"  # auto (default), direct, or proxy
# The image of the init container that fetches an artifact: the operator's own, as the
# manifests and the chart set it (render.DEFAULT_FETCHER_IMAGE when unset).
FETCHER_IMAGE_ENV = "SLIPWAY_FETCHER_IMAGE"
# While a pod's smoke tests run, its object is looked at again this often regardless.
POD_LOOK_SECONDS = 10.0


def fetcher_image() -> str:
    return os.environ.get(FETCHER_IMAGE_ENV) or render.DEFAULT_FETCHER_IMAGE


def fetcher_image_problem() -> str | None:
    """Checked once at start: a bad image would fail every fetched release's pods."""
    image = fetcher_image()
    if len(image) > 512 or not re.fullmatch(models.IMAGE_REF, image):
        return f"{FETCHER_IMAGE_ENV}={image!r} is not an image reference"
    return None


Event = lifecycle.Event
T = TypeVar("T")
U = TypeVar("U")

# The second of two independent requests (the Deployment's and the Service's), sent while the
# reconcile thread sends the first: one round trip for both, not two.
_PAIRED = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="slipway-pair")


def crash_point(point: str, namespace: str) -> None:
    wanted = os.environ.get(CRASH_AFTER_ENV)
    if wanted and wanted == f"{point}@{namespace}":
        log.warning("%s=%s: killing this process here", CRASH_AFTER_ENV, wanted)
        os.kill(os.getpid(), signal.SIGKILL)


def at_once(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """``first()`` on this thread and ``second()`` on a helper, at the same time; both are
    done when this returns, and the first error (``first``'s before ``second``'s) is raised."""
    future = _PAIRED.submit(contextvars.copy_context().run, second)
    try:
        a = first()
    except BaseException:
        concurrent.futures.wait([future])
        raise
    return a, future.result()


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[announce.Announcement] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None


class Retry(Exception):
    """A transient failure: the API was not reachable or answered 5xx/409/429."""


class Stale(Exception):
    """The ModelDeployment changed since the cached copy this reconcile went by (found by the
    fresh read before a verdict): reconcile again, from the fresh copy now in the cache."""


# Posts one Event; False when it was there already (posted before, by this process or another).
EventSink = Callable[[announce.Announcement], bool]
# (namespace, name, status patch, the resourceVersion it was decided on) -> the new version
StatusWriter = Callable[[str, str, dict[str, Any], str | None], object]


# --------------------------------------------------------------------------------------------
# Coalescing: one reconcile per ModelDeployment at a time; events that arrive meanwhile make it
# run once more instead of queueing threads behind a lock.


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()

    def run(self, key: tuple[str, str], func: Callable[[], None]) -> bool:
        """Run ``func`` now, or mark the key dirty if it already runs. Returns True if it ran.

        The run ends in the same critical section that finds the key clean: a request that
        comes a moment later finds the key free and runs itself. (Ending it in a second one
        let a request that came in between mark the key dirty, and the end then dropped that
        mark: a verdict's wake-up lost, and a pod's gate left closed until the next change.)
        """
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
                        self._running.discard(key)
                        return True
                    self._dirty.discard(key)
        except BaseException:
            # The caller retries a failed run (a Retry, or the next change): the mark goes
            # with it
            with self._lock:
                self._running.discard(key)
                self._dirty.discard(key)
            raise


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning ``old`` into ``new``, or None when nothing changed."""
    patch = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


def _is_transient(error: ApiException) -> bool:
    return error.status in (0, None, 409, 429) or (error.status or 0) >= 500


@contextlib.contextmanager
def _transient_as_retry() -> Iterator[None]:
    """An unreachable API server, or a transient answer (409, 429, 5xx), as Retry: the
    handlers look again in a few seconds rather than waiting for the next change."""
    try:
        yield
    except kube.TRANSPORT_ERRORS as error:
        raise Retry(f"API server unreachable: {type(error).__name__}: {error}") from error
    except ApiException as error:
        if _is_transient(error):
            raise Retry(f"API error {error.status}: {error.reason}") from error
        raise


def read_fresh(namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelDeployment as the API server has it now (None: gone); Retry when unreachable.
    (The cache is filled with it too.)"""
    with _transient_as_retry():
        return kube.read_model_deployment(namespace, name)


# --------------------------------------------------------------------------------------------
# Parsing once per generation: a pod event must not re-run JSON Schema checks of the spec.


class SpecCache:
    """Parsed specs (or their errors) by (uid, generation), the raw spec kept to compare (as
    compact JSON: a third of the memory of the parsed dict, which the model holds anyway)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[
            tuple[str, int], tuple[str, models.ModelDeploymentSpec | validation.SpecError]
        ] = collections.OrderedDict()

    def parse(self, key: tuple[str, int], raw: Any) -> models.ModelDeploymentSpec:
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        with self._lock:
            found = self._items.get(key)
            if found is not None and found[0] == text:
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
                self._items[key] = (text, result)
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        else:
            result = found[1]
        if isinstance(result, validation.SpecError):
            raise result
        return result


SPECS = SpecCache()
VERIFIER = verifier.Verifier()


# How long a progress-only status write waits after the object's last status write
# (SLIPWAY_PROGRESS_FOLD_SECONDS).
PROGRESS_FOLD_SECONDS = 5.0


class ProgressFold:
    """When each object's status was last written. A write that reports progress only
    (conditions.progress_only: counts, the wording of a message) waits until ``fold_seconds``
    have passed since the last write, folding the progress of a rollout's pods into fewer
    writes: each status write of a ModelDeployment costs the API server 15-22 ms of CPU
    (measured: four to six times a ConfigMap create), and brings an event back to every
    watcher. Decisions (a phase, a verdict, a pod's verification, a condition that turns) are
    written at once."""

    def __init__(self, fold_seconds: float = PROGRESS_FOLD_SECONDS) -> None:
        self.fold_seconds = fold_seconds
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}

    def wait_for(self, key: tuple[str, str]) -> float:
        """Seconds a progress-only write of ``key`` should wait (0: write now)."""
        with self._lock:
            last = self._last.get(key)
        if last is None:
            return 0.0
        return max(0.0, last + self.fold_seconds - time.monotonic())

    def wrote(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._last[key] = time.monotonic()

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._last.pop(key, None)


PROGRESS = ProgressFold()
POD_RESULTS_KEPT = 32  # per-pod verdicts kept in status.podVerification (newest last)


class PodTries:
    """"Could not test" verdicts per pod (by uid), in memory: the next try waits its back-off.
    (A restarted operator starts counting again; the pod stays out of traffic meanwhile.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tries: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}

    def get(self, key: tuple[str, str], uid: str) -> tuple[int, float]:
        with self._lock:
            return self._tries.get(key, {}).get(uid, (0, 0.0))

    def failed(self, key: tuple[str, str], uid: str, delay: float) -> int:
        with self._lock:
            tries, _ = self._tries.setdefault(key, {}).get(uid, (0, 0.0))
            self._tries[key][uid] = (tries + 1, time.monotonic() + delay)
            return tries + 1

    def keep(self, key: tuple[str, str], uids: set[str]) -> None:
        with self._lock:
            kept = {uid: v for uid, v in self._tries.get(key, {}).items() if uid in uids}
            if kept:
                self._tries[key] = kept
            else:
                self._tries.pop(key, None)


POD_TRIES = PodTries()


@dataclasses.dataclass
class GateReport:
    """What the readiness-gate stage of one reconcile found and did."""

    pod_verdict: lifecycle.SmokeResult | None = None  # a pod of the desired revision failed
    failed_results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # new verdicts
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    verified_now: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    counts: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def wake(self, delay: float) -> None:
        self.requeue_after = delay if self.requeue_after is None else min(self.requeue_after,
                                                                          delay)


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
    # Not a RolledBack=True left from an earlier generation: this one was neither rolled out
    # nor reverted (Argo CD would read "Rolled back to …: invalid spec").
    conds = conditions.set_condition(conds, conditions.ROLLED_BACK, False, reason,
                                     "nothing was rolled out or reverted for this generation; "
                                     "the Deployment is left as it was", generation=generation)
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


def cached_revisions(meta: render.Meta) -> list[dict[str, Any]]:
    """The ControllerRevisions labelled as this object's, oldest first, from the cache (their
    watch is filtered to Slipway's label, as the children's are)."""
    items = cache.STORE.owned(cache.CONTROLLER_REVISION, meta.namespace, meta.name)
    return sorted(items, key=lambda item: int(item.get("revision") or 0))


def read_revision(namespace: str, name: str) -> dict[str, Any] | None:
    """A rollback target's ControllerRevision: from the cache (its watch keeps it, and sees
    it deleted), fresh only when the cache has not got it."""
    body = cache.STORE.get(cache.CONTROLLER_REVISION, namespace, name)
    return body if body is not None else kube.read_controller_revision(namespace, name)


def load_target(meta: render.Meta, status: dict[str, Any]) -> Target | None:
    """The recorded target; if status lost it, the newest ControllerRevision we own that was
    recorded as verified: it carries the verified label (created only after the verdict was in
    status), or status history names its revision as Verified."""
    recorded = status.get("rollbackTarget") or {}
    body = None
    if recorded.get("controllerRevision"):
        body = read_revision(meta.namespace, recorded["controllerRevision"])
    if body is None:
        verified = _verified_revisions(status)
        owned = [cr for cr in cached_revisions(meta)
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
    existing = cached_revisions(meta)
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


def _direct_route() -> bool:
    route = os.environ.get(SMOKE_ROUTE_ENV, "auto")
    return route == "direct" or (route == "auto" and kube.in_cluster())


def pod_smoke_target(meta: render.Meta, pod: dict[str, Any], port: int
                     ) -> tuple[list[smoke.Target], smoke.ClientSettings]:
    """One pod, by its address (not Ready yet: it waits behind its readiness gate), on the
    route this operator uses."""
    name = pod["metadata"]["name"]
    if _direct_route():
        ip = (pod.get("status") or {}).get("podIP")
        return ([smoke.Target(f"pod/{name}", f"http://{ip}:{port}")] if ip else [],
                smoke.ClientSettings())
    proxy = kube.api_proxy()
    return ([smoke.Target(f"pod/{name}", proxy.pod_url(meta.namespace, name, port),
                          via_api_proxy=True)],
            smoke.ClientSettings(verify=proxy.verify, cert=proxy.cert, headers=proxy.headers))


def smoke_targets(meta: render.Meta, revision: str, port: int, pods: list[dict[str, Any]],
                  service: targets.ServiceTarget, skip: frozenset[str] = frozenset()
                  ) -> tuple[list[smoke.Target], smoke.ClientSettings]:
    """The pods of ``revision`` (but those in ``skip``: verified one by one for this
    generation) and the Service, by the route this operator uses: straight to pod and cluster
    IPs (in the cluster), or through the API server's proxy (outside it). The Service is
    tested even when every pod was skipped: it is the route users take."""
    direct = _direct_route()
    ready = [pod for pod in targets.verifiable_pods(pods, meta, revision)
             if pod["metadata"]["name"] not in skip]
    any_ready = bool(targets.verifiable_pods(pods, meta, revision))
    service_name = f"service/{meta.name}"
    if direct:
        out = [smoke.Target(f"pod/{p['metadata']['name']}", f"http://{p['status']['podIP']}:{port}")
               for p in ready if (p.get("status") or {}).get("podIP")]
        if out or any_ready:
            out.append(smoke.Target(service_name,
                                    f"http://{service.cluster_ip}:{render.SERVICE_PORT}"
                                    if service.cluster_ip else "http://0.0.0.0",
                                    refusal=service.refusal))
        return out, smoke.ClientSettings()
    proxy = kube.api_proxy()
    out = [smoke.Target(f"pod/{p['metadata']['name']}",
                        proxy.pod_url(meta.namespace, p["metadata"]["name"], port),
                        via_api_proxy=True) for p in ready]
    if out or any_ready:
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
    lifecycle.PREDICTIONS_DISAGREE: "Failed", lifecycle.ARTIFACT_DIGEST_MISMATCH: "Failed",
    lifecycle.ARTIFACT_FETCH_FAILED: "Failed",
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


def _count(announcement: announce.Announcement) -> None:
    outcome = _HISTORY_REASONS.get(announcement.reason)
    if outcome is not None:
        metrics.ROLLOUTS.labels(outcome, announcement.reason).inc()
    if announcement.reason == lifecycle.ROLLING_BACK and announcement.cause:
        metrics.REVERTS.labels(announcement.cause).inc()


class Delivered:
    """The announcement keys this process has posted (and counted), newest kept."""

    def __init__(self, size: int = 65536) -> None:
        self._keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def among(self, keys: list[str]) -> set[str]:
        with self._lock:
            return {key for key in keys if key in self._keys}


DELIVERED = Delivered()
# Retry an announcement the API server did not take after this long.
ANNOUNCE_RETRY_SECONDS = 5.0


class Reconciler:
    """Carries one reconcile out; writes status as it goes."""

    def __init__(self, body: dict[str, Any], post: EventSink,
                 write_status: StatusWriter = kube.patch_status,
                 conflict_recheck: float = CONFLICT_RECHECK_SECONDS,
                 verifications: verifier.Verifier | None = None,
                 on_verdict: Callable[[], None] | None = None) -> None:
        self.body = body
        self.conflict_recheck = conflict_recheck
        self.meta = render.Meta.from_body(body, fetcher_image())
        self.written = dict(body.get("status") or {})
        # The object's resourceVersion as of what this reconcile knows: the copy it started
        # from, then the answer to each of its own status writes.
        self.version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.post = post
        self.write_status = write_status
        self.verifications = verifications or VERIFIER
        self.on_verdict = on_verdict or (lambda: None)
        self.deployment: dict[str, Any] | None = None  # as read by _observe
        self.service: dict[str, Any] | None = None  # as read by _observe
        self._live_units: set[str] = set()  # the pod runs this reconcile still wants
        # A progress-only status write held back: look again in this many seconds.
        self.progress_due: float | None = None
        self.posted: list[announce.Announcement] = []  # what this reconcile announced

    def write(self, status: dict[str, Any], announcing: Sequence[Event] = (),
              cause: str = "") -> None:
        """Write ``status`` (if it changed), with ``announcing`` in its outbox; then post
        what the outbox holds."""
        new = announce.make((self.meta.uid or self.meta.name, self.meta.generation,
                             self.version), announcing, cause)
        status = announce.with_outbox(status, DELIVERED.among(
            [item.key for item in announce.pending(self.written)]), new)
        patch = status_patch(self.written, status)
        if patch:
            key = (self.meta.namespace, self.meta.name)
            if conditions.progress_only(self.written, status):
                wait = PROGRESS.wait_for(key)
                if wait > 0:
                    # Folded into a later write; this reconcile comes back for it.
                    self.progress_due = wait if self.progress_due is None else \
                        min(self.progress_due, wait)
                    return
            try:
                version = self.write_status(self.meta.namespace, self.meta.name, patch,
                                            self.version or None)
            except kube.StatusConflict as error:
                # Decided on a copy that is no longer the latest (a newer leader's decision, a
                # new spec): nothing was written; again from the fresh copy, now in the cache.
                raise Stale(str(error)) from error
            PROGRESS.wrote(key)
            if isinstance(version, str):
                self.version = version
            before = self.written.get("phase")
            self.written = status
            if status.get("phase") != before:
                crash_point(f"status:{status.get('phase')}", self.meta.namespace)
        if new:
            self.deliver()

    def confirm_fresh(self) -> None:
        """A fresh read, before a verdict is recorded: the verdict must be about the
        generation the API server holds now, decided on the status it holds now. Stale when
        anything changed since this reconcile's copy (it starts again from the fresh one)."""
        fresh = kube.read_model_deployment(self.meta.namespace, self.meta.name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp") or \
                fresh["metadata"].get("uid") != self.meta.uid:
            raise kube.OwnerGone(f"{self.meta.name} is gone or being deleted")
        version = str(fresh["metadata"].get("resourceVersion") or "")
        if version != self.version:
            raise Stale(f"{self.meta.name} changed (resourceVersion {self.version} → {version})"
                        " while a verdict was being decided")

    def _try_post(self, item: announce.Announcement) -> Exception | None:
        """Post one; the API server's refusal or a broken connection is returned, not
        raised (NotLeader is raised: nothing may be sent)."""
        try:
            created = self.post(item)
        except ApiException as error:
            return error
        except kube.TRANSPORT_ERRORS as error:
            return error
        log.info("%s/%s: %s %s: %s%s", self.meta.namespace, self.meta.name, item.type,
                 item.reason, item.message, "" if created else " (posted before)",
                 extra=self._about(item.reason))
        return None

    def _about(self, event: str | None = None) -> dict[str, Any]:
        """What a log line is about: this object, the revision and phase it is in now."""
        return logs.about(self.meta.namespace, self.meta.name,
                          revision=self.written.get("desiredRevision"),
                          phase=self.written.get("phase"), event=event)

    def deliver(self) -> None:
        """Post what the recorded outbox holds that this process has not posted yet (its
        own decision just written, or one a killed predecessor recorded), and count it."""
        for item in announce.pending(self.written):
            if item.key in DELIVERED:
                continue
            failed = self._try_post(item)
            if failed is not None:
                # Kept in the outbox (in order): a later look posts it.
                log.warning("%s/%s: Event %s not posted, kept to post again: %s",
                            self.meta.namespace, self.meta.name, item.reason, failed,
                            extra=self._about(item.reason))
                self.progress_due = ANNOUNCE_RETRY_SECONDS if self.progress_due is None \
                    else min(self.progress_due, ANNOUNCE_RETRY_SECONDS)
                return
            DELIVERED.add(item.key)
            _count(item)
            self.posted.append(item)

    def settle(self) -> None:
        """Empty the outbox of what was posted (one write; none when nothing was)."""
        if DELIVERED.among([item.key for item in announce.pending(self.written)]):
            self.write(self.written)

    def post_now(self, events: Sequence[Event]) -> None:
        """Events with no decision recorded in status (a pod's own verdict, recorded in its
        gate): named after what they say, so a second post of the same one changes nothing."""
        for item in announce.make((self.meta.uid or self.meta.name, "pod"), events):
            if item.key in DELIVERED:
                continue
            failed = self._try_post(item)
            if failed is not None:
                # Not a reason to stop the reconcile, nor a child the API server refused.
                log.warning("%s/%s: Event %s not posted: %s", self.meta.namespace,
                            self.meta.name, item.reason, failed, extra=self._about(item.reason))
                continue
            DELIVERED.add(item.key)
            self.posted.append(item)

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
        self.write(status, events)
        return Outcome(status, self.posted, requeue_after=recheck_after)

    def run(self) -> Outcome:
        # A killed predecessor's announcements first: they come before anything decided now.
        self.deliver()
        outcome = self._run_guarded()
        with _transient_as_retry():  # the decision is written; the emptied outbox can wait
            self.settle()
        if self.progress_due is not None:
            due = self.progress_due
            outcome.requeue_after = due if outcome.requeue_after is None else \
                min(outcome.requeue_after, due)
        return outcome

    def _run_guarded(self) -> Outcome:
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
        # From the cache; a fresh read only while a child is not there: before creating it or
        # adopting what holds its name (a stranger's object carries none of Slipway's labels,
        # and the watch never delivers it).
        deployment = cache.STORE.get(cache.DEPLOYMENT, meta.namespace, meta.name)
        service = cache.STORE.get(cache.SERVICE, meta.namespace, meta.name)
        if deployment is None and service is None:  # a new object: both reads at once
            deployment, service = at_once(
                lambda: kube.read_deployment(meta.namespace, meta.name),
                lambda: kube.read_service(meta.namespace, meta.name))
        elif deployment is None:
            deployment = kube.read_deployment(meta.namespace, meta.name)
        elif service is None:
            service = kube.read_service(meta.namespace, meta.name)
        self.deployment, self.service = deployment, service
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
            selector = render.selector_labels(meta).items()
            pods = [pod for pod in cache.STORE.owned(cache.POD, meta.namespace, meta.name)
                    if all(((pod["metadata"].get("labels") or {}).get(key)) == value
                           for key, value in selector)]
        check = lifecycle.check_pods(pods, live_revision or "", time.time())
        annotations = (self.body.get("metadata") or {}).get("annotations") or {}
        observed = lifecycle.Observed(
            generation=generation,
            desired=desired,
            desired_label=describe(spec),
            checks=render.checks_of(spec),
            retry_token=str(annotations.get(lifecycle.RETRY_ANNOTATION) or ""),
            automatic=spec.rollback.automatic,
            target=target.revision if target else None,
            target_label=target.label if target else "",
            target_generation=target.generation if target else None,
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
        report = self._gates(spec, target, observed, recorded, pods)
        observed = dataclasses.replace(observed, pod_verdict=report.pod_verdict)
        decision = lifecycle.decide(recorded, observed)
        job: verifier.Job | None = None
        self.post_now(report.events)

        if decision.action == "verify":
            # Say so before the requests go out: a restart mid-way finds Verifying and runs
            # the (read-only) smoke tests again; the verdict is recorded once, below.
            status = self._with_pods(_compose(self.written, decision, observed, state), report,
                                     decision)
            self.write(status, decision.events)
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
                self._start_verification(job, verify_spec, pods,
                                         report.verified_now.get(revision, frozenset()))
                # The verdict brings a reconcile of its own; this one is only a safety net.
                safety = job.deadline + verifier.MARGIN_SECONDS + 5
                return Outcome(status, self.posted,
                               requeue_after=min(safety, report.requeue_after or safety))
            attempts = job.attempt + 1 if verdict.outcome == "Error" else 1
            smoke_status = verdict.to_status(revision=revision, generation=generation,
                                             attempts=attempts)
            message = verdict.message
            gated = len(report.verified_now.get(revision, ()))
            if gated and verdict.outcome == "Passed":
                message += (f"; before that, each of its {gated} gated pod{'s' if gated > 1 else ''}"
                            " passed them on its own before it got traffic")
            smoke_status["message"] = message[:4096]
            observed = dataclasses.replace(observed, smoke=lifecycle.SmokeResult(
                revision, verdict.outcome, message))
            if revision != observed.desired:
                # The rollback target's re-check: lastSmokeTest keeps what the failed release
                # got (the troubleshooting starts there).
                base = {**self.written, "rollbackCheck": smoke_status}
            else:
                smoke_status["pods"] = self._pod_entries(revision, generation, report)
                smoke_status["checks"] = observed.checks
                base = {**self.written, "lastSmokeTest": smoke_status}
            # Decided on what was recorded before this verdict (observed.smoke carries it): a
            # verdict already in status would read as "verified earlier", and nothing recorded.
            recorded = lifecycle.Recorded.from_status(self.written)
            decision = lifecycle.decide(recorded, observed)
            status = _compose(base, decision, observed, state)
        else:
            self._keep_pod_runs(None)
            status = _compose(self.written, decision, observed, state)
            if report.pod_verdict is not None and decision.failure is not None and \
                    report.pod_verdict.revision == observed.desired and \
                    decision.failure.get("reason") in (lifecycle.SMOKE_TEST_FAILED,
                                                       lifecycle.SMOKE_TESTS_NOT_RUN,
                                                       lifecycle.PREDICTIONS_DISAGREE):
                # Failed behind its readiness gate: what that pod got is the verdict.
                pod_verdict = report.pod_verdict
                status["lastSmokeTest"] = {
                    "revision": pod_verdict.revision, "generation": generation,
                    "outcome": pod_verdict.outcome, "message": pod_verdict.message[:4096],
                    "finishedAt": conditions.now(), "attempts": 1,
                    "results": report.failed_results[:64],
                    "pods": self._pod_entries(pod_verdict.revision, generation, report)}
        status = self._with_pods(status, report, decision)

        record = None
        if decision.record_target:
            record = status["rollbackTarget"] = target_record(meta, spec, observed.desired,
                                                              generation)
        status = _with_history(status, decision.events, observed, spec, target)

        cause = str((decision.failure or {}).get("reason") or "")
        verdict_recorded = record is not None or any(event.reason in _HISTORY_REASONS
                                                     for event in decision.events)
        if verdict_recorded:
            self.confirm_fresh()
        if decision.action == "apply-desired" and decision.phase == "Progressing" and \
                not verdict_recorded and job is None:
            # A new revision rolls out: nothing is decided that a restart could lose (the next
            # reconcile finds the Deployment on it and says Progressing), so the children come
            # first and the status after, one round trip sooner.
            self._act(decision, spec, rendered, target, observed)
            self.write(status, decision.events, cause)
        else:
            # Record first, then act: a restart after this point finds the decision and repeats
            # only idempotent applies (and creates the target's ControllerRevision if it is
            # missing).
            self.write(status, decision.events, cause)
            if job is not None:
                self.verifications.forget(job)
            if record is not None:
                store_target(meta, spec, rendered, record)
            self._act(decision, spec, rendered, target, observed)
        requeue = decision.requeue_after
        if recheck is not None and decision.phase in ("Progressing", "RollingBack"):
            requeue = recheck if requeue is None else min(requeue, recheck)
        if report.requeue_after is not None:
            requeue = report.requeue_after if requeue is None else min(requeue,
                                                                       report.requeue_after)
        return Outcome(status, self.posted, requeue_after=requeue)

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

    # ----------------------------------------------------------------------------------------
    # Readiness gates: every pod is tested on its own before it gets traffic

    def _gate_revisions(self, spec: models.ModelDeploymentSpec, target: Target | None,
                        observed: lifecycle.Observed, blocked: bool
                        ) -> list[tuple[str, models.ModelDeploymentSpec]]:
        """The revisions whose pods are tested behind their gates, with the spec that tests
        them: the desired one (unless it failed for this generation: its pods are on their way
        out and get no traffic) and the rollback target (whose pods may restart or be
        replaced while a release rolls out or after a revert)."""
        out: list[tuple[str, models.ModelDeploymentSpec]] = []
        if not blocked:
            out.append((observed.desired, spec))
        if target is not None and target.revision != observed.desired:
            out.append((target.revision, target.spec))
        return out

    def _gates(self, spec: models.ModelDeploymentSpec, target: Target | None,
               observed: lifecycle.Observed, recorded: lifecycle.Recorded,
               pods: list[dict[str, Any]]) -> GateReport:
        meta = self.meta
        key = (meta.namespace, meta.name)
        generation = observed.generation
        report = GateReport()
        live_units: set[str] = set()
        blocked = lifecycle.is_blocked(recorded, observed)
        for revision, rev_spec in self._gate_revisions(spec, target, observed, blocked):
            census = gates.census(pods, meta, revision, generation)
            # Its pods' verdicts decide a release: the desired revision's until it is
            # verified, the rollback target's while a revert brings it back.
            checks = observed.checks if revision == observed.desired else ""
            releasing = not lifecycle.verified(recorded, revision, generation, checks) and (
                (revision == observed.desired and not blocked)
                or (blocked and target is not None and revision == target.revision))
            for pod in census.pods("close"):
                self._write_gate(pod, False, gates.RESTARTED,
                                 "a container stopped or restarted since the pod was verified: "
                                 "it is tested again before it gets traffic")
            for pod in census.pods("failed"):
                gate = gates.gate_condition(pod) or {}
                if releasing and report.pod_verdict is None:
                    outcome = "Error" if gate.get("reason") == gates.NOT_RUN else "Failed"
                    report.pod_verdict = lifecycle.SmokeResult(
                        revision, outcome,  # type: ignore[arg-type]
                        f"pod {pod['metadata']['name']}: {gates.gate_detail(gate)}",
                        reason=lifecycle.PREDICTIONS_DISAGREE
                        if gate.get("reason") == gates.DISAGREE else "")
            verified = set(census.names("verified"))
            for pod in census.pods("test"):
                uid = str(pod["metadata"]["uid"])
                live_units.add(f"pod/{uid}")
                serving = None
                if releasing and revision == observed.desired and target is not None \
                        and target.revision != revision and rev_spec.agreement is not None:
                    serving = next(iter(targets.verifiable_pods(pods, meta, target.revision)),
                                   None)
                if self._test_pod(pod, revision, rev_spec, generation, releasing, report,
                                  serving):
                    verified.add(pod["metadata"]["name"])
            report.verified_now[revision] = frozenset(verified)
            report.counts[revision] = (len(verified) + len(census.names("earlier")),
                                       census.total)
        POD_TRIES.keep(key, {unit.removeprefix("pod/") for unit in live_units})
        self._live_units = live_units
        return report

    def _test_pod(self, pod: dict[str, Any], revision: str, spec: models.ModelDeploymentSpec,
                  generation: int, releasing: bool, report: GateReport,
                  serving: dict[str, Any] | None = None) -> bool:
        """Start, or take the verdict of, one pod's smoke tests; True once it passed.
        ``serving``: a Ready pod of the rollback target, whose answers this pod's must agree
        with (spec.agreement)."""
        meta = self.meta
        key = (meta.namespace, meta.name)
        uid = str(pod["metadata"]["uid"])
        name = pod["metadata"]["name"]
        tries, not_before = POD_TRIES.get(key, uid)
        job = verifier.Job(meta.namespace, meta.name, revision, generation, tries,
                           float(spec.rollout.verification_deadline_seconds), unit=f"pod/{uid}")
        verdict = self.verifications.result(job)
        if verdict is None:
            wait = not_before - time.monotonic()
            if wait > 0:
                report.wake(wait)
                return False
            # The verdict brings a reconcile of its own; this look is a safety net, so that a
            # pod whose verdict's wake-up went missing (a run the verifier lost, a reconcile
            # that failed meanwhile) waits seconds for its gate, not the progress deadline.
            report.wake(POD_LOOK_SECONDS)
            if not self.verifications.running(job):
                chosen, client = pod_smoke_target(meta, pod, spec.runtime.port)
                reference = pod_smoke_target(meta, serving, spec.runtime.port)[0] \
                    if serving is not None else []

                async def run(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
                    return await smoke.run_smoke_tests(
                        spec, chosen, client, limiters=limiters,
                        serving=reference[0] if reference else None)

                self.verifications.submit(job, run, self.on_verdict)
            return False
        entry = {"pod": name, "revision": revision, "generation": generation,
                 "outcome": verdict.outcome, "message": verdict.message[:1024],
                 "at": verdict.finished_at or conditions.now()}
        if verdict.outcome == "Passed":
            written = self._write_gate(pod, True, gates.PASSED, gates.verdict_message(
                generation, pod, verdict.message))
            self.verifications.forget(job)
            if written:
                report.entries.append(entry)
            return written
        if verdict.outcome == "Error":
            tries = POD_TRIES.failed(key, uid, lifecycle.retry_delay(tries + 1))
            if tries < lifecycle.COULD_NOT_TEST_LIMIT:
                self.verifications.forget(job)
                report.wake(lifecycle.retry_delay(tries))
                return False
            entry["message"] = f"could not test it {tries} times: {verdict.message}"[:1024]
        reason = gates.NOT_RUN if verdict.outcome == "Error" else (
            gates.DISAGREE if verdict.reason == smoke.PREDICTIONS_DISAGREE else gates.FAILED)
        written = self._write_gate(pod, False, reason, gates.verdict_message(
            generation, pod, str(entry["message"])))
        self.verifications.forget(job)
        if not written:
            return False
        report.entries.append(entry)
        if releasing:
            if report.pod_verdict is None:
                report.pod_verdict = lifecycle.SmokeResult(
                    revision, verdict.outcome, f"pod {name}: {entry['message']}",
                    reason=lifecycle.PREDICTIONS_DISAGREE
                    if verdict.reason == smoke.PREDICTIONS_DISAGREE else "")
                report.failed_results = [r.model_dump(mode="json", by_alias=True,
                                                      exclude_none=True)
                                         for r in verdict.results]
        else:
            # A pod of a verified revision (a scale-up, a replaced or restarted pod): it stays
            # out of traffic, the revision keeps serving from its verified pods. Not deleted:
            # a deterministic failure would only come back in its replacement, and the pod is
            # the evidence; it is tested again when it restarts or the spec changes.
            report.events.append(Event(
                "Warning", "PodVerificationFailed",
                f"pod {name} of revision {revision} "
                f"{'failed' if verdict.outcome == 'Failed' else 'could not be'} "
                f"{'its smoke tests' if verdict.outcome == 'Failed' else 'tested'} and gets no "
                f"traffic; the revision keeps serving from its verified pods: "
                f"{entry['message']}"[:1024]))
        return False

    def _write_gate(self, pod: dict[str, Any], open_: bool, reason: str, message: str) -> bool:
        meta = pod["metadata"]
        previous = gates.gate_condition(pod)
        cond = gates.condition(open_, reason, message, previous, conditions.now())
        if previous is not None and all(previous.get(k) == cond[k]
                                        for k in ("status", "reason", "message")):
            return True
        written = kube.patch_pod_status(self.meta.namespace, meta["name"],
                                        gates.patch_body(str(meta["uid"]), cond))
        if written:
            metrics.GATES.labels("open" if open_ else reason).inc()
            crash_point("gate", self.meta.namespace)
        return written

    def _keep_pod_runs(self, job: verifier.Job | None) -> None:
        live = self._live_units
        self.verifications.keep_only(self.meta.namespace, self.meta.name, job,
                                     units=lambda unit: unit in live)

    def _pod_entries(self, revision: str, generation: int,
                     report: GateReport) -> list[dict[str, Any]]:
        """The per-pod verdicts of ``revision`` in this generation, as status keeps them."""
        kept = (self.written.get("podVerification") or {}).get("pods") or []
        entries = [e for e in [*kept, *report.entries]
                   if e.get("revision") == revision and e.get("generation") == generation]
        return [{k: v for k, v in e.items() if k not in ("revision", "generation")}
                for e in entries][-POD_RESULTS_KEPT:]

    def _with_pods(self, status: dict[str, Any], report: GateReport,
                   decision: lifecycle.Decision) -> dict[str, Any]:
        """``status.podVerification`` (the per-pod verdicts, newest last) and
        ``status.verifiedPods`` ("2/3": pods of the serving revision whose gate is open)."""
        status = dict(status)
        if report.entries:
            kept = (status.get("podVerification") or {}).get("pods") or []
            status["podVerification"] = {"pods": [*kept, *report.entries][-POD_RESULTS_KEPT:]}
        serving = decision.serving
        counts = report.counts.get(serving or "")
        if counts is not None and counts[1]:
            status["verifiedPods"] = f"{counts[0]}/{counts[1]}"
        else:
            status.pop("verifiedPods", None)
        if decision.clear_failure:
            status.pop("rollbackCheck", None)
        return status

    def _start_verification(self, job: verifier.Job, spec: models.ModelDeploymentSpec,
                            pods: list[dict[str, Any]], skip: frozenset[str]) -> None:
        """Hand the smoke tests of ``job`` to the verifier (unless they already run)."""
        if self.verifications.running(job):
            return
        self._keep_pod_runs(job)
        meta = self.meta
        slices = kube.list_endpoint_slices(meta.namespace, meta.name)
        rendered_service = render.render_service(spec, meta)
        service = targets.service_target(meta, rendered_service, self.service, slices, pods)
        chosen, client = smoke_targets(meta, job.revision, spec.runtime.port, pods, service,
                                       skip)

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
        deployment: dict[str, Any] | None = None
        if serving == observed.desired or decision.action == "apply-desired":
            deployment = rendered.deployment
        elif target is not None and serving == target.revision:
            deployment = render.render_deployment(target.spec, meta,
                                                  pod_template=target.pod_template,
                                                  revision=target.revision)
        if deployment is not None and self.deployment is None and self.service is None:
            want = deployment  # a new object's two children: both created at once
            at_once(lambda: kube.apply_deployment(want, None),
                    lambda: kube.apply_service(rendered.service, None))
            return
        if deployment is not None:
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
