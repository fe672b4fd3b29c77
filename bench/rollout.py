"""Benchmark: how fast the guarded rollout reacts, and how quiet it is when nothing changes.

Run by hand on the local cluster (not in CI):

    .venv/bin/python bench/rollout.py [--objects 20] [--failing 10]

It starts its own local cluster and operator, applies ``--objects`` ModelDeployments of the
reference model, then breaks ``--failing`` of them, and prints:

1. apply → Deployment and Service created (p50, p99 over the objects);
2. apply → Ready (each pod verified behind its readiness gate, then the Service), and rollout
   complete (the Deployment's status, seen by a watch) → verdict written (Ready);
3. the broken spec applied → failed verdict written (phase RollingBack: its first pod failed its
   smoke tests behind its gate), and → revert written (the Deployment's template back on the
   rollback target);
4. API writes during an unchanged re-apply of every object (a GitOps re-sync), counted from the
   API server's own ``apiserver_request_total`` (mutating verbs on Slipway's resources).

Timestamps come from watches in this process, so each figure includes one watch delivery.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import kubernetes
import yaml

from slipway_dev import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
GOOD_IMAGE = "registry.example.com/slipway/reference-model:1.0.0"
BAD_IMAGE = "registry.example.com/slipway/reference-model:1.0.0-wrong-model-path"
WRITES = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
RESOURCES = {"modeldeployments", "deployments", "services", "controllerrevisions"}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no samples"
    return (f"{name}: p50 {statistics.median(values) * 1000:.0f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
            f"(n={len(values)})")


class Recorder:
    """Watches in threads; first time each (kind, name, event) was seen."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.times: dict[tuple[str, str, str], float] = {}
        self.images: dict[str, list[tuple[float, str]]] = {}  # template image changes
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def mark(self, kind: str, name: str, what: str) -> None:
        with self.lock:
            self.times.setdefault((kind, name, what), time.monotonic())

    def get(self, kind: str, name: str, what: str) -> float | None:
        with self.lock:
            return self.times.get((kind, name, what))

    def start(self) -> None:
        for target in (self._deployments, self._services, self._model_deployments):
            threading.Thread(target=self._loop, args=(target,), daemon=True).start()

    def _loop(self, func: Any) -> None:
        while not self.stop.is_set():
            try:
                func()
            except Exception as error:  # noqa: BLE001 - a watch hiccup: resume it
                say(f"watch restarted: {error}")
                time.sleep(0.5)

    def _deployments(self) -> None:
        apps = kubernetes.client.AppsV1Api(self.api)
        for event in kubernetes.watch.Watch().stream(apps.list_namespaced_deployment, NAMESPACE,
                                                     timeout_seconds=60):
            obj = event["object"]
            name = obj.metadata.name
            self.mark("deployment", name, "added")
            status = obj.status
            image = obj.spec.template.spec.containers[0].image
            complete = (status.observed_generation or 0) >= obj.metadata.generation and \
                (status.updated_replicas or 0) == (obj.spec.replicas or 1) and \
                (status.available_replicas or 0) == (status.updated_replicas or 0) and \
                (status.replicas or 0) == (status.updated_replicas or 0)
            if complete:
                self.mark("deployment", name, f"complete:{image}")
            with self.lock:
                changes = self.images.setdefault(name, [])
                if not changes or changes[-1][1] != image:
                    changes.append((time.monotonic(), image))

    def reverted_at(self, name: str) -> float | None:
        """When the template went back to the good image after having the bad one."""
        with self.lock:
            changes = list(self.images.get(name, []))
        seen_bad = False
        for at, image in changes:
            seen_bad = seen_bad or image == BAD_IMAGE
            if seen_bad and image == GOOD_IMAGE:
                return at
        return None

    def _services(self) -> None:
        core = kubernetes.client.CoreV1Api(self.api)
        for event in kubernetes.watch.Watch().stream(core.list_namespaced_service, NAMESPACE,
                                                     timeout_seconds=60):
            self.mark("service", event["object"].metadata.name, "added")

    def _model_deployments(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        for event in kubernetes.watch.Watch().stream(
                custom.list_namespaced_custom_object, "slipway.dev", "v1alpha1", NAMESPACE,
                "modeldeployments", timeout_seconds=60):
            obj = event["object"]
            phase = (obj.get("status") or {}).get("phase")
            if phase:
                self.mark("md", obj["metadata"]["name"], f"phase:{phase}")


def release(name: str, image: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "reference.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    doc["spec"]["replicas"] = 1
    doc["spec"]["runtime"]["image"] = image
    doc["spec"]["runtime"].pop("resources", None)
    return dict(doc)


def write_requests(state: cluster.ClusterState, resources: set[str] = RESOURCES) -> float:
    """Mutating requests on ``resources`` the API server has answered so far (all clients)."""
    pki = pathlib.Path(state.state_dir) / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{state.server}/metrics", context=context) as page:  # noqa: S310
        text = page.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(part.split("=", 1) for part in
                      labels_text[len("apiserver_request_total{"):-1].split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") in WRITES and labels.get("resource") in resources:
            total += float(value)
    return total


def reapply_unchanged(state: cluster.ClusterState, kubectl: list[str],
                      custom: kubernetes.client.CustomObjectsApi, names: list[str]) -> float:
    """`kubectl apply` every object as it is; return the API writes counted meanwhile."""
    before = write_requests(state)
    for name in names:
        body = custom.get_namespaced_custom_object("slipway.dev", "v1alpha1", NAMESPACE,
                                                   "modeldeployments", name)
        unchanged = {"apiVersion": body["apiVersion"], "kind": body["kind"],
                     "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body["spec"]}
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(unchanged), text=True,
                       check=True, capture_output=True)
    time.sleep(10)
    return write_requests(state) - before


def wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        if time.monotonic() - last > 10:
            say(f"still waiting for {what}")
            last = time.monotonic()
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--failing", type=int, default=10)
    args = parser.parse_args()
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    state = cluster.up(state_dir)
    operator = None
    try:
        kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
        cluster.install_crd(state)
        subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True,
                       capture_output=True)
        operator = cluster.run_operator(state, state_dir / "operator.log")
        api = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
        recorder = Recorder(api)
        recorder.start()
        custom = kubernetes.client.CustomObjectsApi(api)
        time.sleep(3)  # the operator's watches are up

        names = [f"model-{i:03d}" for i in range(args.objects)]
        say(f"applying {len(names)} ModelDeployments")
        sent: dict[str, float] = {}
        for name in names:
            sent[name] = time.monotonic()
            custom.create_namespaced_custom_object("slipway.dev", "v1alpha1", NAMESPACE,
                                                   "modeldeployments", release(name, GOOD_IMAGE))
        wait(lambda: all(recorder.get("md", n, "phase:Ready") for n in names), 600,
             "every release Ready")
        created = [max(recorder.get("deployment", n, "added") or 0,
                       recorder.get("service", n, "added") or 0) - sent[n] for n in names]
        verdicts = [(recorder.get("md", n, "phase:Ready") or 0) -
                    (recorder.get("deployment", n, f"complete:{GOOD_IMAGE}") or 0)
                    for n in names]
        to_ready = [(recorder.get("md", n, "phase:Ready") or 0) - sent[n] for n in names]

        say("re-applying every object unchanged (a GitOps re-sync)")
        time.sleep(5)
        # kubectl's own first apply adds its last-applied annotation: count that run apart.
        first = reapply_unchanged(state, kubectl, custom, names)
        say("re-applying once more: now kubectl itself has nothing to write either")
        second = reapply_unchanged(state, kubectl, custom, names)

        failing = names[:args.failing]
        say(f"breaking {len(failing)} releases (500 on every request)")
        for name in failing:
            sent[name] = time.monotonic()
            custom.patch_namespaced_custom_object(
                "slipway.dev", "v1alpha1", NAMESPACE, "modeldeployments", name,
                {"spec": {"runtime": {"image": BAD_IMAGE}}})
        wait(lambda: all(recorder.get("md", n, "phase:RolledBack") for n in failing), 600,
             "every broken release rolled back")
        failed_verdicts = [(recorder.get("md", n, "phase:RollingBack") or 0) - sent[n]
                           for n in failing]
        reverts = [(recorder.reverted_at(n) or float("nan")) -
                   (recorder.get("md", n, "phase:RollingBack") or 0) for n in failing]
        recorder.stop.set()
        print()
        print(f"Slipway rollout benchmark: {len(names)} ModelDeployments, {len(failing)} broken,"
              f" 1 replica each, operator outside the cluster (smoke tests via the API server)")
        print(summary("apply → Deployment and Service created", created))
        print(summary("apply → Ready (every pod verified, then the Service)", to_ready))
        print(summary("rollout complete → verdict written (Ready, smoke tests included)",
                      verdicts))
        print(summary("broken spec applied → failed verdict written (RollingBack)",
                      failed_verdicts))
        print(summary("failed verdict written → revert written (Deployment on the target)",
                      [r for r in reverts if r == r]))
        print(f"API writes during an unchanged re-apply of {len(names)} objects: "
              f"{first:.0f} including kubectl's own first last-applied annotations; "
              f"{second:.0f} on a second unchanged re-apply")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        cluster.down(state_dir, quiet=True)


if __name__ == "__main__":
    main()
