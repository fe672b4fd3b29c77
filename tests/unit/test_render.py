"""Rendering is pure, deterministic, schema-valid and passes the restricted Pod Security rules."""

from __future__ import annotations

import copy
import os
from typing import Any

import kubernetes_validate
import pytest
import yaml

from slipway.api import crd, validation
from slipway.logic import render
from tests import pss
from tests.conftest import EXAMPLES, GOLDEN

EXAMPLE_FILES = ["minimal.yaml", "complete.yaml", "reference.yaml", "mlserver-iris.yaml"]
K8S_SCHEMA_VERSION = "1.36.0"


def load(example: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / example).read_text())


def rendered(doc: dict[str, Any], **meta: Any) -> render.Rendered:
    spec = validation.parse_document(doc)
    base = render.Meta.from_body(doc)
    return render.render(spec, render.Meta(**{**base.__dict__, **meta}))


OWNED = {"uid": "6f1c5a4e-0000-4000-8000-000000000001", "generation": 3}


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_rendering_matches_the_golden_file(example: str) -> None:
    out = rendered(load(example), **OWNED)
    text = "".join("---\n" + crd.dump_yaml(obj) for obj in out.objects())
    golden = GOLDEN / example.replace(".yaml", ".rendered.yaml")
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "set SLIPWAY_UPDATE_GOLDEN=1 to accept the new output"


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_rendered_objects_pass_the_official_kubernetes_schemas(example: str) -> None:
    for obj in rendered(load(example), **OWNED).objects():
        kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_rendered_pod_template_passes_restricted_pod_security(example: str) -> None:
    pod_spec = rendered(load(example)).deployment["spec"]["template"]["spec"]
    assert pss.violations(pod_spec) == []


def test_the_restricted_checker_catches_a_weakened_pod() -> None:
    pod_spec = copy.deepcopy(rendered(load("minimal.yaml")).deployment["spec"]["template"]["spec"])
    del pod_spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    pod_spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(pss.violations(pod_spec)) == 2


def test_rendering_is_deterministic() -> None:
    first = rendered(load("complete.yaml"), **OWNED)
    second = rendered(load("complete.yaml"), **OWNED)
    assert first == second
    assert first.revision == second.revision


def test_revision_changes_with_the_image_and_not_with_rollout_settings() -> None:
    doc = load("minimal.yaml")
    before = rendered(doc).revision
    doc["spec"]["rollout"] = {"progressDeadlineSeconds": 120}
    assert rendered(doc).revision == before
    doc["spec"]["runtime"]["image"] = "registry.example.com/slipway/reference-model:1.0.1"
    assert rendered(doc).revision != before


def test_a_pod_going_away_drains_before_its_sigterm_unless_turned_off() -> None:
    doc = load("minimal.yaml")
    pod = rendered(doc).deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == 35  # the drain, then 30 s to stop
    doc["spec"]["runtime"]["drainSeconds"] = 0
    off = rendered(doc).deployment["spec"]["template"]["spec"]
    assert "lifecycle" not in off["containers"][0]
    assert off["terminationGracePeriodSeconds"] == 30
    doc["spec"]["runtime"]["drainSeconds"] = 121
    with pytest.raises(validation.SpecError, match="drainSeconds"):
        rendered(doc)


def test_revision_label_is_on_the_pods_but_not_in_the_immutable_selector() -> None:
    deployment = rendered(load("minimal.yaml")).deployment
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert labels[render.LABEL_REVISION] == deployment["metadata"]["labels"][render.LABEL_REVISION]
    assert render.LABEL_REVISION not in selector
    assert render.LABEL_VERSION not in selector
    assert all(labels[k] == v for k, v in selector.items())


def test_recommended_labels_and_model_env_are_set() -> None:
    deployment = rendered(load("minimal.yaml")).deployment
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "iris-classifier"
    assert labels["app.kubernetes.io/version"] == "1.0.0"
    assert labels["app.kubernetes.io/managed-by"] == "slipway"
    env = {e["name"]: e.get("value") for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODEL_NAME"] == "iris-classifier"
    assert env["MODEL_VERSION"] == "1.0.0"
    assert env["MODEL_URI"] == "file:///models/iris/1.0.0/model.json"


def test_replicas_are_left_to_an_autoscaler_when_unset() -> None:
    doc = load("minimal.yaml")
    assert "replicas" not in rendered(doc).deployment["spec"]
    doc["spec"]["replicas"] = 2
    assert rendered(doc).deployment["spec"]["replicas"] == 2


def test_owner_reference_points_at_the_model_deployment() -> None:
    out = rendered(load("minimal.yaml"), **OWNED)
    for obj in out.objects():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
                       "name": "iris", "uid": OWNED["uid"], "controller": True,
                       "blockOwnerDeletion": True}


def test_probes_default_to_a_startup_probe_for_slow_loading_models() -> None:
    container = rendered(load("minimal.yaml")).deployment["spec"]["template"]["spec"][
        "containers"][0]
    assert "initialDelaySeconds" not in container["livenessProbe"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http",
                                                       "scheme": "HTTP"}


