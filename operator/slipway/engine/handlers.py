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
import concurrent.futures
import contextvars
import heapq
import itertools
import logging
import math
import os
import threading
import time
from typing import Any, cast

import kopf

from slipway.api import models
from slipway.clients import cache, kube
from slipway.engine import controller, metrics, verifier
from slipway.logic import render

MANAGED_SELECTOR = f"{render.LABEL_MANAGED_BY}={render.MANAGER}"
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"), ("", "v1", "pods"),
                   ("apps", "v1", "controllerrevisions"))
COALESCER = controller.Coalescer()
log = logging.getLogger("slipway")
RETRY_SECONDS = 5.0
# A watch event is acted on this long after it arrives: the burst a rollout makes (the
# Deployment, its pods, the Service, each several times) folds into one reconcile per object.
SETTLE_SECONDS = 0.25
# A listing (the start, or a re-list after a watch broke off) is over when no listed object
# came for this long; what it did not bring back was deleted meanwhile and leaves the cache.
LISTING_QUIET_SECONDS = 30.0
STALE_RERUNS = 3  # fresh reads that found a newer copy before a verdict, before a retry


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
# Reconciles at once (each on a worker thread of its own): the rest wait their turn, in order
# of when they fell due (slipway_reconciles_queued). Smoke tests do not hold these.
RECONCILE_WORKERS = int(_env_float("SLIPWAY_RECONCILE_WORKERS", 8))
CONFLICT_RECHECK = _env_float("SLIPWAY_CONFLICT_RECHECK_SECONDS",
                              controller.CONFLICT_RECHECK_SECONDS)
