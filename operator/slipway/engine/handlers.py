"""kopf handlers: thin wrappers that hand a ModelDeployment to the controller.

Plain ``def`` handlers on purpose: the kubernetes client is synchronous, and kopf runs sync
handlers in its thread pool instead of blocking the event loop. The ModelDeployment's own changes,
and every change of its Deployment, Service and pods (watched by Slipway's labels), lead to the
same reconcile, so verdicts follow what happened within a second or two instead of on a polling
delay. All kopf settings live in the one startup handler below.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import threading
from typing import Any, cast

import kopf

from slipway.api import models
from slipway.clients import kube
from slipway.engine import controller, metrics
from slipway.logic import render

MANAGED = {render.LABEL_MANAGED_BY: render.MANAGER}
KOPF_PREFIX = "kopf.slipway.dev"
COALESCER = controller.Coalescer()
log = logging.getLogger("slipway")


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


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and the last-handled spec go in annotations under a prefix of kopf's own; status
    # stays ours alone (and fully declared in the CRD). Not "slipway.dev": kopf ignores every
    # annotation under its storage prefix, and users set slipway.dev/retry.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = "slipway.dev/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = WATCH_TIMEOUT
    settings.watching.client_timeout = WATCH_TIMEOUT + 30
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = MAX_WORKERS
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.peering.standalone = True


def _schedule(namespace: str, name: str, delay: float) -> None:
    """Look again after ``delay`` seconds (a bound that no watch event will announce).

    The timer runs in a copy of this handler's context: kopf keeps its settings (needed to post
    Events) in context variables, which a bare thread would not see.
    """
    context = contextvars.copy_context()
    timer = threading.Timer(delay, context.run, args=(_reconcile_quietly, namespace, name))
    timer.daemon = True
    timer.start()


def _reconcile_quietly(namespace: str, name: str) -> None:
    try:
        reconcile(namespace, name)
    except Exception:  # noqa: BLE001 - a timer thread has no caller to report to
        log.exception("scheduled reconcile of %s/%s failed; the next change retries", namespace,
                      name)


def reconcile(namespace: str, name: str) -> None:
    """Reconcile the freshest copy of one ModelDeployment, once at a time per object."""
    errors: list[BaseException] = []

    def once() -> None:
        body = kube.read_model_deployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return

        def post(event: controller.Event) -> None:
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason,
                       message=event.message)
            log.info("%s/%s: %s %s: %s", namespace, name, event.type, event.reason,
                     event.message)

        try:
            outcome = controller.reconcile(body, post, conflict_recheck=CONFLICT_RECHECK)
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
        raise kopf.TemporaryError(str(errors[-1]), delay=5)


@kopf.on.resume(models.GROUP, models.VERSION, models.PLURAL)
@kopf.on.create(models.GROUP, models.VERSION, models.PLURAL)
@kopf.on.update(models.GROUP, models.VERSION, models.PLURAL)
def reconcile_model_deployment(meta: kopf.Meta, **_: Any) -> None:
    reconcile(str(meta["namespace"]), str(meta["name"]))


@kopf.on.event(models.GROUP, models.VERSION, models.PLURAL)
def model_deployment_event(event: kopf.RawEvent, meta: kopf.Meta, **_: Any) -> None:
    """Drop the phase series of a deleted ModelDeployment (no finalizer needed for that)."""
    if event.get("type") == "DELETED":
        metrics.forget(str(meta["namespace"]), str(meta["name"]))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
def child_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """A child or one of its pods changed: re-evaluate the owner (drift, rollout, failures)."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(render.LABEL_OWNER)
    namespace = body.get("metadata", {}).get("namespace")
    if not owner or not namespace:
        return
    try:
        reconcile(namespace, owner)
    except kopf.TemporaryError as error:
        logger.warning("API error, retrying in 5 s: %s", error)
        _schedule(namespace, owner, 5)
