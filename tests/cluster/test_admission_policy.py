"""Creating a ModelDeployment grants no more than creating its pods (the admission policy of
manifests/admission/), against the real API server's ValidatingAdmissionPolicy and RBAC."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.cluster.kube import Kubectl, load_yaml, wait_until
from tests.conftest import EXAMPLES, ROOT


def account(kubectl: Kubectl, namespace: str, name: str, rules: list[dict]) -> str:
    """A ServiceAccount with a Role of ``rules``; its user name, for --as."""
    kubectl.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": namespace}})
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": name, "namespace": namespace}, "rules": rules})
    kubectl.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                               "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": name,
                                 "namespace": namespace}]})
    return f"system:serviceaccount:{namespace}:{name}"


MODEL_DEPLOYMENTS = {"apiGroups": ["slipway.dev"], "resources": ["modeldeployments"],
                     "verbs": ["get", "list", "create", "patch", "update"]}
PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}


def apply_as(kubectl: Kubectl, user: str, doc: dict, namespace: str,
             *extra: str) -> subprocess.CompletedProcess[str]:
    return kubectl.run("--as", user, "apply", "-n", namespace, "-f", "-", *extra,
                       input=yaml.safe_dump(doc), check=False)


@pytest.fixture
def policy(kubectl: Kubectl, crd: str) -> None:
    kubectl.run("apply", "-k", str(ROOT / "manifests" / "admission"))


def test_only_who_may_create_pods_may_create_or_change_a_model_deployment(
    kubectl: Kubectl, namespace: str, policy: None,
) -> None:
    # Given a user who may create ModelDeployments but not pods, and one who may do both
    md_only = account(kubectl, namespace, "md-author", [MODEL_DEPLOYMENTS])
    with_pods = account(kubectl, namespace, "pod-author", [MODEL_DEPLOYMENTS, PODS])
    doc = load_yaml(EXAMPLES / "minimal.yaml")

    # When the first creates one, Then it is refused, naming the user and the namespace
    # (the policy takes a moment to be in force after it is created: wait for the refusal)
    def refused() -> str | None:
        result = apply_as(kubectl, md_only, doc, namespace, "--dry-run=server")
        return result.stderr if result.returncode != 0 else None

    error = wait_until(refused, timeout=60, what="the policy to refuse md-author")
    assert f"a ModelDeployment runs pods: {md_only} may not create pods in namespace " \
           f"{namespace}" in error, error
    # And the one who may create pods is admitted, for real
    result = apply_as(kubectl, with_pods, doc, namespace)
    assert result.returncode == 0, result.stderr
    # When the first changes the spec, or asks for a retry, Then that is refused too: either
    # starts pods
    patch = {"spec": {"runtime": {"image": "ghcr.io/slipway-dev/sklearn-server:1.4.3"}}}
    spec_change = kubectl.run("--as", md_only, "patch", "md", "iris", "-n", namespace,
                              "--type", "merge", "-p", json.dumps(patch), check=False)
    assert spec_change.returncode != 0 and "may not create pods" in spec_change.stderr
    retry = kubectl.run("--as", md_only, "annotate", "md", "iris", "-n", namespace,
                        "slipway.dev/retry=now", check=False)
    assert retry.returncode != 0 and "may not create pods" in retry.stderr
    # But a metadata-only change starts no pod and is let through
    label = kubectl.run("--as", md_only, "label", "md", "iris", "-n", namespace, "team=ml",
                        check=False)
    assert label.returncode == 0, label.stderr
