"""kopf handlers: thin wrappers that hand a ModelDeployment to the controller.

The ModelDeployment's own changes, and every change of its Deployment, Service and pods (watched
by Slipway's labels), lead to the same reconcile, so verdicts follow what happened within a
second or two instead of on a polling delay. A handler only asks for that reconcile (a timer per
object, SETTLE_SECONDS away, the earliest one wins), so that a burst of events folds into one;
the reconcile runs on the timer's thread, with the synchronous kubernetes client, never on
kopf's event loop. The watch handlers are ``async def``: they only touch memory (the cache, the
timers), so they run on kopf's loop rather than costing two thread hand-offs per event, as plain
``def`` handlers do in kopf. All kopf settings live in the one startup handler below.

Only event handlers: the ModelDeployment's watch events (the initial listing included, so a
restart resumes every object) reconcile it, with no kopf bookkeeping on the object at all. No
finalizer, no progress or last-handled annotations: the operator never writes to the object but
its status, whose fields the CRD declares, and it needs no patch permission on the object. A
reconcile is idempotent and its status tells where it stands, which is all the restart needs.

With leader election (``engine.leader``), every process watches and caches, but only the one
holding the Lease reconciles: a standby parks the looks that fall due (``Parked``) and takes
them up when it leads. Smoke-test runs in flight when the Lease is lost finish and keep their
results (evidence about a pod, whoever records it); no new one starts, as no reconcile runs.
Every write passes the elector's fence (``kube.FENCE``, and Events in ``post``), so a process
that lost the Lease sends nothing more.
"""

from __future__ import annotations

import collections
import contextvars
import heapq
import itertools
import logging
import math
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from slipway.api import models
from slipway.clients import cache, kube
from slipway.engine import controller, leader, logs, metrics, verifier
from slipway.logic import announce, render
from slipway.logic import leader as lease_rules

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


def env_float(name: str, default: float) -> float:
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
WATCH_TIMEOUT = int(env_float("SLIPWAY_WATCH_SERVER_TIMEOUT", 300))
MAX_WORKERS = int(env_float("SLIPWAY_MAX_WORKERS", 8))
# Reconciles at once (each on a worker thread of its own): the rest wait their turn, in order
# of when they fell due (slipway_reconciles_queued). Smoke tests do not hold these.
RECONCILE_WORKERS = int(env_float("SLIPWAY_RECONCILE_WORKERS", 8))
# A status write that only reports progress waits this long after the object's last one.
controller.PROGRESS.fold_seconds = env_float("SLIPWAY_PROGRESS_FOLD_SECONDS",
                                              controller.PROGRESS_FOLD_SECONDS)
CONFLICT_RECHECK = env_float("SLIPWAY_CONFLICT_RECHECK_SECONDS",
                              controller.CONFLICT_RECHECK_SECONDS)
controller.VERIFIER.limit(
    max_in_flight=int(env_float("SLIPWAY_SMOKE_MAX_IN_FLIGHT", verifier.MAX_IN_FLIGHT)),
    per_namespace=int(env_float("SLIPWAY_SMOKE_PER_NAMESPACE", verifier.PER_NAMESPACE)))


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


# Leader election (``slipway run``'s default): set by ``elect`` before kopf starts. None: this
# process acts alone (``--no-leader-elect``).
ELECTOR: leader.Elector | None = None
# A context of kopf's own event handlers (kopf keeps what posting an Event needs in context
# variables): the looks scheduled on taking over run in a copy of it.
_HANDLER_CONTEXT: contextvars.Context | None = None


def elect(elector: leader.Elector) -> None:
    """Reconcile only while ``elector`` holds the Lease: its fence guards every write."""
    global ELECTOR
    ELECTOR = elector
    kube.FENCE = elector.leading
    metrics.LEADER.set(0)


def leading() -> bool:
    return ELECTOR is None or ELECTOR.leading()


