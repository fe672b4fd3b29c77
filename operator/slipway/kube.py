"""The one module that talks to the Kubernetes API (sync client; call it from plain ``def``).

Children are written with server-side apply under the field manager ``slipway``, and only when the
live object differs from the rendered one (or when what Slipway applied last has changed, so that
a field removed from the spec is removed from the child too). An unchanged reconcile therefore
makes no write at all, and drift in any field Slipway owns is put back.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from slipway import models, render

FIELD_MANAGER = "slipway"
APPLIED_HASH = "slipway.dev/applied-hash"

_lock = threading.Lock()


class ChildConflict(Exception):
    """A child's name is taken by an object that Slipway does not own and will not adopt."""


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    with _lock:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return kubernetes.client.ApiClient()


def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client())


def apps() -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client())


def custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client())


def _sanitize(obj: Any) -> Any:
    return api_client().sanitize_for_serialization(obj)


# --------------------------------------------------------------------------------------------
# Comparing desired with live


def is_subset(desired: Any, live: Any, path: str = "") -> bool:
    """True when every field of ``desired`` has the same value in ``live`` (extras ignored).

    The API server adds defaults and normalises quantities; both are tolerated.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        # Go's omitempty drops zero values on the way back: a missing 0/false/""/{} is equal.
        return all(
            is_subset(value, live[key], f"{path}.{key}") if key in live
            else _is_empty(value)
            for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(is_subset(d, l, f"{path}[]") for d, l in zip(desired, live, strict=True))
    if desired == live:
        return True
    if ".resources." in path or path.endswith(".sizeLimit"):
        try:
            return models.parse_quantity(desired) == models.parse_quantity(live)
        except (ValueError, TypeError):
            return False
    if isinstance(desired, int | str) and isinstance(live, int | str) and \
            not isinstance(desired, bool) and not isinstance(live, bool):
        return str(desired) == str(live)
    return False


def _is_empty(value: Any) -> bool:
    return value in (0, False, "", None) or value == {} or value == []


def applied_hash(obj: dict[str, Any]) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_applied_hash(obj: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {})[APPLIED_HASH] = applied_hash(obj)
    return out


def needs_write(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    return not is_subset(desired, live)


def check_ownership(desired: dict[str, Any], live: dict[str, Any]) -> None:
    """Refuse to take over an object that belongs to something else."""
    meta = live.get("metadata") or {}
    want = (desired["metadata"].get("ownerReferences") or [{}])[0].get("uid")
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") != want:
            raise ChildConflict(
                f"{live.get('kind')} {meta.get('name')} is controlled by {ref.get('kind')} "
                f"{ref.get('name')}; delete or rename it so that Slipway can create its own")
    if not (meta.get("ownerReferences") or []):
        labels = meta.get("labels") or {}
        owner = desired["metadata"]["labels"].get(render.LABEL_OWNER)
        if labels.get(render.LABEL_OWNER) != owner:
            raise ChildConflict(
                f"{live.get('kind')} {meta.get('name')} already exists and is not managed by "
                f"Slipway (no {render.LABEL_OWNER}={owner} label); delete or rename it")


# --------------------------------------------------------------------------------------------
# Reading and writing children


def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _sanitize(apps().read_namespaced_deployment(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def read_service(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _sanitize(core().read_namespaced_service(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    action: str  # "created", "updated" or "unchanged"
    live: dict[str, Any]


def _apply(kind: str, desired: dict[str, Any], live: dict[str, Any] | None) -> ApplyResult:
    name = desired["metadata"]["name"]
    namespace = desired["metadata"]["namespace"]
    body = with_applied_hash(desired)
    if live is not None:
        check_ownership(desired, live)
        if not needs_write(body, live):
            return ApplyResult(kind, name, "unchanged", live)
    kwargs = {"field_manager": FIELD_MANAGER, "force": True,
              "_content_type": "application/apply-patch+yaml"}
    if kind == "Deployment":
        result = apps().patch_namespaced_deployment(name, namespace, body, **kwargs)
    else:
        result = core().patch_namespaced_service(name, namespace, body, **kwargs)
    return ApplyResult(kind, name, "created" if live is None else "updated", _sanitize(result))


def apply_deployment(desired: dict[str, Any]) -> ApplyResult:
    meta = desired["metadata"]
    return _apply("Deployment", desired, read_deployment(meta["namespace"], meta["name"]))


def apply_service(desired: dict[str, Any]) -> ApplyResult:
    meta = desired["metadata"]
    return _apply("Service", desired, read_service(meta["namespace"], meta["name"]))


# --------------------------------------------------------------------------------------------
# The ModelDeployment itself


def read_model_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return custom().get_namespaced_custom_object(
            models.GROUP, models.VERSION, namespace, models.PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch ``status`` (lists such as conditions are replaced whole)."""
    custom().patch_namespaced_custom_object_status(
        models.GROUP, models.VERSION, namespace, models.PLURAL, name, {"status": status})
