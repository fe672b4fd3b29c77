"""Whatever a spec says, the pod Slipway renders is "restricted": a property over generated specs.

Hypothesis writes the specs, mixing well-formed values with the hostile ones a tenant would try
(AppArmor and seccomp annotations, runtime switches, root, system priority classes, free-form
affinity). A spec is either refused by validation, or renders to a pod template that the
restricted checker passes and that carries no annotation that changes the security profile.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slipway.api import models, validation
from slipway.logic import render
from tests import pss
from tests.conftest import EXAMPLES

BASE = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())

HOSTILE_ANNOTATIONS = [
    "container.apparmor.security.beta.kubernetes.io/model-server",
    "seccomp.security.alpha.kubernetes.io/pod",
    "container.seccomp.security.alpha.kubernetes.io/model-server",
    "kubernetes.io/psp", "pod-security.kubernetes.io/enforce", "k8s.io/anything",
    "io.kubernetes.cri-o.userns-mode", "io.kubernetes.cri-o.Devices",
    "io.kubernetes.cri-o.TrySkipVolumeSELinuxLabel", "run.oci.keep_original_groups",
    "io.katacontainers.config.hypervisor.kernel_params", "io.containerd.runc.v2.group",
    "slipway.dev/model-uri", "cluster-autoscaler.kubernetes.io/safe-to-evict",
    "kubectl.kubernetes.io/default-container", "example.com/team", "team",
]
NAMES = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
KEYS = st.one_of(st.sampled_from(HOSTILE_ANNOTATIONS),
                 st.from_regex(r"\A([a-z0-9]{1,8}\.){0,2}[a-z]{1,8}/[A-Za-z0-9]{1,10}\Z"),
                 st.text(max_size=20))
VALUES = st.one_of(st.sampled_from(["unconfined", "runtime/default", "localhost/x", "true",
                                    "host", "0", ""]), st.text(max_size=20))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=10)

PLACEMENT = st.fixed_dictionaries({}, optional={
    "podAnnotations": st.dictionaries(KEYS, VALUES, max_size=4),
    "podLabels": st.dictionaries(KEYS, st.from_regex(r"\A[a-z0-9]{0,8}\Z"), max_size=3),
    "serviceAccountName": st.one_of(NAMES, st.just("default"), st.text(max_size=10)),
    "imagePullSecrets": st.lists(NAMES, max_size=2),
    "nodeSelector": st.dictionaries(KEYS, st.from_regex(r"\A[a-z0-9]{0,8}\Z"), max_size=2),
    "tolerations": st.lists(st.fixed_dictionaries({"operator": st.just("Exists")}, optional={
        "key": st.sampled_from(["node-role.kubernetes.io/control-plane", "nvidia.com/gpu"]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute"])}), max_size=2),
    "affinity": st.dictionaries(st.sampled_from(["nodeAffinity", "podAffinity", "x"]), JSON,
                                max_size=2),
    "priorityClassName": st.one_of(st.sampled_from(["system-node-critical",
                                                    "system-cluster-critical", "high"]), NAMES),
})
RUNTIME = st.fixed_dictionaries({}, optional={
    "runAsUser": st.integers(min_value=-2, max_value=2**31),
    "command": st.lists(st.text(max_size=10), max_size=3),
    "args": st.lists(st.text(max_size=10), max_size=3),
    "port": st.integers(min_value=0, max_value=70000),
    "env": st.lists(st.fixed_dictionaries({"name": st.from_regex(r"\A[A-Z_]{1,8}\Z"),
                                           "value": st.text(max_size=8)}), max_size=3),
    "envFrom": st.lists(st.fixed_dictionaries({"secretRef": st.fixed_dictionaries(
        {"name": NAMES})}), max_size=1),
    "resources": st.fixed_dictionaries({}, optional={"limits": st.fixed_dictionaries(
        {}, optional={"cpu": st.sampled_from(["1", "500m", "-1"]),
                      "nvidia.com/gpu": st.sampled_from([1, 2])})}),
})
PROBE_PATHS = st.one_of(st.sampled_from(["/healthz", "/readyz", "/../x", "//h", "/a%2e"]),
                        st.text(max_size=12))


def _spec(placement: dict[str, Any], runtime: dict[str, Any], probe_path: str) -> dict[str, Any]:
    spec = copy.deepcopy(BASE["spec"])
    spec["placement"] = placement
    spec["runtime"] = {**spec["runtime"], **runtime}
    spec["probes"] = {"readiness": {"path": probe_path}}
    return spec


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(PLACEMENT, RUNTIME, PROBE_PATHS)
def test_the_rendered_pod_is_restricted_whatever_the_spec_says(
    placement: dict[str, Any], runtime: dict[str, Any], probe_path: str,
) -> None:
    raw = _spec(placement, runtime, probe_path)
    try:
        spec = validation.parse_spec(raw)
    except validation.SpecError as error:
        assert error.errors  # refused, naming what
        return
    meta = render.Meta(name="iris", namespace="models", uid="u-1", generation=1)
    template = render.render(spec, meta).deployment["spec"]["template"]
    assert pss.template_violations(template) == []
    for key in template["metadata"]["annotations"]:
        if key != render.ANNOTATION_MODEL_URI:
            assert models.annotation_key_problem(key) is None, key
    assert not str(template["spec"].get("priorityClassName", "")).startswith("system-")


def test_the_generator_reaches_both_outcomes() -> None:
    """The property above would hold vacuously if every spec were refused (or none were)."""
    outcomes: set[bool] = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(PLACEMENT, RUNTIME, PROBE_PATHS)
    def probe(placement: dict[str, Any], runtime: dict[str, Any], probe_path: str) -> None:
        try:
            validation.parse_spec(_spec(placement, runtime, probe_path))
            outcomes.add(True)
        except validation.SpecError:
            outcomes.add(False)

    probe()
    assert outcomes == {True, False}


def test_the_checker_catches_an_unconfined_apparmor_annotation() -> None:
    meta = render.Meta(name="iris", namespace="models", uid="u-1", generation=1)
    spec = validation.parse_spec(copy.deepcopy(BASE["spec"]))
    template = render.render(spec, meta).deployment["spec"]["template"]
    assert pss.template_violations(template) == []
    template["metadata"]["annotations"][pss.APPARMOR_PREFIX + "model-server"] = "unconfined"
    assert len(pss.template_violations(template)) == 1
