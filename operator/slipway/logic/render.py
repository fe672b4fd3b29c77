"""Render a ModelDeployment into the Deployment and Service that serve it.

Pure and deterministic: the same spec and metadata always give the same objects, byte for byte,
so ``slipway render`` shows a reviewer exactly what the operator will apply, golden files can pin
the output, and the revision hash is stable across operator restarts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from slipway import __version__
from slipway.api import models
from slipway.logic import artifact

CONTAINER_NAME = "model-server"
PORT_NAME = "http"
SERVICE_PORT = 80
MANAGER = "slipway"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = "slipway.dev/model-deployment"
LABEL_REVISION = "slipway.dev/revision"
STOP_GRACE_SECONDS = 30  # from SIGTERM to SIGKILL, after the drain
ANNOTATION_GENERATION = "slipway.dev/generation"
ANNOTATION_MODEL_URI = "slipway.dev/model-uri"

TMP_VOLUME = "tmp"
MODEL_VOLUME = "model"  # the fetched artifact: written by the init container, read by the server
FETCH_CONTAINER = artifact.FETCH_CONTAINER
# The operator's own image runs `slipway fetch` (no second image to maintain). The operator
# takes it from SLIPWAY_FETCHER_IMAGE, which the manifests and the chart set to the image they
# run; this default is the image of this very version.
DEFAULT_FETCHER_IMAGE = f"ghcr.io/slipway-dev/slipway-operator:{__version__}"
TERMINATION_LOG = "/dev/termination-log"
FETCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
GATE = "slipway.dev/verified"  # the pod condition behind every rendered pod's readiness gate


@dataclasses.dataclass(frozen=True)
class Meta:
    """What the renderer needs of the ModelDeployment's metadata."""

    name: str
    namespace: str
    uid: str | None = None
    generation: int | None = None
    fetcher_image: str = DEFAULT_FETCHER_IMAGE  # the init container's, for a fetched artifact

    @classmethod
    def from_body(cls, body: dict[str, Any], fetcher_image: str = DEFAULT_FETCHER_IMAGE) -> Meta:
        meta = body.get("metadata") or {}
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            fetcher_image=fetcher_image,
        )


@dataclasses.dataclass(frozen=True)
class Rendered:
    revision: str
    deployment: dict[str, Any]
    service: dict[str, Any]

    def objects(self) -> list[dict[str, Any]]:
        return [self.deployment, self.service]


def selector_labels(meta: Meta) -> dict[str, str]:
    """Labels that select every pod of a ModelDeployment, whatever its revision.

    They never change for a given object: a Deployment's selector is immutable.
    """
    return {LABEL_OWNER: meta.name, LABEL_MANAGED_BY: MANAGER}


def common_labels(spec: models.ModelDeploymentSpec, meta: Meta) -> dict[str, str]:
    return {
        LABEL_NAME: spec.model.name,
        LABEL_INSTANCE: meta.name,
        LABEL_VERSION: spec.model.version,
        LABEL_COMPONENT: "model-server",
        **selector_labels(meta),
    }