class Parked:
    """The looks that fell due while this process did not lead (and the reconciles the fence
    stopped): each is looked at again when it leads, and only those, so that a leadership
    lost for a moment on a loaded machine costs a few looks, not one per object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()

    def park(self, namespace: str, name: str) -> None:
        with self._lock:
            self._keys.add((namespace, name))
        if leading():  # it began to lead meanwhile, after its parked looks were taken
            self.take_all()

    def take_all(self) -> None:
        with self._lock:
            keys, self._keys = sorted(self._keys), set()
        context = _HANDLER_CONTEXT
        if not keys or context is None:
            return

        def schedule_all() -> None:
            for namespace, name in keys:
                _schedule(namespace, name, 0)

        context.copy().run(schedule_all)

    def count(self) -> int:
        with self._lock:
            return len(self._keys)


PARKED = Parked()


def take_over() -> None:
    """Leading now: every look that fell due while standing by is taken up (at the start,
    every listed ModelDeployment: the listing's looks were parked)."""
    log.info("leading: looking at the %d ModelDeployment(s) whose looks waited",
             PARKED.count())
    PARKED.take_all()


@kopf.on.startup()
def start_election(**_: Any) -> None:
    if ELECTOR is not None:
        ELECTOR.start()
    else:
        metrics.LEADER.set(1)


@kopf.on.probe(id="leader")
def leadership(**_: Any) -> dict[str, str]:
    """What /healthz says about leadership: leader or standby, this candidate's identity and
    who holds the Lease."""
    if ELECTOR is None:
        return {"role": "leader", "election": "off"}
    return {"role": ELECTOR.role(), "identity": ELECTOR.identity, "holder": ELECTOR.holder}


@kopf.on.cleanup()
def stop_verifier(**_: Any) -> None:
    if ELECTOR is not None:
        ELECTOR.stop(release=True)
    controller.VERIFIER.stop()


class Timers:
    """At most one pending "look again" per object: the earliest asked for wins.

    One scheduler thread holds them all (a heap: no thread per object, however many objects
    wait), and hands each due one to ``workers`` reconcile threads, which bounds the API
    connections and the CPU the reconciles take at once; ``queued()`` is how many wait for a
    worker. A look asked for as ``urgent`` (a spec not acted on yet: its children are still to
    be made) goes before the others that wait, so that a burst of new objects gets its children
    first rather than after every pod change of the objects before it; but never more than
    URGENT_IN_A_ROW of them in a row while others wait, so that a flood of new specs cannot
    starve the verifications and rollbacks of the rest. Each runs in a copy of the context it
    was asked from: kopf keeps its settings (needed to post Events) in context variables, which
    a bare thread would not see.
    """

    URGENT_IN_A_ROW = 4

    def __init__(self, run: Any, workers: int = 8) -> None:
        self._run = run
        self._workers = workers
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the scheduler waits on it
        self._work = threading.Condition(self._lock)  # the workers wait on it
        self._pending: dict[tuple[str, str], tuple[float, contextvars.Context, bool]] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        # Due, waiting for a worker: one entry per object at most (a reconcile reads the newest
        # state when it starts, so a second one queued behind it would find nothing new).
        self._queued: dict[tuple[str, str], tuple[contextvars.Context, bool]] = {}
        self._ready: dict[bool, collections.deque[tuple[str, str]]] = {
            True: collections.deque(), False: collections.deque()}
        self._urgent_run = 0

    def schedule(self, namespace: str, name: str, delay: float, urgent: bool = False) -> bool:
        """Look again after ``delay`` seconds; False when an earlier look is already due (it
        becomes urgent if this one is)."""
        key = (namespace, name)
        due = time.monotonic() + delay
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and pending[0] <= due:
                if urgent and not pending[2]:
                    self._pending[key] = (pending[0], pending[1], True)
                return False
            self._pending[key] = (due, contextvars.copy_context(),
                                  urgent or (pending is not None and pending[2]))
            heapq.heappush(self._heap, (due, next(self._seq), key))
            if not self._threads:
                self._start()
            self._cond.notify()
        return True

    def _start(self) -> None:
        self._threads.append(threading.Thread(target=self._loop, name="slipway-timers",
                                              daemon=True))
        self._threads += [threading.Thread(target=self._worker, name=f"slipway-reconcile-{i}",
                                           daemon=True) for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def queued(self) -> int:
        with self._lock:
            return len(self._queued)

    def _enqueue(self, key: tuple[str, str], context: contextvars.Context,
                 urgent: bool) -> None:
        """Under the lock: a due look waits for a worker (once per object)."""
        held = self._queued.get(key)
        if held is not None:
            if urgent and not held[1]:  # already waiting: it moves up
                self._queued[key] = (held[0], True)
                self._ready[True].append(key)
                self._work.notify()
            return
        self._queued[key] = (context, urgent)
        self._ready[urgent].append(key)
        self._work.notify()

    def _take(self) -> tuple[tuple[str, str], contextvars.Context] | None:
        """Under the lock: the next look for a worker, urgent ones first (URGENT_IN_A_ROW at
        most while others wait)."""
        order = (True, False) if self._urgent_run < self.URGENT_IN_A_ROW else (False, True)
        for level in order:
            ready = self._ready[level]
            while ready:
                key = ready.popleft()
                held = self._queued.get(key)
                if held is None or held[1] != level:
                    continue  # taken already, or moved up
                del self._queued[key]
                self._urgent_run = self._urgent_run + 1 if level else 0
                return key, held[0]
        return None

    def _loop(self) -> None:
        with self._lock:
            while True:
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
                    self._enqueue(key, pending[1], pending[2])
                    wait = None
                self._cond.wait(timeout=wait)

    def _worker(self) -> None:
        while True:
            with self._lock:
                taken = self._take()
                while taken is None:
                    self._work.wait()
                    taken = self._take()
            key, context = taken
            try:
                context.run(self._run, *key)
            except Exception:  # noqa: BLE001 - the worker stays; the run logs its own
                log.exception("reconcile of %s/%s failed", *key, extra=logs.about(*key))


def reconcile_or_retry(namespace: str, name: str) -> None:
    """Reconcile; on a transient failure look again in RETRY_SECONDS (event handlers are not
    retried by kopf, and a timer has no caller to retry it)."""
    try:
        reconcile(namespace, name)
    except kopf.TemporaryError as error:
        log.warning("%s/%s: %s; retrying in %g s", namespace, name, error, RETRY_SECONDS,
                    extra=logs.about(namespace, name))
        TIMERS.schedule(namespace, name, RETRY_SECONDS)


def _reconcile_quietly(namespace: str, name: str) -> None:
    if not leading():
        PARKED.park(namespace, name)  # standing by: looked at again on taking over
        return
    try:
        reconcile_or_retry(namespace, name)
    except Exception:  # noqa: BLE001 - a timer thread has no caller to report to
        log.exception("scheduled reconcile of %s/%s failed; the next change retries", namespace,
                      name, extra=logs.about(namespace, name))


TIMERS = Timers(_reconcile_quietly, workers=RECONCILE_WORKERS)
metrics.RECONCILES_QUEUED.set_function(TIMERS.queued)


def _schedule(namespace: str, name: str, delay: float, urgent: bool = False) -> None:
    TIMERS.schedule(namespace, name, delay, urgent)


class OwnWrites:
    """The resourceVersions our own recent status writes gave each object: the watch event
    that echoes one brings nothing new, so it reconciles nothing. (A few are kept: two writes
    of one reconcile come back after both were made.)"""

    KEPT = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], collections.deque[str]] = {}

    def write(self, namespace: str, name: str, patch: dict[str, Any],
              decided_on: str | None = None) -> str | None:
        version = kube.patch_status(namespace, name, patch, decided_on)
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
                         error, extra=logs.about(namespace, name))
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

            ref = {"apiVersion": body.get("apiVersion") or f"{models.GROUP}/{models.VERSION}",
                   "kind": body.get("kind") or "ModelDeployment", "name": name,
                   "namespace": namespace, "uid": body["metadata"].get("uid")}

            def post(item: announce.Announcement) -> bool:
                # Sent now (fenced like every write), named after its key: a second post of
                # the same announcement finds it there and adds nothing.
                stamp = lease_rules.micro_time(datetime.now(UTC))  # eventTime is a MicroTime
                return kube.create_event(announce.event_body(
                    ref, item, stamp, ELECTOR.identity if ELECTOR else ""))

            outcome = controller.reconcile(
                body, post, OWN_WRITES.write, conflict_recheck=CONFLICT_RECHECK,
                on_verdict=lambda: _schedule(namespace, name, 0))
        except controller.Stale:
            metrics.RECONCILES.labels("stale").inc()
            raise
        except kube.OwnerGone:
            return False  # deleted while we looked
        except kube.NotLeader as error:
            metrics.RECONCILES.labels("standby").inc()
            log.info("%s/%s: stopped, no longer leading (%s)", namespace, name, error,
                     extra=logs.about(namespace, name))
            PARKED.park(namespace, name)
            return False
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

    async def fill(body: kopf.Body, **_: Any) -> None:
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
    controller.PROGRESS.forget((namespace, name))


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
async def model_deployment_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
    """Any change of a ModelDeployment (and each one listed at start): reconcile it. A deleted
    one only drops its metrics and its verification; its children go with the garbage
    collector."""
    global _HANDLER_CONTEXT
    if _HANDLER_CONTEXT is None:
        _HANDLER_CONTEXT = contextvars.copy_context()
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
    if observed != meta.get("generation"):
        _schedule(namespace, name, 0, urgent=True)
    else:
        _schedule(namespace, name, SETTLE_SECONDS)


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
async def deployment_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.DEPLOYMENT, event)


@kopf.on.event("", "v1", "services")
async def service_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.SERVICE, event)


@kopf.on.event("", "v1", "pods")
async def pod_changed(event: kopf.RawEvent, **_: Any) -> None:
    _child_changed(cache.POD, event)


@kopf.on.event("apps", "v1", "controllerrevisions")
async def revision_changed(event: kopf.RawEvent, **_: Any) -> None:
    """A rollback target's record: kept in the cache; its owner looks again when it is deleted
    (to make it again) and not on its creation (made by the owner's own reconcile)."""
    _observe(cache.CONTROLLER_REVISION, event)
    meta = cast(dict[str, Any], event.get("object") or {}).get("metadata") or {}
    labels = meta.get("labels") or {}
    if event.get("type") == "DELETED" and labels.get(render.LABEL_MANAGED_BY) == render.MANAGER:
        owner = labels.get(render.LABEL_OWNER)
        if owner and meta.get("namespace"):
            _schedule(str(meta["namespace"]), str(owner), SETTLE_SECONDS)
