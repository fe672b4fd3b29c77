"""Benchmark: what users get while releases come and go, before and after readiness gates.

Run by hand on the local cluster (not in CI):

    .venv/bin/python bench/gated.py [--good 10] [--compare-with GITREF]

It starts its own local cluster. For each operator (with ``--compare-with``, first the one of
that git revision, checked out in a temporary worktree, then this checkout's), in a namespace
of its own, it:

1. applies ``--good`` good releases of the reference model (2 replicas) one after another and
   times apply → Ready (seen by a watch);
2. while a client sends the sample request through the Service (the API server's service
   proxy) every 100 ms and the Service's ready endpoints are sampled every 200 ms, applies
   four bad releases in turn (500 on every request; a 200 that breaks the output schema;
   versicolor and virginica swapped, which only the agreement check catches; a crash loop),
   each followed by RolledBack (or, for an operator that does not catch it, by a wait), then
   a good one;
3. prints, side by side: apply → Ready (p50, p99), the client's answers (total, non-2xx,
   wrong answers), the fewest ready endpoints, and from the first failed pod verdict (the gate
   written False) or the failed verdict (phase RollingBack) to the revert written (the
   Deployment's template back on the good image).
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import kubernetes
import yaml

from slipway_dev import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rollout import Recorder, percentile, say  # noqa: E402 - bench/ is the script's folder
from tests.cluster.traffic import ReadyEndpoints, Traffic  # noqa: E402

IMAGE = "registry.example.com/slipway/reference-model"
GOOD_TAG = "1.0.0"
GROUP, VERSION, PLURAL = "slipway.dev", "v1alpha1", "modeldeployments"
GATE = "slipway.dev/verified"


def seconds(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values):.1f} s, p99 {percentile(values, 0.99):.1f} s"


AGREEMENT = True  # False while an operator from before spec.agreement runs (it refuses it)


def release(name: str, namespace: str, version: str, tag: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "reference.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    spec = doc["spec"]
    spec["model"]["version"] = version
    spec["runtime"]["image"] = f"{IMAGE}:{tag}"
    spec["runtime"].pop("resources", None)
    spec["rollout"]["progressDeadlineSeconds"] = 45
    for test in spec["smokeTests"]:
        values = test.get("expect", {}).get("values")
        if values:
            test["expect"]["values"] = [
                {**v, "equals": version} if v["path"] == "$.model.version" else v
                for v in values if v["path"] != "$.predictions[2].label"]
    if AGREEMENT:
        spec["agreement"] = {"paths": [{"path": "$.predictions",
                                        "tolerance": {"absolute": 0.001}}]}
    return dict(doc)


class Watcher(Recorder):
    """When each ModelDeployment reached each phase; when a gate closed on a failure; when a
    Deployment's template went back to the good image (rollout.py's watch threads)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        super().__init__(api)
        self.namespace = namespace
        self.phases: list[tuple[float, str, str, int]] = []  # (at, name, phase, generation)
        self.gate_failed: list[float] = []
        self.templates: list[tuple[float, str]] = []
        for target in (self._mds, self._pods, self._deployments):
            threading.Thread(target=self._loop, args=(target,), daemon=True).start()

    def _mds(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        for event in kubernetes.watch.Watch().stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                timeout_seconds=60):
            obj = event["object"]
            status = obj.get("status") or {}
            if status.get("phase"):
                with self.lock:
                    self.phases.append((time.monotonic(), obj["metadata"]["name"],
                                        status["phase"], int(status.get("observedGeneration")
                                                             or 0)))

    def _pods(self) -> None:
        core = kubernetes.client.CoreV1Api(self.api)
        for event in kubernetes.watch.Watch().stream(core.list_namespaced_pod, self.namespace,
                                                     timeout_seconds=60):
            for cond in event["object"].status.conditions or []:
                if cond.type == GATE and cond.status == "False" and \
                        cond.reason in ("SmokeTestsFailed", "PredictionsDisagree"):
                    with self.lock:
                        self.gate_failed.append(time.monotonic())

    def _deployments(self) -> None:
        apps = kubernetes.client.AppsV1Api(self.api)
        for event in kubernetes.watch.Watch().stream(apps.list_namespaced_deployment,
                                                     self.namespace, timeout_seconds=60):
            image = event["object"].spec.template.spec.containers[0].image
            with self.lock:
                if not self.templates or self.templates[-1][1] != image:
                    self.templates.append((time.monotonic(), image))

    def reached(self, name: str, phase: str, generation: int, after: float) -> float | None:
        with self.lock:
            return next((at for at, n, p, g in self.phases
                         if n == name and p == phase and g >= generation and at >= after), None)

    def first_after(self, series: str, after: float) -> float | None:
        with self.lock:
            values = self.gate_failed if series == "gate" else [
                at for at, image in self.templates if image.endswith(f":{GOOD_TAG}")]
            return next((at for at in values if at >= after), None)


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        if time.monotonic() - last > 15:
            say(f"still waiting for {what}")
            last = time.monotonic()
        time.sleep(0.2)