def owner_references(meta: Meta) -> list[dict[str, Any]]:
    if not meta.uid:
        return []
    return [{
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]


def _probe(probe: models.Probe) -> dict[str, Any]:
    out: dict[str, Any] = {
        "httpGet": {"path": probe.path, "port": probe.port or PORT_NAME, "scheme": "HTTP"}}
    if probe.initial_delay_seconds:  # the API server drops a zero, so do we
        out["initialDelaySeconds"] = probe.initial_delay_seconds
    return out | {
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }


def _dump(model: models.Base) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _env(spec: models.ModelDeploymentSpec) -> list[dict[str, Any]]:
    env = [
        {"name": "MODEL_NAME", "value": spec.model.name},
        {"name": "MODEL_VERSION", "value": spec.model.version},
        {"name": "MODEL_URI", "value": spec.model.uri},
    ]
    if spec.model.digest:
        env.append({"name": "MODEL_DIGEST", "value": spec.model.digest})
    if spec.model.fetched:
        env.append({"name": "MODEL_PATH", "value": artifact.model_path(spec.model.uri)})
    env.append({"name": "PORT", "value": str(spec.runtime.port)})
    env.extend(_dump(var) for var in spec.runtime.env)
    return env


def _resources(spec: models.ModelDeploymentSpec) -> dict[str, Any]:
    if spec.runtime.resources is None:
        return {}
    return _dump(spec.runtime.resources)


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def render_fetch_container(spec: models.ModelDeploymentSpec, image: str) -> dict[str, Any]:
    """The init container that fetches a fetched artifact and checks its digest: the
    operator's own image running `slipway fetch`. On failure its termination message starts
    with ArtifactFetchFailed or ArtifactDigestMismatch, which the operator reports."""
    env = [{"name": "MODEL_URI", "value": spec.model.uri}]
    if spec.model.digest:
        env.append({"name": "MODEL_DIGEST", "value": spec.model.digest})
    args = ["fetch", "--dest", models.MODEL_MOUNT, "--termination-log", TERMINATION_LOG]
    if spec.model.insecure_skip_digest:
        args.append("--no-verify")
    container: dict[str, Any] = {"name": FETCH_CONTAINER, "image": image, "args": args,
                                 "env": env}
    if spec.model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    container["resources"] = json.loads(json.dumps(FETCH_RESOURCES))
    container["securityContext"] = _security_context()
    container["volumeMounts"] = [{"name": MODEL_VOLUME, "mountPath": models.MODEL_MOUNT},
                                 {"name": TMP_VOLUME, "mountPath": "/tmp"}]
    container["imagePullPolicy"] = "IfNotPresent"
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def render_container(spec: models.ModelDeploymentSpec) -> dict[str, Any]:
    runtime = spec.runtime
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": runtime.image}
    if runtime.command is not None:
        container["command"] = list(runtime.command)
    if runtime.args is not None:
        container["args"] = list(runtime.args)
    container["ports"] = [{"name": PORT_NAME, "containerPort": runtime.port, "protocol": "TCP"}]
    container["env"] = _env(spec)
    if runtime.env_from:
        container["envFrom"] = [_dump(source) for source in runtime.env_from]
    container["resources"] = _resources(spec)
    container["readinessProbe"] = _probe(spec.probes.readiness)
    container["livenessProbe"] = _probe(spec.probes.liveness)
    container["startupProbe"] = _probe(spec.probes.startup)
    container["securityContext"] = _security_context()
    container["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if spec.model.fetched:
        container["volumeMounts"].append(
            {"name": MODEL_VOLUME, "mountPath": models.MODEL_MOUNT, "readOnly": True})
    if spec.runtime.drain_seconds:
        # Endpoints and proxies learn of a deletion a moment after the kubelet does: the pod
        # serves on meanwhile, and only then gets its SIGTERM.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.runtime.drain_seconds}}}
    container["imagePullPolicy"] = "IfNotPresent"
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def render_pod_template(spec: models.ModelDeploymentSpec, meta: Meta) -> dict[str, Any]:
    """The pod template without the revision label (the revision is its hash)."""
    placement = spec.placement
    pod_spec: dict[str, Any] = {}
    if spec.model.fetched:
        pod_spec["initContainers"] = [render_fetch_container(spec, meta.fetcher_image)]
    pod_spec.update({
        "containers": [render_container(spec)],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.runtime.run_as_user,
            "runAsGroup": spec.runtime.run_as_user,
            "fsGroup": spec.runtime.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": STOP_GRACE_SECONDS + spec.runtime.drain_seconds,
        # No traffic before this very pod passed its smoke tests: the operator opens the gate.
        "readinessGates": [{"conditionType": GATE}],
    })
    if spec.model.fetched:
        pod_spec["volumes"].append({"name": MODEL_VOLUME, "emptyDir": {}})
    if placement.service_account_name:
        pod_spec["serviceAccountName"] = placement.service_account_name
    else:
        # A model server needs no API access: no token unless the user names an account.
        pod_spec["automountServiceAccountToken"] = False
    if placement.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in placement.image_pull_secrets]
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        pod_spec["tolerations"] = [_dump(t) for t in placement.tolerations]
    if placement.affinity:
        pod_spec["affinity"] = placement.affinity
    if placement.priority_class_name:
        pod_spec["priorityClassName"] = placement.priority_class_name

    labels = {**dict(sorted(placement.pod_labels.items())), **common_labels(spec, meta)}
    annotations = {**dict(sorted(placement.pod_annotations.items())),
                   ANNOTATION_MODEL_URI: artifact.shown(spec.model.uri)}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def revision_of(pod_template: dict[str, Any]) -> str:
    """A stable id of what shapes the pods: 10 hex characters of a SHA-256."""
    canonical = json.dumps(pod_template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def checks_of(spec: models.ModelDeploymentSpec) -> str:
    """A stable id of what a verdict rests on besides the pods: the smoke tests, the contract,
    the scoring path and how the tests are sent. A new generation that changes none of these
    nor the pod template (a replica count, a rollback setting) keeps its verdict."""
    parts = {
        "smokeTests": [_dump(test) for test in spec.smoke_tests],
        "schema": _dump(spec.schema_),
        "scoringPath": spec.runtime.scoring_path,
        "timeout": spec.rollout.smoke_test_timeout_seconds,
        "attempts": spec.rollout.smoke_test_attempts,
        "deadline": spec.rollout.verification_deadline_seconds,
    }
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def with_revision(pod_template: dict[str, Any], revision: str) -> dict[str, Any]:
    template = json.loads(json.dumps(pod_template))
    template["metadata"]["labels"][LABEL_REVISION] = revision
    return template


def render_deployment(
    spec: models.ModelDeploymentSpec,
    meta: Meta,
    *,
    pod_template: dict[str, Any] | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The Deployment; ``pod_template``/``revision`` override the spec's (used to roll back)."""
    if pod_template is None:
        pod_template = render_pod_template(spec, meta)
    revision = revision or revision_of(pod_template)
    labels = {**common_labels(spec, meta), LABEL_REVISION: revision}
    annotations = {ANNOTATION_GENERATION: str(meta.generation)} if meta.generation else {}
    deployment_spec: dict[str, Any] = {}
    if spec.replicas is not None:
        deployment_spec["replicas"] = spec.replicas
    deployment_spec.update({
        "selector": {"matchLabels": selector_labels(meta)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": spec.rollback.revision_history_limit,
        "template": with_revision(pod_template, revision),
    })
    metadata: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    if owner_references(meta):
        metadata["ownerReferences"] = owner_references(meta)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
            "spec": deployment_spec}


def render_service(spec: models.ModelDeploymentSpec, meta: Meta) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": meta.name, "namespace": meta.namespace, "labels": common_labels(spec, meta),
    }
    if owner_references(meta):
        metadata["ownerReferences"] = owner_references(meta)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(meta),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME,
                       "protocol": "TCP"}],
        },
    }


def render(spec: models.ModelDeploymentSpec, meta: Meta) -> Rendered:
    template = render_pod_template(spec, meta)
    revision = revision_of(template)
    return Rendered(
        revision=revision,
        deployment=render_deployment(spec, meta, pod_template=template, revision=revision),
        service=render_service(spec, meta),
    )
