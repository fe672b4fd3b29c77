"""The informer cache: what the watches and our own writes put in, and what a reconcile reads."""

from __future__ import annotations

import pytest

from slipway.clients import cache, kube
from slipway.logic import render

OWNER = render.LABEL_OWNER


def pod(name: str, version: str, owner: str | None = "m", uid: str = "", ns: str = "a",
        **status: object) -> dict[str, object]:
    labels = {OWNER: owner} if owner else {}
    return {"metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}",
                         "resourceVersion": version, "labels": labels,
                         "managedFields": [{"manager": "kubelet"}] * 3,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                         "{" * 500, "keep": "me"}},
            "status": dict(status)}


@pytest.fixture
def store() -> cache.Store:
    return cache.Store()


def test_a_read_is_a_copy_without_managed_fields_or_the_last_applied_annotation(store):
    store.put(cache.POD, pod("p1", "5", phase="Running"))
    got = store.get(cache.POD, "a", "p1")
    assert got is not None and got["status"] == {"phase": "Running"}
    assert "managedFields" not in got["metadata"]
    assert got["metadata"]["annotations"] == {"keep": "me"}
    got["status"]["phase"] = "corrupted by a caller"
    assert store.get(cache.POD, "a", "p1")["status"]["phase"] == "Running"


def test_an_older_copy_never_replaces_a_newer_one(store):
    assert store.put(cache.POD, pod("p1", "12", phase="Running"))  # our own write's answer
    assert not store.put(cache.POD, pod("p1", "11", phase="Pending"))  # the watch, late
    assert store.get(cache.POD, "a", "p1")["status"]["phase"] == "Running"
    assert store.put(cache.POD, pod("p1", "13", phase="Succeeded"))
    assert store.version(cache.POD, "a", "p1") == "13"


def test_a_new_object_under_an_old_name_replaces_it_whatever_the_versions(store):
    store.put(cache.POD, pod("p1", "50", uid="old"))
    assert store.put(cache.POD, pod("p1", "3", uid="new", phase="Pending"))
    assert store.get(cache.POD, "a", "p1")["metadata"]["uid"] == "new"


def test_a_late_delete_of_the_predecessor_does_not_drop_the_successor(store):
    store.put(cache.POD, pod("p1", "9", uid="new"))
    store.delete(cache.POD, "a", "p1", uid="old")
    assert store.get(cache.POD, "a", "p1") is not None
    store.delete(cache.POD, "a", "p1", uid="new")
    assert store.get(cache.POD, "a", "p1") is None


def test_opaque_versions_let_the_newest_event_win(store):
    store.put(cache.POD, pod("p1", "abc", phase="Running"))
    assert store.put(cache.POD, pod("p1", "abd", phase="Failed"))
    assert store.get(cache.POD, "a", "p1")["status"]["phase"] == "Failed"


def test_owned_objects_by_namespace_and_owner_label(store):
    store.put(cache.POD, pod("m-2", "1"))
    store.put(cache.POD, pod("m-1", "1"))
    store.put(cache.POD, pod("x-1", "1", owner="x"))
    store.put(cache.POD, pod("m-1", "1", ns="b"))
    store.put(cache.POD, pod("loose", "1", owner=None))
    assert [p["metadata"]["name"] for p in store.owned(cache.POD, "a", "m")] == ["m-1", "m-2"]
    assert [p["metadata"]["name"] for p in store.owned(cache.POD, "b", "m")] == ["m-1"]
    # relabelled to another owner: it moves; deleted: it goes
    store.put(cache.POD, pod("m-2", "2", owner="x"))
    assert [p["metadata"]["name"] for p in store.owned(cache.POD, "a", "x")] == ["m-2", "x-1"]
    store.delete(cache.POD, "a", "m-1")
    assert store.owned(cache.POD, "a", "m") == []
    assert store.counts()[cache.POD][0] == 4


def test_a_relisting_drops_what_it_did_not_bring_back(store, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(cache.time, "monotonic", lambda: clock[0])
    for name in ("m-1", "m-2", "m-3"):
        store.put(cache.POD, pod(name, "1"), listed=True)  # the first listing
    assert store.sweep(cache.POD) == []
    clock[0] += 600  # the watch broke; m-2 was deleted meanwhile; m-4 came by the new watch
    store.put(cache.POD, pod("m-1", "1"), listed=True)
    clock[0] += 0.5
    store.put(cache.POD, pod("m-3", "7"), listed=True)
    store.put(cache.POD, pod("m-4", "8"))
    assert store.sweep(cache.POD) == [("a", "m-2", "m")]
    assert [p["metadata"]["name"] for p in store.owned(cache.POD, "a", "m")] == \
        ["m-1", "m-3", "m-4"]


def test_a_late_old_copy_still_counts_as_seen_by_the_listing(store, monkeypatch):
    clock = [10.0]
    monkeypatch.setattr(cache.time, "monotonic", lambda: clock[0])
    store.put(cache.POD, pod("m-1", "20"))  # our own write
    clock[0] += 100
    assert not store.put(cache.POD, pod("m-1", "19"), listed=True)
    assert store.sweep(cache.POD) == []


def test_a_body_without_a_name_is_ignored(store):
    assert not store.put(cache.POD, {"metadata": {}})
    assert not store.put(cache.POD, None)


@pytest.mark.parametrize(("method", "url", "expected"), [
    ("GET", "https://h:6443/api/v1/namespaces/a/pods?labelSelector=x", ("list", "pods")),
    ("GET", "https://h/api/v1/namespaces/a/services/s", ("get", "services")),
    ("PATCH", "https://h/api/v1/namespaces/a/pods/p/status", ("patch", "pods/status")),
    ("PATCH", "https://h/apis/slipway.dev/v1alpha1/namespaces/a/modeldeployments/m/status",
     ("patch", "modeldeployments/status")),
    ("POST", "https://h/apis/apps/v1/namespaces/a/controllerrevisions", ("create",
                                                                       "controllerrevisions")),
    ("DELETE", "https://h/apis/apps/v1/namespaces/a/controllerrevisions/c",
     ("delete", "controllerrevisions")),
    ("GET", "https://h/apis/apps/v1/deployments", ("list", "deployments")),
    ("GET", "https://h/api/v1/namespaces", ("list", "namespaces")),
    ("GET", "https://h/version", ("get", "version")),
])
def test_requests_are_named_as_the_audit_log_names_them(method, url, expected):
    assert kube.request_kind(method, url) == expected


def test_a_strangers_object_never_enters_the_cache(monkeypatch):
    store = cache.Store()
    monkeypatch.setattr(cache, "STORE", store)
    stranger = {"metadata": {"name": "m", "namespace": "a", "resourceVersion": "1",
                             "labels": {"app": "theirs"}}}
    ours = {"metadata": {"name": "m", "namespace": "a", "resourceVersion": "2",
                         "labels": {"app.kubernetes.io/managed-by": "slipway"}}}
    kube.remember(cache.DEPLOYMENT, "a", "m", ours)
    assert store.get(cache.DEPLOYMENT, "a", "m") is not None
    kube.remember(cache.DEPLOYMENT, "a", "m", stranger)  # replaced by a stranger's object
    assert store.get(cache.DEPLOYMENT, "a", "m") is None
    kube.remember(cache.MODEL_DEPLOYMENT, "a", "m", stranger)  # the owner itself: always
    assert store.get(cache.MODEL_DEPLOYMENT, "a", "m") is not None
    kube.remember(cache.MODEL_DEPLOYMENT, "a", "m", None)  # a fresh read found it gone
    assert store.get(cache.MODEL_DEPLOYMENT, "a", "m") is None
