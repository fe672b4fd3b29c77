"""The one module that talks to the Kubernetes API (sync client; call it from plain ``def``).

Children are written with server-side apply under the field manager ``slipway``, and only when the
live object differs from the rendered one (or when what Slipway applied last has changed, so that
a field removed from the spec is removed from the child too). An unchanged reconcile therefore
makes no write at all, and drift in any field Slipway owns is put back.

Every call has a timeout (``REQUEST_TIMEOUT``: connect, read), so a stalled API server holds a
reconcile thread for seconds, not forever; ``TRANSPORT_ERRORS`` are what a caller treats as
transient besides 5xx/409/429 answers.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from slipway.api import models
from slipway.clients import cache
from slipway.logic import render

FIELD_MANAGER = "slipway"
APPLIED_HASH = "slipway.dev/applied-hash"
REQUEST_TIMEOUT = (5.0, 30.0)  # seconds to connect, seconds between bytes of the answer
# The connection failed or broke (refused, reset, timed out, TLS): retry later, like a 5xx.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (urllib3.exceptions.HTTPError,)

POOL_CONNECTIONS = 32
_lock = threading.Lock()


class ChildConflict(Exception):
    """A child's name is taken by an object that Slipway does not own and will not adopt."""


class OwnerGone(Exception):
    """The ModelDeployment is being deleted: adopting now would undo an orphaning delete."""


class StatusConflict(Exception):
    """A status write was refused: the object changed since the copy it was decided on."""


class NotLeader(Exception):
    """A write was refused before it was sent: this process does not hold the leader Lease
    (or no longer knows that it does). Nothing was written."""


# Set by the leader elector (``slipway run`` with leader election): every request but a GET is
# sent only while it answers True; the Lease's own requests are the exception. None: no fence.
FENCE: Callable[[], bool] | None = None


# A command-line client's choice (kubectl slipway --kubeconfig/--context): (file, context).
_KUBECONFIG: tuple[str | None, str | None] | None = None


def use_kubeconfig(config_file: str | None = None, context: str | None = None) -> None:
    """Talk to the cluster of this kubeconfig and context (None: kubectl's defaults, KUBECONFIG
    or ~/.kube/config and its current context) instead of the in-cluster or default one."""
    global _KUBECONFIG
    _KUBECONFIG = (config_file, context)
    api_client.cache_clear()


def kubeconfig_namespace() -> str:
    """The namespace of the chosen context, as kubectl takes it when -n is not given."""
    config_file, context = _KUBECONFIG or (None, None)
    contexts, current = kubernetes.config.list_kube_config_contexts(config_file=config_file)
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    with _lock:
        if _KUBECONFIG is not None:
            kubernetes.config.load_kube_config(config_file=_KUBECONFIG[0],
                                               context=_KUBECONFIG[1])
        else:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
        configuration = kubernetes.client.Configuration.get_default_copy()
        # One quick retry of a failed connection; the caller retries the rest with back-off.
        # Enough kept-alive connections for the reconcile workers and the fresh reads: beyond
        # the pool, each request would pay a TLS handshake (on both ends) again.
        configuration.connection_pool_maxsize = POOL_CONNECTIONS
        configuration.retries = urllib3.Retry(total=1, connect=1, read=0, status=0,
                                              redirect=0, raise_on_status=False)
        client = kubernetes.client.ApiClient(configuration)
        _with_default_timeout(client.rest_client)
        return client


def _with_default_timeout(rest: Any) -> None:
    """Give every request of this REST client REQUEST_TIMEOUT unless the call sets its own (the
    generated API methods pass none, and urllib3 then waits forever)."""
    request = rest.request

    def timed(method: str, url: str, headers: Any = None, body: Any = None,
              post_params: Any = None, _request_timeout: Any = None) -> Any:
        count_request(method, url)
        return request(method, url, headers=headers, body=body, post_params=post_params,
                       _request_timeout=_request_timeout or REQUEST_TIMEOUT)

    rest.request = timed


