"""kopf handlers: thin wrappers that hand a ModelDeployment to the controller.

Plain ``def`` handlers on purpose: the kubernetes client is synchronous, and kopf runs sync
handlers in its thread pool instead of blocking the event loop. All kopf settings live in the one
startup handler below.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from slipway import controller, kube, models, render

MANAGED = {render.LABEL_MANAGED_BY: render.MANAGER}


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and the last-handled spec go in annotations under our own prefix; status stays
    # ours alone (and fully declared in the CRD).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="slipway.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="slipway.dev", key="last-handled-configuration")
    settings.persistence.finalizer = "slipway.dev/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = int(_env_float("SLIPWAY_WATCH_SERVER_TIMEOUT", 300))
    settings.watching.client_timeout = int(_env_float("SLIPWAY_WATCH_SERVER_TIMEOUT", 300)) + 30
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = int(_env_float("SLIPWAY_MAX_WORKERS", 8))
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.peering.standalone = True


def _post(body: dict[str, Any], outcome: controller.Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _reconcile(body: dict[str, Any], logger: logging.Logger | Any) -> None:
    meta = body["metadata"]
    with controller.lock_for(meta["namespace"], meta["name"]):
        # Always act on the freshest copy: the event that woke us may be stale.
        fresh = kube.read_model_deployment(meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        try:
            outcome = controller.reconcile(fresh)
        except controller.Retry as error:
            raise kopf.TemporaryError(str(error), delay=5) from error
        patch = controller.status_patch(fresh.get("status") or {}, outcome.status)
        if patch:
            kube.patch_status(meta["namespace"], meta["name"], patch)
        _post(fresh, outcome)
        for event in outcome.events:
            logger.info("%s %s: %s", event.type, event.reason, event.message)


@kopf.on.resume(models.GROUP, models.VERSION, models.PLURAL)
@kopf.on.create(models.GROUP, models.VERSION, models.PLURAL)
@kopf.on.update(models.GROUP, models.VERSION, models.PLURAL)
def reconcile_model_deployment(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    _reconcile(dict(body), logger)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
def child_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """A child changed or vanished: re-render its owner, which puts back any drift."""
    owner = (body.get("metadata", {}).get("labels") or {}).get(render.LABEL_OWNER)
    namespace = body.get("metadata", {}).get("namespace")
    if not owner or not namespace:
        return
    try:
        _reconcile({"metadata": {"namespace": namespace, "name": owner}}, logger)
    except kopf.TemporaryError as error:
        logger.warning("will retry on the next change: %s", error)
