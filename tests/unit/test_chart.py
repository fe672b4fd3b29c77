"""The Helm chart in charts/slipway: lint clean, and the same objects as the kustomize base.

Rendered with the real helm (``helm.sh/helm/v4``, built and cached by ``make tools``) and
compared, object for object, with ``kubectl kustomize`` of manifests/ and manifests/namespaced/
(the kubectl of ``make binaries``: skipped, saying so, before it is built). Normalised only by
what Helm adds of its own: the labels app.kubernetes.io/instance, app.kubernetes.io/managed-by
and helm.sh/chart. ``tests/cluster/test_chart_install.py`` installs the chart on the local
cluster and runs the operator from it.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest
import yaml

from slipway_dev import binaries
from tests.conftest import ROOT
from tests.unit.test_manifests import MANIFESTS, NAMESPACED, kustomize

CHART = ROOT / "charts" / "slipway"
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart")
NAMESPACE = "slipway-system"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(binaries.ensure_helm(verbose=False)), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stderr}{done.stdout}"
    return done


def template(*sets: str, strings: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", "slipway", str(CHART), "-n", NAMESPACE, "--include-crds"]
    for value in sets:
        args += ["--set", value]
    for value in strings:
        args += ["--set-string", value]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def normalised(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for obj in objects:
        obj = copy.deepcopy(obj)
        labels = obj["metadata"].get("labels") or {}
        for label in HELM_LABELS:
            labels.pop(label, None)
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = obj
    return out


def assert_same(chart: list[dict[str, Any]], base: list[dict[str, Any]]) -> None:
    ours, theirs = normalised(chart), normalised(base)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key] == theirs[key], f"{key} differs:\n" + yaml.safe_dump(
            {"chart": ours[key], "kustomize": theirs[key]}, width=100)


def test_helm_lint_is_clean_even_strict() -> None:
    done = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in done.stdout


def test_the_default_render_is_the_kustomize_base_object_for_object() -> None:
    """The release namespace is Helm's (`--create-namespace`); with namespace.create the
    Namespace with its Pod Security labels is rendered too, and nothing else changes."""
    base = kustomize(MANIFESTS)
    assert_same(template(), [o for o in base if o["kind"] != "Namespace"])
    assert_same(template("namespace.create=true"), base)


def test_watch_namespace_renders_the_namespaced_variant() -> None:
    assert_same(template("namespace.create=true", "watchNamespace=models"),
                kustomize(NAMESPACED))


def test_the_chart_carries_the_generated_crd() -> None:
    ours = (CHART / "crds" / "modeldeployments.slipway.dev.yaml").read_text()
    assert ours == (ROOT / "crds" / "modeldeployments.slipway.dev.yaml").read_text(), \
        "charts/slipway/crds/ is out of date: run `make crd`"


def operator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment, = [o for o in objects if o["kind"] == "Deployment"]
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def test_values_change_what_they_say() -> None:
    objects = template("replicas=1", "logFormat=json", "metrics.enabled=false",
                       "admissionPolicy.enabled=false", "image.tag=0.2.0",
                       "extraEnv[0].name=SLIPWAY_RECONCILE_WORKERS",
                       strings=("extraEnv[0].value=16",))
    kinds = {o["kind"] for o in objects}
    assert "PodDisruptionBudget" not in kinds  # one replica: a PDB would block every drain
    assert "ValidatingAdmissionPolicy" not in kinds
    container = operator(objects)
    assert container["image"] == "ghcr.io/slipway-dev/slipway-operator:0.2.0"
    assert container["args"] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["SLIPWAY_LOG_FORMAT"], env["SLIPWAY_RECONCILE_WORKERS"]) == ("json", "16")
    assert [p["name"] for p in container["ports"]] == ["health"]
    policy, = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"] == []


@pytest.mark.parametrize(("value", "says"), [
    ("logFormat=xml", "value must be one of 'text', 'json'"),
    ("replicas=0", "/replicas"),
    ("watchNamespace=Bad_NS", "/watchNamespace"),
    ("metrics.port=8080", "8080 is the operator's health port"),
    ("extraEnv[0].name=POD_NAME", "POD_NAME is set by the chart"),
    ("imageTag=1", "additional properties 'imageTag' not allowed"),
])
def test_bad_values_are_refused_saying_which(value: str, says: str) -> None:
    done = helm("template", "slipway", str(CHART), "--set", value, check=False)
    assert done.returncode != 0 and says in done.stderr, done.stderr