# Requests this process made, by (verb, resource): what a benchmark and the metrics show.
REQUESTS: collections.Counter[tuple[str, str]] = collections.Counter()
_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def request_kind(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a request, as the API server's audit log names them: get/list/
    create/patch/update/delete; "pods/status" for a subresource."""
    parts = [part for part in urllib.parse.urlsplit(url).path.split("/") if part]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return (method.lower(), "/".join(parts[:2]) or "/")
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] if rest else "namespaces"
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    verb = _VERBS.get(method.upper()) or ("get" if named else "list")
    return verb, resource


def count_request(method: str, url: str) -> None:
    """Count a reconcile's request (the leader Lease's renewals are counted by the elector's
    own metric: they are not the reconciles' cost)."""
    key = request_kind(method, url)
    if key[1] == "leases":
        return
    with _lock:
        REQUESTS[key] += 1


def requests_made() -> dict[tuple[str, str], int]:
    with _lock:
        return dict(REQUESTS)


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


def recheck_owner_before_adopting(desired: dict[str, Any], live: dict[str, Any]) -> None:
    """Before (re)adding our owner reference, read the owner afresh, as Kubernetes' own
    controllers do: if it is being deleted (say with --cascade=orphan, the garbage collector
    having just removed the reference), writing it back would get the child deleted."""
    refs = desired["metadata"].get("ownerReferences") or []
    if not refs:
        return
    if any(ref.get("uid") == refs[0]["uid"] for ref in live["metadata"].get("ownerReferences")
           or []):
        return
    owner = read_model_deployment(desired["metadata"]["namespace"], refs[0]["name"])
    if owner is None or owner["metadata"].get("uid") != refs[0]["uid"] or \
            owner["metadata"].get("deletionTimestamp"):
        raise OwnerGone(f"{refs[0]['kind']} {refs[0]['name']} is gone or being deleted")


# --------------------------------------------------------------------------------------------
# Reading and writing children


JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def request(method: str, path: str, *, body: Any = None, content_type: str = JSON,
            query: dict[str, str] | None = None, timeout: float | None = None,
            fenced: bool = True) -> dict[str, Any] | None:
    """One request to the API server, the JSON answer as a plain dict (None for an empty one);
    ApiException for an error answer. Straight through the client's REST layer: the generated
    API methods validate every argument and build typed models, which a reconcile turns back
    into dicts, for most of its CPU. ``body``: a dict (sent as JSON, which is valid YAML too)
    or text sent as it is. ``timeout``: seconds for the whole answer instead of REQUEST_TIMEOUT.
    A write (not GET) raises NotLeader, unsent, when the FENCE says this process does not lead;
    ``fenced=False`` only for the Lease itself."""
    fence = FENCE
    if fenced and method != "GET" and fence is not None and not fence():
        raise NotLeader(f"{method} {path}: not the leader")
    client = api_client()
    quoted = urllib.parse.quote(path)
    method, url, headers, _, _ = client.param_serialize(
        method, quoted, query_params=list((query or {}).items()),
        header_params={"Content-Type": content_type, "Accept": JSON},
        auth_settings=["BearerToken"])
    # A dict goes out as JSON (the REST layer encodes it, for YAML content types too); text
    # goes out as it is.
    response = client.call_api(method, url, header_params=headers, body=body,
                               _request_timeout=timeout)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return dict(json.loads(response.data)) if response.data else None


def _get(path: str) -> dict[str, Any] | None:
    """The object as a plain dict, or None when it does not exist."""
    try:
        return request("GET", path)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _items(path: str, selector: str) -> list[dict[str, Any]]:
    answer = request("GET", path, query={"labelSelector": selector}) or {}
    return list(answer.get("items") or [])


def _namespaced(group_version: str, namespace: str, plural: str, name: str = "",
                sub: str = "") -> str:
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{root}/namespaces/{namespace}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def is_ours(kind: str, body: Any) -> bool:
    """Whether the cache keeps ``body``: every ModelDeployment, and a child only with
    Slipway's label (the watches' server-side selector sends no other)."""
    labels = ((body or {}).get("metadata") or {}).get("labels") or {}
    return kind == cache.MODEL_DEPLOYMENT or labels.get(render.LABEL_MANAGED_BY) == render.MANAGER


def remember(kind: str, namespace: str, name: str, body: dict[str, Any] | None) -> None:
    """Put what the API server just said into the cache (write-through), as the watch would:
    a child only if it carries Slipway's label (the watch sees no other; a stranger's object
    of that name is never cached, so the next look at it is fresh too)."""
    if body is None or not is_ours(kind, body):
        cache.STORE.delete(kind, namespace, name)
    else:
        cache.STORE.put(kind, body)


def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """A fresh read (the cache is filled as well)."""
    body = _get(_namespaced("apps/v1", namespace, "deployments", name))
    remember(cache.DEPLOYMENT, namespace, name, body)
    return body


def read_service(namespace: str, name: str) -> dict[str, Any] | None:
    """A fresh read (the cache is filled as well)."""
    body = _get(_namespaced("v1", namespace, "services", name))
    remember(cache.SERVICE, namespace, name, body)
    return body


def _apply(kind: str, desired: dict[str, Any], live: dict[str, Any] | None) -> str:
    """Server-side apply ``desired`` unless ``live`` already matches; "created", "updated" or
    "unchanged"."""
    name = desired["metadata"]["name"]
    namespace = desired["metadata"]["namespace"]
    body = with_applied_hash(desired)
    if live is not None:
        check_ownership(desired, live)
        if not needs_write(body, live):
            return "unchanged"
        recheck_owner_before_adopting(desired, live)
    path = _namespaced("apps/v1", namespace, "deployments", name) if kind == "Deployment" \
        else _namespaced("v1", namespace, "services", name)
    answer = request("PATCH", path, body=body, content_type=APPLY_PATCH,
                     query={"fieldManager": FIELD_MANAGER, "force": "true"})
    remember(kind, namespace, name, answer)
    return "created" if live is None else "updated"


def apply_deployment(desired: dict[str, Any], live: dict[str, Any] | None) -> str:
    """``live``: the Deployment as the caller just read it (None: it does not exist)."""
    return _apply("Deployment", desired, live)


def apply_service(desired: dict[str, Any], live: dict[str, Any] | None) -> str:
    return _apply("Service", desired, live)


# --------------------------------------------------------------------------------------------
# The ModelDeployment itself


def _model_deployment(namespace: str, name: str, sub: str = "") -> str:
    return _namespaced(f"{models.GROUP}/{models.VERSION}", namespace, models.PLURAL, name, sub)


def read_model_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    """A fresh read (the cache is filled as well)."""
    body = _get(_model_deployment(namespace, name))
    remember(cache.MODEL_DEPLOYMENT, namespace, name, body)
    return body


def annotate_model_deployment(namespace: str, name: str,
                              annotations: dict[str, str]) -> dict[str, Any] | None:
    """Merge-patch annotations onto the ModelDeployment (``kubectl slipway retry``); None when
    it does not exist."""
    try:
        return request("PATCH", _model_deployment(namespace, name),
                       body={"metadata": {"annotations": annotations}},
                       content_type=MERGE_PATCH)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_status(namespace: str, name: str, status: dict[str, Any],
                 version: str | None = None) -> str | None:
    """Merge-patch ``status`` (lists such as conditions are replaced whole); the object's
    resourceVersion after the write (the answer goes into the cache). ``version``: the
    resourceVersion the status was decided on, sent as a precondition: if anyone wrote the
    object since (a newer leader, the user), the API server refuses with 409 and nothing is
    written; the fresh copy is read into the cache and StatusConflict raised."""
    body: dict[str, Any] = {"status": status}
    if version:
        body["metadata"] = {"resourceVersion": version}
    try:
        answer = request("PATCH", _model_deployment(namespace, name, "status"),
                         body=body, content_type=MERGE_PATCH) or {}
    except ApiException as error:
        if error.status == 404:
            cache.STORE.delete(cache.MODEL_DEPLOYMENT, namespace, name)
            raise OwnerGone(f"ModelDeployment {namespace}/{name} is gone") from error
        if error.status == 409 and version:
            fresh = read_model_deployment(namespace, name)
            now = (fresh or {}).get("metadata", {}).get("resourceVersion")
            raise StatusConflict(f"status of {namespace}/{name} was decided on resourceVersion "
                                 f"{version}, the API server holds {now}") from error
        raise
    if answer:
        remember(cache.MODEL_DEPLOYMENT, namespace, name, answer)
    version = (answer.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


# --------------------------------------------------------------------------------------------
# Pods of a ModelDeployment


def patch_pod_status(namespace: str, name: str, body: dict[str, Any]) -> bool:
    """Strategic-merge-patch a pod's status (conditions merge by type: only the ones in
    ``body`` change). False when the pod is gone, or is another pod of that name now (the uid
    in ``body`` is a precondition)."""
    try:
        answer = request("PATCH", _namespaced("v1", namespace, "pods", name, "status"),
                         body=body, content_type=STRATEGIC_MERGE_PATCH)
    except ApiException as error:
        if error.status == 404:
            cache.STORE.delete(cache.POD, namespace, name)
        if error.status in (404, 409):
            return False
        raise
    remember(cache.POD, namespace, name, answer)
    return True


def list_endpoint_slices(namespace: str, service: str) -> list[dict[str, Any]]:
    """The EndpointSlices of a Service (those its selector made, and any made by hand)."""
    return _items(_namespaced("discovery.k8s.io/v1", namespace, "endpointslices"),
                  f"kubernetes.io/service-name={service}")


# --------------------------------------------------------------------------------------------
# Rollback targets, kept as ControllerRevisions owned by the ModelDeployment


def status_reason(error: ApiException) -> str:
    """The ``reason`` of the Status object an API error came with ("" when there is none)."""
    try:
        document = json.loads(error.body or "{}")
    except (ValueError, RecursionError):
        return ""
    return str(document.get("reason") or "") if isinstance(document, dict) else ""


def create_event(body: dict[str, Any]) -> bool:
    """Post a core/v1 Event of a fixed name: True when created, False when one of that name
    is there already (the same announcement, posted before a crash or by a former leader).
    Only a 409 that says AlreadyExists means that; any other 409 (a proxy's, an overloaded
    API server's) is an error like a 500, and the announcement stays to be posted again."""
    namespace = body["metadata"]["namespace"]
    try:
        request("POST", _namespaced("v1", namespace, "events"), body=body)
    except ApiException as error:
        if error.status == 409 and status_reason(error) == "AlreadyExists":
            return False
        raise
    return True


def _revision_path(namespace: str, name: str = "") -> str:
    return _namespaced("apps/v1", namespace, "controllerrevisions", name)


def read_controller_revision(namespace: str, name: str) -> dict[str, Any] | None:
    """A fresh read (the cache is filled as well)."""
    body = _get(_revision_path(namespace, name))
    remember(cache.CONTROLLER_REVISION, namespace, name, body)
    return body


def create_controller_revision(body: dict[str, Any]) -> dict[str, Any]:
    """Create it, or return the existing one of that name (a retried step after a restart)."""
    meta = body["metadata"]
    # ControllerRevision.data is immutable and compared as raw bytes. Sent as YAML, the API
    # server converts it to canonical JSON (sorted keys, no spaces), the same bytes it produces
    # when it re-encodes the object for a metadata patch; sent as Python's JSON it would not, and
    # the garbage collector could never orphan or adopt the revision.
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    try:
        created = request("POST", _revision_path(meta["namespace"]), body=text,
                          content_type="application/yaml")
    except ApiException as error:
        if error.status != 409:
            raise
        created = None
    else:
        if created is None:
            raise ApiException(status=201, reason="created, but the answer had no body")
        remember(cache.CONTROLLER_REVISION, meta["namespace"], meta["name"], created)
        return created
    existing = read_controller_revision(meta["namespace"], meta["name"])
    if existing is None:
        raise ApiException(status=409, reason="ControllerRevision vanished while created")
    owners = existing["metadata"].get("ownerReferences") or []
    want = body["metadata"].get("ownerReferences") or []
    if want and not any(ref.get("controller") for ref in owners):
        # Left behind by an orphaning delete of an earlier ModelDeployment of this name: adopt.
        recheck_owner_before_adopting(body, existing)
        existing = request("PATCH", _revision_path(meta["namespace"], meta["name"]),
                           body={"metadata": {"ownerReferences": want}},
                           content_type=STRATEGIC_MERGE_PATCH) or existing
        remember(cache.CONTROLLER_REVISION, meta["namespace"], meta["name"], existing)
    elif want and not any(ref.get("uid") == want[0]["uid"] for ref in owners):
        raise ChildConflict(f"ControllerRevision {meta['name']} belongs to another owner; "
                            "delete it so that Slipway can record its rollback target")
    return existing


def delete_controller_revision(namespace: str, name: str) -> None:
    try:
        request("DELETE", _revision_path(namespace, name))
    except ApiException as error:
        if error.status != 404:
            raise
    cache.STORE.delete(cache.CONTROLLER_REVISION, namespace, name)


# --------------------------------------------------------------------------------------------
# The leader Lease (its requests pass no fence: they are how the fence is kept)


def _lease_path(namespace: str, name: str = "") -> str:
    return _namespaced("coordination.k8s.io/v1", namespace, "leases", name)


def read_lease(namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
    """The leader Lease, or None when there is none."""
    try:
        return request("GET", _lease_path(namespace, name), timeout=timeout)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def write_lease(body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Create the Lease (no resourceVersion in ``body``) or replace it (a PUT carrying the
    resourceVersion that was read: 409 Conflict if anyone wrote it since)."""
    meta = body["metadata"]
    if meta.get("resourceVersion"):
        answer = request("PUT", _lease_path(meta["namespace"], meta["name"]), body=body,
                         timeout=timeout, fenced=False)
    else:
        answer = request("POST", _lease_path(meta["namespace"]), body=body, timeout=timeout,
                         fenced=False)
    return answer or {}


# --------------------------------------------------------------------------------------------
# Reaching pods and Services from outside the cluster: the API server's proxy


@dataclasses.dataclass(frozen=True)
class ApiProxy:
    """How to send HTTP through the API server with the operator's own credentials."""

    server: str
    verify: str | bool
    cert: tuple[str, str] | None
    headers: dict[str, str]

    def pod_url(self, namespace: str, pod: str, port: int) -> str:
        return f"{self.server}/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy"

    def service_url(self, namespace: str, service: str, port_name: str) -> str:
        return f"{self.server}/api/v1/namespaces/{namespace}/services/{service}:{port_name}/proxy"


def api_proxy() -> ApiProxy:
    config = api_client().configuration
    headers = {}
    token = config.get_api_key_with_prefix("authorization") or config.get_api_key_with_prefix(
        "BearerToken")
    if token:
        headers["Authorization"] = token
    verify: str | bool = config.ssl_ca_cert or bool(config.verify_ssl)
    cert = (config.cert_file, config.key_file) if config.cert_file and config.key_file else None
    return ApiProxy(server=config.host.rstrip("/"), verify=verify, cert=cert, headers=headers)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
