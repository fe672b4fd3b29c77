"""Fifty ModelDeployments on one operator: the properties of bench/scale.py, not its times.

- unrelated pods, Deployments and Services (another namespace, none of Slipway's labels) reach
  the operator as no watch event at all;
- a pod status change costs no API read: the reconcile works from the informer cache;
- a reconcile that finds nothing changed writes nothing, on fifty objects at once.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, TypeVar

import yaml

from slipway.engine import controller
from slipway.logic import render
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, load_yaml, wait_until
from tests.conftest import EXAMPLES

COUNT = 50
IMAGE = "registry.example.com/slipway/reference-model:1.0.0"
T = TypeVar("T")
READS = ("get", "list")
WRITES = ("create", "patch", "update", "delete")
CHILD_KINDS = {"Pod": "pods", "Deployment": "deployments", "Service": "services"}


def release(name: str) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / "reference.yaml")
    doc["metadata"] = {"name": name}
    doc["spec"]["replicas"] = 1
    doc["spec"]["runtime"]["image"] = IMAGE
    for probe in ("readiness", "liveness"):
        doc["spec"]["probes"][probe]["periodSeconds"] = 10
    return doc


def requests(operator: Operator, verbs: tuple[str, ...]) -> float:
    """Requests of these verbs the reconciles made, on any resource."""
    return sum(value for _, verb, _, value in _by_kind(operator) if verb in verbs)


def versions(kubectl: Kubectl, namespace: str, resource: str) -> dict[str, str]:
    items = kubectl.get(resource, namespace=namespace)["items"]
    return {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in items}


def changed(before: dict[str, str], after: dict[str, str]) -> int:
    """Objects created, deleted or modified between two snapshots (a lower bound of the watch
    events the operator may rightly have had)."""
    return len(set(before) ^ set(after)) + sum(
        1 for name in set(before) & set(after) if before[name] != after[name])


def all_ready(kubectl: Kubectl, namespace: str) -> bool:
    items = kubectl.get("md", namespace=namespace)["items"]
    return len(items) == COUNT and all(
        (md.get("status") or {}).get("phase") == "Ready"
        and (md.get("status") or {}).get("verifiedPods") == "1/1" for md in items)


def test_fifty_releases_cost_nothing_for_unrelated_objects_and_no_reads_per_pod_change(
    kubectl: Kubectl, operator: Operator, namespace: str,
) -> None:
    # Given fifty ModelDeployments, Ready, in one namespace
    names = [f"model-{i:02d}" for i in range(COUNT)]
    kubectl.apply(yaml.safe_dump_all([release(name) for name in names]), namespace)
    wait_until(lambda: all_ready(kubectl, namespace), timeout=420,
               what=f"{COUNT} ModelDeployments Ready with 1/1 verified pods",
               diagnose=lambda: kubectl.run("get", "md", "-n", namespace, check=False).stdout)
    assert operator.metric("slipway_cache_objects", kind="Pod") >= COUNT
    assert operator.metric("slipway_cache_objects", kind="ModelDeployment") >= COUNT

    # When unrelated objects churn in another namespace
    other = f"{namespace}-x"[:63]
    kubectl.run("create", "namespace", other)
    try:
        ours, events = settled(kubectl, operator, namespace)
        unrelated = []
        for i in range(COUNT):
            unrelated.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"unrelated-{i:02d}", "labels": {"app": "unrelated"}},
                "spec": {"nodeSelector": {"nowhere": "true"},
                         "containers": [{"name": "c", "image": IMAGE}]}})
        for i in range(10):
            labels = {"app": f"unrelated-{i}"}
            unrelated.append({"apiVersion": "apps/v1", "kind": "Deployment",
                              "metadata": {"name": f"unrelated-{i}", "labels": labels},
                              "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                                       "template": {"metadata": {"labels": labels},
                                                    "spec": {"containers": [
                                                        {"name": "c", "image": IMAGE}]}}}})
            unrelated.append({"apiVersion": "v1", "kind": "Service",
                              "metadata": {"name": f"unrelated-{i}", "labels": labels},
                              "spec": {"selector": labels, "ports": [{"port": 80}]}})
        kubectl.run("apply", "-n", other, "-f", "-", input=yaml.safe_dump_all(unrelated))
        kubectl.run("delete", "pods,deployments,services", "--all", "-n", other, "--wait=true",
                    timeout=120)
        # Then the operator received no event for them: any it got are its own objects'
        # changes meanwhile (normally none)
        for kind, resource in CHILD_KINDS.items():
            got = operator.metric("slipway_watch_events_total", kind=kind) - events[kind]
            moved = changed(ours[kind], versions(kubectl, namespace, resource))
            assert got <= moved, (f"{got:.0f} {kind} events while {moved} of Slipway's own "
                                  f"{resource} changed: unrelated objects reached the operator")
    finally:
        kubectl.run("delete", "namespace", other, "--wait=false", check=False)

    # When pods are replaced (a node drained, say): new pods, tested behind their gates
    reads, pod_events = requests(operator, READS), operator.metric(
        "slipway_watch_events_total", kind="Pod")
    replaced = names[:5]
    old = {pod["metadata"]["uid"] for pod in kubectl.get("pods", namespace=namespace)["items"]}
    for name in replaced:
        kubectl.run("delete", "pod", "-n", namespace, "-l", f"slipway.dev/model-deployment={name}",
                    "--wait=false")

    def replaced_and_verified() -> bool:
        pods = [pod for pod in kubectl.get("pods", namespace=namespace)["items"]
                if pod["metadata"]["labels"]["slipway.dev/model-deployment"] in replaced
                and not pod["metadata"].get("deletionTimestamp")]
        fresh = [pod for pod in pods if pod["metadata"]["uid"] not in old]
        return len(fresh) == len(replaced) and all(
            any(c["type"] == "Ready" and c["status"] == "True"
                for c in (pod.get("status") or {}).get("conditions") or []) for pod in fresh) \
            and all_ready(kubectl, namespace)

    wait_until(replaced_and_verified, timeout=180,
               what="the replaced pods verified behind their gates and Ready")
    # Then the operator saw every pod change and read nothing from the API server for them
    delivered = operator.metric("slipway_watch_events_total", kind="Pod") - pod_events
    assert delivered >= 3 * len(replaced), f"only {delivered:.0f} pod events delivered"
    made = requests(operator, READS) - reads
    assert made == 0, (f"{made:.0f} API reads for {delivered:.0f} pod changes; by kind: " +
                       json.dumps({f"{verb} {res}": v for (n, verb, res, v) in _by_kind(operator)
                                   if verb in READS}))

    # Once the progress still held back has been written (replica counts are written at most
    # every SLIPWAY_PROGRESS_FOLD_SECONDS, 5 s, after an object's last status write)
    quiet_writes(operator, quiet=controller.PROGRESS_FOLD_SECONDS + 2, timeout=60)
    # When every ModelDeployment is touched without a change to its spec
    writes = requests(operator, WRITES)
    writes_by_kind = {(verb, res): v for (_, verb, res, v) in _by_kind(operator)}
    reconciles = operator.metric("slipway_reconciles_total", result="ok")
    kubectl.run("annotate", "md", "--all", "-n", namespace, "example.com/touched=1")
    wait_until(lambda: operator.metric("slipway_reconciles_total", result="ok")
               >= reconciles + COUNT, timeout=60, what=f"{COUNT} reconciles")
    # Then nothing is written
    made = requests(operator, WRITES) - writes
    assert made == 0, (f"{made:.0f} writes for a change that changes nothing; by kind: " +
                       json.dumps({f"{verb} {res}": v - writes_by_kind.get((verb, res), 0)
                                   for (_, verb, res, v) in _by_kind(operator)
                                   if verb in WRITES and v != writes_by_kind.get((verb, res))}))


def settled(kubectl: Kubectl, operator: Operator, namespace: str, quiet: float = 3.0,
            ) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """Snapshots of Slipway's own children and of the watch events delivered so far, taken
    once every event of a change made before them has arrived: the resource versions are read,
    the event counters must then hold still for ``quiet`` seconds, and the versions must be the
    same afterwards (else again). Without this, the Deployment controller's last status write
    of a release just Ready could be read in the first snapshot and its event counted after
    the second, as if an unrelated object had reached the operator (CI saw 3). Before that,
    the children of earlier tests' namespaces must be gone: their deletion is delivered to the
    operator too, and is not in this namespace's snapshot (a fresh clone's run saw 1)."""
    def children() -> dict[str, dict[str, str]]:
        return {kind: versions(kubectl, namespace, res) for kind, res in CHILD_KINDS.items()}

    def events() -> dict[str, float]:
        return {kind: operator.metric("slipway_watch_events_total", kind=kind)
                for kind in CHILD_KINDS}

    # Slipway's children in the namespaces of earlier tests, still being deleted, are
    # delivered to the operator too (they carry its labels): wait until they are gone.
    wait_until(lambda: not terminating_children(kubectl), timeout=180,
               what="Slipway's children in terminating namespaces to be gone")
    deadline = time.monotonic() + 120
    while True:
        ours = children()
        delivered = still(events, quiet, deadline, "the watch events")
        if children() == ours:
            return ours, delivered
        assert time.monotonic() < deadline, "Slipway's own children kept changing for 120 s"


def terminating_children(kubectl: Kubectl) -> list[str]:
    """Slipway's pods, Deployments and Services in namespaces being deleted."""
    terminating = {ns["metadata"]["name"] for ns in kubectl.get("namespaces")["items"]
                   if (ns.get("status") or {}).get("phase") == "Terminating"}
    listed = json.loads(kubectl.run("get", ",".join(CHILD_KINDS.values()), "-A", "-l",
                                    f"{render.LABEL_MANAGED_BY}={render.MANAGER}", "-o",
                                    "json").stdout)
    return [f"{item['kind']} {item['metadata']['namespace']}/{item['metadata']['name']}"
            for item in listed["items"] if item["metadata"]["namespace"] in terminating]


def quiet_writes(operator: Operator, quiet: float, timeout: float) -> None:
    """Wait until the operator has made no write for ``quiet`` seconds."""
    still(lambda: requests(operator, WRITES), quiet, time.monotonic() + timeout,
          "the operator's writes")


def still(read: Callable[[], T], quiet: float, deadline: float, what: str) -> T:
    """``read()`` once it has returned the same for ``quiet`` seconds (by ``deadline``)."""
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{what} kept changing"
        time.sleep(0.5)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def _by_kind(operator: Operator) -> list[tuple[str, str, str, float]]:
    from prometheus_client import parser

    out = []
    for family in parser.text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == "slipway_api_requests_total":
                out.append((sample.name, sample.labels["verb"], sample.labels["resource"],
                            sample.value))
    return out