def measure(state: cluster.ClusterState, label: str, source: pathlib.Path, namespace: str,
            good: int) -> dict[str, Any]:
    kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
    subprocess.run([*kubectl, "create", "namespace", namespace], check=True, capture_output=True)
    env = {"PYTHONPATH": str(source / "operator")}
    operator = cluster.run_operator(state, pathlib.Path(state.state_dir) / f"{label}.log", env)
    api = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
    custom = kubernetes.client.CustomObjectsApi(api)
    watcher = Watcher(api, namespace)
    out: dict[str, Any] = {"label": label}
    try:
        time.sleep(3)
        say(f"{label}: {good} good releases, one after another")
        ready = []
        for index in range(good):
            name = f"good-{index:02d}"
            sent = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                   release(name, namespace, "1.0.0", GOOD_TAG))
            at = wait(lambda n=name, s=sent: watcher.reached(n, "Ready", 1, s), 120,
                      f"{name} Ready")
            if at is not None:
                ready.append(at - sent)
        out["ready"] = ready
        say(f"{label}: bad releases under traffic")
        name = "served"
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               release(name, namespace, "1.0.0", GOOD_TAG))
        wait(lambda: watcher.reached(name, "Ready", 1, 0), 120, "served Ready")
        reverts = []
        with ReadyEndpoints(state, namespace, name) as endpoints:
            wait(lambda: endpoints.count() == 2, 60, "2 ready endpoints")
            with Traffic(state, namespace, name) as traffic:
                time.sleep(2)
                generation = 1
                for version, tag in (("2.0.0", "1.0.0-wrong-model-path"),
                                     ("2.1.0", "1.0.0-bad-output"),
                                     ("2.2.0", "1.0.0-swapped-labels"),
                                     ("3.0.0", "1.0.0-missing-dep"), ("1.1.0", GOOD_TAG)):
                    generation += 1
                    sent = time.monotonic()
                    body = release(name, namespace, version, tag)
                    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                          name, {"spec": body["spec"]})
                    end = "Ready" if tag == GOOD_TAG else "RolledBack"
                    done = wait(lambda g=generation, e=end, s=sent: watcher.reached(
                        name, e, g, s), 90, f"{version} {end}")
                    if done is None:
                        say(f"{label}: {version} never reached {end} (not caught)")
                    if tag != GOOD_TAG and tag != "1.0.0-missing-dep":
                        start = watcher.first_after("gate", sent) or \
                            watcher.reached(name, "RollingBack", generation, sent)
                        back = watcher.first_after("template", sent)
                        if start is not None and back is not None:
                            reverts.append(back - start)
                    if tag != GOOD_TAG and done is None:
                        # Not caught: put the good release back before the next one.
                        good_body = release(name, namespace, "1.0.0", GOOD_TAG)
                        custom.patch_namespaced_custom_object(
                            GROUP, VERSION, namespace, PLURAL, name, {"spec": good_body["spec"]})
                        generation += 1
                        wait(lambda g=generation: watcher.reached(name, "Ready", g, 0), 90,
                             "the good release back")
                time.sleep(2)
        versions = {"1.0.0", "1.1.0"}
        out["answers"] = len(traffic.answers)
        out["non_2xx"] = sum(1 for a in traffic.answers if not 200 <= a.status < 300)
        out["wrong"] = sum(1 for a in traffic.answers if 200 <= a.status < 300
                           and not a.good(versions))
        out["least_endpoints"] = endpoints.least
        out["reverts"] = reverts
    finally:
        watcher.stop.set()
        operator.terminate()
        operator.wait(timeout=30)
        subprocess.run([*kubectl, "delete", "namespace", namespace, "--wait=false"],
                       capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=10)
    parser.add_argument("--compare-with", metavar="GITREF",
                        help="also measure the operator of this git revision, first")
    args = parser.parse_args()
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    worktree = None
    state = cluster.up(state_dir)
    try:
        cluster.install_crd(state)
        runs = []
        if args.compare_with:
            worktree = state_dir / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                            str(worktree), args.compare_with], check=True, capture_output=True)
            runs.append((f"before ({args.compare_with})", worktree, "bench-before"))
        runs.append(("this checkout", ROOT, "bench-now"))
        results = []
        global AGREEMENT
        for label, source, namespace in runs:
            AGREEMENT = (source / "operator" / "slipway" / "logic" / "compare.py").exists()
            results.append(measure(state, label, source, namespace, args.good))
        print()
        print(f"Verified-before-traffic benchmark: {args.good} good releases applied one after "
              "another (2 replicas each), then 4 bad releases and a good one under a client "
              "sending the sample request through the Service every 100 ms")
        for result in results:
            print(f"- {result['label']}: apply → Ready {seconds(result['ready'])} "
                  f"(n={len(result['ready'])}); client: {result['answers']} answers, "
                  f"{result['non_2xx']} non-2xx, {result['wrong']} wrong 2xx; fewest ready "
                  f"endpoints {result['least_endpoints']}; failed verdict → revert written "
                  f"{seconds(result['reverts'])} (n={len(result['reverts'])})")
    finally:
        cluster.down(state_dir, quiet=True)
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], capture_output=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
