"""kopf handlers: thin wrappers that hand a ModelDeployment to the controller.

The ModelDeployment's own changes, and every change of its Deployment, Service and pods (watched
by Slipway's labels), lead to the same reconcile, so verdicts follow what happened within a
second or two instead of on a polling delay. A handler only asks for that reconcile (a timer per
object, SETTLE_SECONDS away, the earliest one wins), so that a burst of events folds into one;
the reconcile runs on the timer's thread, with the synchronous kubernetes client, never on
kopf's event loop. All kopf settings live in the one startup handler below.

Only event handlers: the ModelDeployment's watch events (the initial listing included, so a
restart resumes every object) reconcile it, with no kopf bookkeeping on the object at all. No
finalizer, no progress or last-handled annotations: the operator never writes to the object but
its status, whose fields the CRD declares, and it needs no patch permission on the object. A
reconcile is idempotent and its status tells where it stands, which is all the restart needs.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import os
import threading
import time
from typing import Any, cast

import kopf

from slipway.api import models
from slipway.clients import kube
from slipway.engine import controller, metrics, verifier
from slipway.logic import render

MANAGED = {render.LABEL_MANAGED_BY: render.MANAGER}
MANAGED_SELECTOR = f"{render.LABEL_MANAGED_BY}={render.MANAGER}"
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"), ("", "v1", "pods"))
KOPF_PREFIX = "kopf.slipway.dev"
COALESCER = controller.Coalescer()
log = logging.getLogger("slipway")
RETRY_SECONDS = 5.0
# A watch event is acted on this long after it arrives: the burst a rollout makes (the
# Deployment, its pods, the Service, each several times) folds into one reconcile per object.
SETTLE_SECONDS = 0.25


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):  # NaN and inf too
        raise SystemExit(f"slipway: {name}={raw!r} must be a number above 0 (default {default:g})")
    return value


# Read once, when `slipway run` loads the handlers (before kopf starts): a bad value stops the
# operator at once, naming the variable.
WATCH_TIMEOUT = int(_env_float("SLIPWAY_WATCH_SERVER_TIMEOUT", 300))
MAX_WORKERS = int(_env_float("SLIPWAY_MAX_WORKERS", 8))
CONFLICT_RECHECK = _env_float("SLIPWAY_CONFLICT_RECHECK_SECONDS",
                              controller.CONFLICT_RECHECK_SECONDS)
controller.VERIFIER.limit(
    max_in_flight=int(_env_float("SLIPWAY_SMOKE_MAX_IN_FLIGHT", verifier.MAX_IN_FLIGHT)),
    per_namespace=int(_env_float("SLIPWAY_SMOKE_PER_NAMESPACE", verifier.PER_NAMESPACE)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf keeps no state on the objects (event handlers only), but its storage settings are
    # still set so that nothing lands under "slipway.dev": kopf ignores every annotation under
    # its storage prefix, and users set slipway.dev/retry.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = "slipway.dev/finalizer"
    settings.posting.level = logging.WARNING
    # Server-side label selectors: the API server sends only Slipway's own children and pods,
    # so unrelated Deployments, Services and pods cost the operator nothing (the handlers'
    # labels= filter alone is applied after every object of the kind has been received).
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
    settings.watching.server_timeout = WATCH_TIMEOUT
    settings.watching.client_timeout = WATCH_TIMEOUT + 30
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = MAX_WORKERS
    # kopf 1.45 renamed "batching" to "queueing" (the old name warns); 1.44 has only the old.
    queueing = getattr(settings, "queueing", None) or settings.batching
    queueing.error_delays = [1, 2, 5, 10, 30, 60]
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.peering.standalone = True


@kopf.on.cleanup()
def stop_verifier(**_: Any) -> None:
    controller.VERIFIER.stop()


class Timers:
    """At most one pending "look again" per object: the earliest asked for wins.

    Each timer runs in a copy of the context it was asked from: kopf keeps its settings (needed
    to post Events) in context variables, which a bare thread would not see.
    """

    def __init__(self, run: Any) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], tuple[float, threading.Timer]] = {}

    def schedule(self, namespace: str, name: str, delay: float) -> bool:
        """Look again after ``delay`` seconds; False when an earlier look is already due."""
        key = (namespace, name)
        due = time.monotonic() + delay
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and pending[0] <= due:
                return False
            context = contextvars.copy_context()
            timer = threading.Timer(delay, context.run, args=(self._fire, key, due))
            timer.daemon = True
            if pending is not None:
                pending[1].cancel()
            self._pending[key] = (due, timer)
        timer.start()
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _fire(self, key: tuple[str, str], due: float) -> None:
        with self._lock:
            pending = self._pending.get(key)
            if pending is None or pending[0] != due:
                return  # replaced by an earlier one
            del self._pending[key]
        self._run(*key)


def reconcile_or_retry(namespace: str, name: str) -> None:
    """Reconcile; on a transient failure look again in RETRY_SECONDS (event handlers are not
    retried by kopf, and a timer has no caller to retry it)."""
    try:
        reconcile(namespace, name)
    except kopf.TemporaryError as error:
        log.warning("%s/%s: %s; retrying in %g s", namespace, name, error, RETRY_SECONDS)
        TIMERS.schedule(namespace, name, RETRY_SECONDS)


def _reconcile_quietly(namespace: str, name: str) -> None:
    try:
        reconcile_or_retry(namespace, name)
    except Exception:  # noqa: BLE001 - a timer thread has no caller to report to
        log.exception("scheduled reconcile of %s/%s failed; the next change retries", namespace,
                      name)


TIMERS = Timers(_reconcile_quietly)


def _schedule(namespace: str, name: str, delay: float) -> None:
    TIMERS.schedule(namespace, name, delay)


class OwnWrites:
    """The resourceVersions our own recent status writes gave each object: the watch event
    that echoes one brings nothing new, so it reconciles nothing. (A few are kept: two writes
    of one reconcile come back after both were made.)"""

    KEPT = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], collections.deque[str]] = {}

    def write(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        version = kube.patch_status(namespace, name, patch)
        if version:
            with self._lock:
                self._versions.setdefault((namespace, name),
                                          collections.deque(maxlen=self.KEPT)).append(version)

    def is_echo(self, namespace: str, name: str, version: str | None) -> bool:
        with self._lock:
            return version is not None and version in self._versions.get((namespace, name), ())

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._versions.pop((namespace, name), None)


OWN_WRITES = OwnWrites()


def reconcile(namespace: str, name: str) -> None:
    """Reconcile the freshest copy of one ModelDeployment, once at a time per object."""
    errors: list[BaseException] = []

    def once() -> None:
        try:
            body = controller.read_fresh(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return

            def post(event: controller.Event) -> None:
                kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason,
                           message=event.message)
                log.info("%s/%s: %s %s: %s", namespace, name, event.type, event.reason,
                         event.message)

            outcome = controller.reconcile(
                body, post, OWN_WRITES.write, conflict_recheck=CONFLICT_RECHECK,
                on_verdict=lambda: _schedule(namespace, name, 0))
        except controller.Retry as error:
            metrics.RECONCILES.labels("retry").inc()
            errors.append(error)
            return
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        metrics.RECONCILES.labels("ok").inc()
        metrics.set_phase(namespace, name, outcome.status.get("phase"))
        if outcome.requeue_after is not None:
            _schedule(namespace, name, outcome.requeue_after)

    COALESCER.run((namespace, name), once)
    if errors:
        raise kopf.TemporaryError(str(errors[-1]), delay=RETRY_SECONDS)


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
def model_deployment_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
    """Any change of a ModelDeployment (and each one listed at start): reconcile it. A deleted
    one only drops its metrics and its verification; its children go with the garbage
    collector."""
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if event.get("type") == "DELETED":
        metrics.forget(namespace, name)
        controller.VERIFIER.keep_only(namespace, name, None)
        OWN_WRITES.forget(namespace, name)
        return
    if event.get("type") == "MODIFIED" and OWN_WRITES.is_echo(
            namespace, name, meta.get("resourceVersion")):
        return  # our own status write coming back
    _schedule(namespace, name, SETTLE_SECONDS)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
def child_changed(body: kopf.Body, **_: Any) -> None:
    """A child or one of its pods changed: re-evaluate the owner (drift, rollout, failures)."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(render.LABEL_OWNER)
    namespace = body.get("metadata", {}).get("namespace")
    if not owner or not namespace:
        return
    _schedule(namespace, owner, SETTLE_SECONDS)
