"""Least privilege, proven from the API server's audit log (runs last: ``zz``).

The whole cluster suite runs the operator as its own ServiceAccount with the ClusterRole of
manifests/ and its Role for the leader Lease; the local API server audits that user's requests.
A rule nothing used fails here, and a request RBAC denied fails too.
"""

from __future__ import annotations

import pathlib
import urllib.parse

import pytest

from slipway_dev import cluster as dev_cluster
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, audited

# The suite exercises the operator through these files; alone, this test proves nothing.
NEEDS = ("test_first_loop.py", "test_guarded_rollout.py", "test_hostile_specs.py")


def allowed(event: dict) -> bool:
    """RBAC's verdict (a 403 may also come from admission, e.g. a terminating namespace)."""
    return (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "allow"


def used_permissions(events: list[dict]) -> set[tuple[str, str, str]]:
    used = set()
    for event in events:
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = (event.get("responseStatus") or {}).get("code", 0)
        if not allowed(event):
            continue
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and code == 201:  # server-side apply that created it
            used.add((ref.get("apiGroup", ""), resource, "create"))
    return used


def test_every_clusterrole_rule_was_used_and_nothing_was_denied(
    request: pytest.FixtureRequest, cluster: dev_cluster.ClusterState, kubectl: Kubectl,
    operator: Operator,
) -> None:
    ran = {pathlib.Path(str(item.fspath)).name for item in request.session.items}
    if not set(NEEDS) <= ran:
        pytest.skip(f"needs the scenarios of {', '.join(NEEDS)} in the same run")
    events = audited(cluster.state_dir, dev_cluster.OPERATOR_USER)
    assert events, "no request of the operator's ServiceAccount was audited"
    denied = sorted({(e.get("objectRef", {}).get("resource"), e["verb"]) for e in events
                     if (e.get("annotations") or {}).get("authorization.k8s.io/decision")
                     == "forbid"})
    assert denied == [], f"the ClusterRole denied the operator: {denied}"
    used = used_permissions(events)
    rules = [rule for name in ("slipway-operator", "slipway-operator-proxy-route")
             for rule in kubectl.get("clusterrole", name)["rules"]]
    rules += kubectl.get("role", "slipway-operator-leader-election", "slipway-system")["rules"]
    granted = {(group, resource, verb) for rule in rules
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    unused = sorted(granted - used)
    assert unused == [], f"rules the operator never used: {unused}; used: {sorted(used)}"


def test_the_child_watches_ask_the_api_server_for_slipways_objects_only(
    request: pytest.FixtureRequest, cluster: dev_cluster.ClusterState, operator: Operator,
) -> None:
    """Server-side label selectors: an unrelated pod, Deployment or Service is never sent."""
    ran = {pathlib.Path(str(item.fspath)).name for item in request.session.items}
    if "test_guarded_rollout.py" not in ran:
        pytest.skip("needs the rollouts of test_guarded_rollout.py in the same run")
    events = audited(cluster.state_dir, dev_cluster.OPERATOR_USER)
    lists = [e for e in events if e["verb"] in ("list", "watch")
             and (e.get("objectRef") or {}).get("resource") in ("pods", "deployments",
                                                                 "services")
             and not (e.get("objectRef") or {}).get("namespace")]  # kopf's cluster-wide ones
    assert lists, "the operator's cluster-wide watches of its children were not audited"
    def selector(uri: str) -> list[str]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("labelSelector", [])

    unfiltered = sorted({e["requestURI"] for e in lists
                         if selector(e["requestURI"]) != ["app.kubernetes.io/managed-by=slipway"]})
    assert unfiltered == [], unfiltered