controller.VERIFIER.limit(
    max_in_flight=int(_env_float("SLIPWAY_SMOKE_MAX_IN_FLIGHT", verifier.MAX_IN_FLIGHT)),
    per_namespace=int(_env_float("SLIPWAY_SMOKE_PER_NAMESPACE", verifier.PER_NAMESPACE)))


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: Slipway has only event and index handlers, which take no diff, and kopf
    would otherwise deep-copy every object of every event to build one (a tenth of the
    operator's CPU in a rollout, by a profile). Nothing is stored on the objects either.
    (A change handler, @kopf.on.update and the like, would need a real storage again.)"""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgress(kopf.ProgressStorage):
    """No per-handler progress: event handlers keep none (nothing is written to the objects,
    and nothing is copied for it)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf keeps no state on the objects (event and index handlers only): no progress, no
    # diff-base, nothing written and nothing copied per event.
    settings.persistence.progress_storage = NoProgress()
    settings.persistence.diffbase_storage = NoDiffBase()
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

    One scheduler thread holds them all (a heap: no thread per object, however many objects
    wait), and hands each due one to a pool of ``workers`` reconcile threads, which bounds the
    API connections and the CPU the reconciles take at once; ``queued()`` is how many wait for
    a worker. Each runs in a copy of the context it was asked from: kopf keeps its settings
    (needed to post Events) in context variables, which a bare thread would not see.
    """

    def __init__(self, run: Any, workers: int = 8) -> None:
        self._run = run
        self._workers = workers
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], tuple[float, contextvars.Context]] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Due and handed to the pool, not started yet: one entry per object at most (a
        # reconcile reads the newest state when it starts, so a second one queued behind it
        # would find nothing new).
        self._queued: set[tuple[str, str]] = set()

    def schedule(self, namespace: str, name: str, delay: float) -> bool:
        """Look again after ``delay`` seconds; False when an earlier look is already due."""
        key = (namespace, name)
        due = time.monotonic() + delay
        with self._cond:
            pending = self._pending.get(key)
            if pending is not None and pending[0] <= due:
                return False
            self._pending[key] = (due, contextvars.copy_context())
            heapq.heappush(self._heap, (due, next(self._seq), key))
            if self._thread is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix="slipway-reconcile")
                self._thread = threading.Thread(target=self._loop, name="slipway-timers",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def queued(self) -> int:
        with self._cond:
            return len(self._queued)

    def _loop(self) -> None:
        while True:
            due_now: list[tuple[tuple[str, str], contextvars.Context]] = []
            with self._cond:
                wait: float | None = None
                while self._heap:
                    due, _, key = self._heap[0]
                    pending = self._pending.get(key)
                    if pending is None or pending[0] != due:
                        heapq.heappop(self._heap)  # replaced by an earlier one, or fired
                        continue
                    wait = due - time.monotonic()
                    if wait > 0:
                        break
                    heapq.heappop(self._heap)
                    del self._pending[key]
                    if key not in self._queued:
                        self._queued.add(key)
                        due_now.append((key, pending[1]))
                    wait = None
                if not due_now:
                    self._cond.wait(timeout=wait)
                    continue
            assert self._pool is not None
            for key, context in due_now:
                self._pool.submit(context.run, self._fire, key)

    def _fire(self, key: tuple[str, str]) -> None:
        with self._cond:
            self._queued.discard(key)
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


TIMERS = Timers(_reconcile_quietly, workers=RECONCILE_WORKERS)
metrics.RECONCILES_QUEUED.set_function(TIMERS.queued)


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

    def write(self, namespace: str, name: str, patch: dict[str, Any]) -> str | None:
        version = kube.patch_status(namespace, name, patch)
        if version:
            with self._lock:
                self._versions.setdefault((namespace, name),
                                          collections.deque(maxlen=self.KEPT)).append(version)
        return version

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
        for _ in range(STALE_RERUNS):
            try:
                if not attempt():
                    return
            except controller.Stale as error:
                log.info("%s/%s: %s; reconciling again from the fresh copy", namespace, name,
                         error)
        errors.append(controller.Retry(f"{namespace}/{name} kept changing while a verdict "
                                       "was being decided"))

    def attempt() -> bool:
        """One reconcile; raises Stale to be run again."""
        try:
            # From the cache (the watches keep it); fresh only when the cache has not got it
            # (a look scheduled before the watch listed it, or after it was swept).
            body = cache.STORE.get(cache.MODEL_DEPLOYMENT, namespace, name)
            if body is None:
                body = controller.read_fresh(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return False

            def post(event: controller.Event) -> None:
                kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason,
                           message=event.message)
                log.info("%s/%s: %s %s: %s", namespace, name, event.type, event.reason,
                         event.message)

            outcome = controller.reconcile(
                body, post, OWN_WRITES.write, conflict_recheck=CONFLICT_RECHECK,
                on_verdict=lambda: _schedule(namespace, name, 0))
        except controller.Stale:
            metrics.RECONCILES.labels("stale").inc()
            raise
        except kube.OwnerGone:
            return False  # deleted while we looked
        except controller.Retry as error:
            metrics.RECONCILES.labels("retry").inc()
            errors.append(error)
            return False
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        metrics.RECONCILES.labels("ok").inc()
        metrics.set_phase(namespace, name, outcome.status.get("phase"))
        if outcome.requeue_after is not None:
            _schedule(namespace, name, outcome.requeue_after)
        return False

    COALESCER.run((namespace, name), once)
    if errors:
        raise kopf.TemporaryError(str(errors[-1]), delay=RETRY_SECONDS)


class Listings:
    """Sweeps the cache of one kind once a listing of it is over (LISTING_QUIET_SECONDS
    without a listed object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}

    def listed(self, kind: str) -> None:
        with self._lock:
            timer = self._timers.pop(kind, None)
            if timer is not None:
                timer.cancel()
            timer = threading.Timer(LISTING_QUIET_SECONDS, self._sweep, args=(kind,))
            timer.daemon = True
            self._timers[kind] = timer
        timer.start()

    def _sweep(self, kind: str) -> None:
        gone = cache.STORE.sweep(kind)
        if gone:
            log.info("cache: %d %s(s) were deleted while a watch was down: %s", len(gone), kind,
                     ", ".join(f"{ns}/{name}" for ns, name, _ in gone[:10]))
        for namespace, name, owner in gone:
            if kind == cache.MODEL_DEPLOYMENT:
                _forget(namespace, name)
            elif owner:
                _schedule(namespace, owner, SETTLE_SECONDS)  # a child gone: put it back


LISTINGS = Listings()


def _cache_filler(kind: str) -> Any:
    """An index handler that keeps each object of ``kind`` in the cache (and nothing in kopf's
    own index: it returns None). kopf runs index handlers before any other handler, and holds
    every other handler until the first listing of each indexed kind is indexed, so that no
    reconcile ever works from a cache that is still filling (a controller's "wait for cache
    sync")."""

    def fill(body: kopf.Body, **_: Any) -> None:
        raw = cast(dict[str, Any], dict(body))
        if kube.is_ours(kind, raw):
            cache.STORE.put(kind, raw)

    fill.__name__ = fill.__qualname__ = f"cache_{kind.lower()}s"
    return fill


for _kind, (_group, _version, _plural) in (
        (cache.MODEL_DEPLOYMENT, (models.GROUP, models.VERSION, models.PLURAL)),
        (cache.DEPLOYMENT, ("apps", "v1", "deployments")),
        (cache.SERVICE, ("", "v1", "services")),
        (cache.POD, ("", "v1", "pods")),
        (cache.CONTROLLER_REVISION, ("apps", "v1", "controllerrevisions"))):
    kopf.index(_group, _version, _plural, id=f"cache-{_plural}")(_cache_filler(_kind))


def _observe(kind: str, event: kopf.RawEvent) -> dict[str, Any] | None:
    """Count a watch event; forget what it says was deleted; note a listing (the index
    handler has already put the object in the cache). The object, or None when it was deleted
    or is not Slipway's (the server-side selector sends none such)."""
    body = cast(dict[str, Any], event.get("object") or {})
    metrics.WATCH_EVENTS.labels(kind).inc()  # every event delivered, before any filter
    meta = body.get("metadata") or {}
    if event.get("type") == "DELETED":
        cache.STORE.delete(kind, str(meta.get("namespace") or ""), str(meta.get("name")),
                           uid=str(meta.get("uid") or "") or None)
        return None
    if not kube.is_ours(kind, body):
        return None
    if event.get("type") is None:  # from a listing: at the start, or after a watch broke
        cache.STORE.put(kind, body, listed=True)
        LISTINGS.listed(kind)
    return body


def _forget(namespace: str, name: str) -> None:
    metrics.forget(namespace, name)
    controller.VERIFIER.keep_only(namespace, name, None)
    OWN_WRITES.forget(namespace, name)


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
def model_deployment_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
    """Any change of a ModelDeployment (and each one listed at start): reconcile it. A deleted
    one only drops its metrics and its verification; its children go with the garbage
    collector."""
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if _observe(cache.MODEL_DEPLOYMENT, event) is None:
        _forget(namespace, name)
        return
    if event.get("type") == "MODIFIED" and OWN_WRITES.is_echo(
            namespace, name, meta.get("resourceVersion")):
        return  # our own status write coming back
    body = cast(dict[str, Any], event.get("object") or {})
    observed = (body.get("status") or {}).get("observedGeneration")
    # A spec not acted on yet (a new object, a new release): at once. Anything else (labels,
    # annotations, a status written by someone else) after the settle delay.
    _schedule(namespace, name, 0 if observed != meta.get("generation") else SETTLE_SECONDS)


def _child_changed(kind: str, event: kopf.RawEvent) -> None:
    """A child or one of its pods changed: keep it, and re-evaluate the owner (drift, rollout,
    failures)."""
    meta = cast(dict[str, Any], event.get("object") or {}).get("metadata") or {}
    _observe(kind, event)
    if (meta.get("labels") or {}).get(render.LABEL_MANAGED_BY) != render.MANAGER:
        return  # not Slipway's
    owner = (meta.get("labels") or {}).get(render.LABEL_OWNER)
    namespace = meta.get("namespace")
    if not owner or not namespace:
        return
    _schedule(namespace, owner, SETTLE_SECONDS)


@kopf.on.event("apps", "v1", "deployments")
def deployment_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.DEPLOYMENT, event)


@kopf.on.event("", "v1", "services")
def service_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.SERVICE, event)


@kopf.on.event("", "v1", "pods")
def pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.POD, event)


@kopf.on.event("apps", "v1", "controllerrevisions")
def revision_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A rollback target's record: kept in the cache; its owner looks again when it is deleted
    (to make it again) and not on its creation (made by the owner's own reconcile)."""
    _observe(cache.CONTROLLER_REVISION, event)
    meta = cast(dict[str, Any], event.get("object") or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    if event.get("type") == "DELETED" and labels.get(render.LABEL_MANAGED_BY) == render.MANAGER:
        owner = labels.get(render.LABEL_OWNER)
        if owner and meta.get("namespace"):
            _schedule(str(meta["namespace"]), str(owner), SETTLE_SECONDS)