def test_read_only_root_with_a_writable_tmp() -> None:
    pod = rendered(load("minimal.yaml")).deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_gpu_placement_reaches_the_pod() -> None:
    pod = rendered(load("complete.yaml")).deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["serviceAccountName"] == "fraud-scorer"
    assert "automountServiceAccountToken" not in pod


def test_service_selects_every_revision_on_the_named_port() -> None:
    out = rendered(load("complete.yaml"))
    assert out.service["spec"]["selector"] == out.deployment["spec"]["selector"]["matchLabels"]
    assert out.service["spec"]["ports"][0]["targetPort"] == "http"


def test_reference_example_carries_the_bundles_own_contract() -> None:
    import json

    spec = load("reference.yaml")["spec"]
    for side in ("input", "output"):
        bundle = json.loads((EXAMPLES / "bundle" / "schemas" / f"{side}.schema.json").read_text())
        assert spec["schema"][side] == bundle, f"examples/reference.yaml schema.{side} drifted"


def _fetched(uri: str, **model: Any) -> dict[str, Any]:
    doc = load("minimal.yaml")
    doc["spec"]["model"].update(uri=uri, **model)
    return doc


def test_a_fetched_artifact_gets_an_init_container_of_the_operators_image() -> None:
    digest = "sha256:" + "ab" * 32
    out = rendered(_fetched("s3://models/iris/1.0.0/", digest=digest,
                            credentialsSecret="iris-s3"), fetcher_image="reg.example/op:9")
    pod = out.deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == render.FETCH_CONTAINER and fetch["image"] == "reg.example/op:9"
    assert fetch["args"] == ["fetch", "--dest", "/mnt/models", "--termination-log",
                             "/dev/termination-log"]
    assert fetch["env"] == [{"name": "MODEL_URI", "value": "s3://models/iris/1.0.0/"},
                            {"name": "MODEL_DIGEST", "value": digest}]
    # the credentials reach the fetcher only: never the model server
    assert fetch["envFrom"] == [{"secretRef": {"name": "iris-s3"}}]
    server = pod["containers"][0]
    assert "iris-s3" not in str(server)
    assert {"name": "MODEL_PATH", "value": "/mnt/models/artifact"} in server["env"]
    # written by the fetcher, read-only for the server
    assert {"name": "model", "mountPath": "/mnt/models"} in fetch["volumeMounts"]
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True} in \
        server["volumeMounts"]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert fetch["securityContext"] == server["securityContext"]
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # the fetcher's image is part of what the pods are: a new one is a new revision
    again = rendered(_fetched("s3://models/iris/1.0.0/", digest=digest,
                              credentialsSecret="iris-s3"), fetcher_image="reg.example/op:10")
    assert again.revision != out.revision


@pytest.mark.parametrize(("uri", "path"), [
    ("https://models.example/iris/1.0.0/model.joblib", "/mnt/models/artifact/model.joblib"),
    ("http://models.example/iris/", "/mnt/models/artifact/model"),
    ("s3://models/iris/1.0.0/model.json", "/mnt/models/artifact/model.json"),
    ("s3://models/iris/1.0.0/", "/mnt/models/artifact"),
    ("s3://models", "/mnt/models/artifact"),
])
def test_model_path_says_where_the_fetched_file_or_folder_is(uri: str, path: str) -> None:
    out = rendered(_fetched(uri, insecureSkipDigest=True))
    pod = out.deployment["spec"]["template"]["spec"]
    assert {"name": "MODEL_PATH", "value": path} in pod["containers"][0]["env"]
    assert pod["initContainers"][0]["args"][-1] == "--no-verify"
    assert not any(e["name"] == "MODEL_DIGEST" for e in pod["initContainers"][0]["env"])


def test_a_model_slipway_does_not_fetch_renders_as_before() -> None:
    pod = rendered(load("minimal.yaml")).deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert not any(e["name"] == "MODEL_PATH" for e in pod["containers"][0]["env"])


def test_a_fetching_pod_passes_the_schemas_and_restricted_pod_security() -> None:
    out = rendered(_fetched("https://m.example/m.pkl", digest="sha256:" + "0" * 64))
    kubernetes_validate.validate(out.deployment, K8S_SCHEMA_VERSION, strict=True)
    assert pss.violations(out.deployment["spec"]["template"]["spec"]) == []


def test_the_pod_annotation_shows_the_uri_without_its_credentials() -> None:
    uri = "https://reader:hunter2@models.example/iris/model.pkl?X-Amz-Signature=abc#x"
    out = rendered(_fetched(uri, digest="sha256:" + "1" * 64))
    template = out.deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["slipway.dev/model-uri"] == \
        "https://models.example/iris/model.pkl"
    # the fetcher still gets the URI as written
    assert template["spec"]["initContainers"][0]["env"][0]["value"] == uri
