"""Benchmark: what fetching and checking an artifact costs a release, and how fast a corrupted
one is reverted, side by side with a floor measured in the same run.

Run by hand on the local cluster (not in CI):

    .venv/bin/python bench/fetch.py [--runs 5]

It starts its own local cluster, an operator (outside it) and the test artifact server (a pod:
``slipway_dev.artifactserver``), then, one release at a time:

1. floor: the reference model with its model baked into the image (``file://``), apply → Ready;
2. the same model fetched over HTTP by the init container and checked against its digest,
   apply → Ready (the difference is the fetch: the init container's start, the download, the
   sha256);
3. a release whose artifact is served with one byte changed, after a verified one: from the
   apply to the init container's failed exit (as its pod status says, polled every 0.1 s), to
   the operator's ``ArtifactDigestMismatch`` Event and to the ``RolledBack`` Event (Events'
   eventTime, in microseconds).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from slipway_dev import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rollout import percentile, say  # noqa: E402 - bench/ is the script's folder

MODEL = ROOT / "examples" / "bundle" / "model" / "model.json"
NAMESPACE = "fetch"


def kubectl_json(kubectl: list[str], *args: str) -> Any:
    done = subprocess.run([*kubectl, *args, "-o", "json"], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def apply(kubectl: list[str], doc: dict[str, Any]) -> float:
    subprocess.run([*kubectl, "apply", "-n", NAMESPACE, "-f", "-"], input=yaml.safe_dump(doc),
                   text=True, check=True, capture_output=True)
    return time.time()


def release(name: str, version: str, uri: str | None, digest: str | None) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "reference.yaml").read_text())
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["replicas"] = 1
    spec["model"]["version"] = version
    if uri is not None:
        spec["model"]["uri"], spec["model"]["digest"] = uri, digest
    spec["runtime"].pop("resources", None)
    for test in spec["smokeTests"]:
        for value in test.get("expect", {}).get("values", []):
            if value["path"] == "$.model.version":
                value["equals"] = version
    return dict(doc)


def wait_phase(kubectl: list[str], name: str, phase: str, timeout: float = 120) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        md = kubectl_json(kubectl, "get", "md", name, "-n", NAMESPACE) or {}
        status = md.get("status") or {}
        if status.get("phase") == phase and \
                status.get("observedGeneration") == md["metadata"]["generation"]:
            return time.time()
        time.sleep(0.1)
    raise SystemExit(f"{name}: no phase {phase} within {timeout:.0f} s")


def init_failed_seen(kubectl: list[str], name: str, timeout: float = 60) -> float:
    """When a pod of ``name`` first shows its fetch container ended non-zero."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pods = kubectl_json(kubectl, "get", "pods", "-n", NAMESPACE, "-l",
                            f"slipway.dev/model-deployment={name}") or {"items": []}
        for pod in pods["items"]:
            for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
                for state in (status.get("state") or {}, status.get("lastState") or {}):
                    if (state.get("terminated") or {}).get("exitCode"):
                        return time.time()
        time.sleep(0.1)
    raise SystemExit(f"{name}: no failed fetch seen within {timeout:.0f} s")


def event_time(kubectl: list[str], name: str, reason: str, after: float) -> float:
    deadline = time.time() + 30
    while time.time() < deadline:
        for event in (kubectl_json(kubectl, "get", "events", "-n", NAMESPACE) or
                      {"items": []})["items"]:
            stamp = event.get("eventTime") or event.get("lastTimestamp")
            if event["involvedObject"].get("name") != name or event.get("reason") != reason \
                    or not stamp:
                continue
            at = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            if at >= after - 1:
                return at
        time.sleep(0.2)
    raise SystemExit(f"{name}: no {reason} Event")


def figures(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):6.2f} s  p99 {percentile(values, 0.99):6.2f} s  "
            f"(n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-fetch-"))
    started = time.monotonic()
    say("step 1/4: local cluster, CRD, operator")
    state = cluster.up(state_dir)
    operator = None
    try:
        kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
        cluster.install_crd(state)
        subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True,
                       capture_output=True)
        operator = cluster.run_operator(state, state_dir / "operator.log")
        root = state_dir / "artifacts"
        (root / "iris").mkdir(parents=True)
        shutil.copy(MODEL, root / "iris" / "model.json")
        root.chmod(0o755)
        good = "sha256:" + hashlib.sha256(MODEL.read_bytes()).hexdigest()
        server = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "artifacts"},
                  "spec": {"containers": [{
                      "name": "main", "image": "registry.example.com/slipway/artifact-server:1",
                      "env": [{"name": "ARTIFACT_ROOT", "value": str(root)}],
                      "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                         "periodSeconds": 1}}]}}
        apply(kubectl, server)
        subprocess.run([*kubectl, "wait", "-n", NAMESPACE, "--for=condition=Ready",
                        "pod/artifacts", "--timeout=60s"], check=True, capture_output=True)
        ip = kubectl_json(kubectl, "get", "pod", "artifacts", "-n", NAMESPACE)["status"]["podIP"]
        uri = f"http://{ip}:8080/files/iris/model.json"
        baked, fetched, to_exit, to_event, to_revert = [], [], [], [], []
        for run in range(args.runs):
            say(f"step 2/4: apply → Ready, image-baked then fetched, run {run + 1}/{args.runs} "
                f"({time.monotonic() - started:.0f} s so far)")
            sent = apply(kubectl, release(f"baked-{run}", "1.0.0", None, None))
            baked.append(wait_phase(kubectl, f"baked-{run}", "Ready") - sent)
            sent = apply(kubectl, release(f"fetched-{run}", "1.0.0", uri, good))
            fetched.append(wait_phase(kubectl, f"fetched-{run}", "Ready") - sent)
        for run in range(args.runs):
            say(f"step 3/4: a corrupted artifact after a verified one, run {run + 1}/"
                f"{args.runs} ({time.monotonic() - started:.0f} s so far)")
            name = f"fetched-{run}"
            sent = apply(kubectl, release(name, "1.1.0", uri.replace("/files/", "/corrupt/"),
                                          good))
            seen = init_failed_seen(kubectl, name)
            failed = event_time(kubectl, name, "ArtifactDigestMismatch", sent)
            reverted = event_time(kubectl, name, "RolledBack", sent)
            wait_phase(kubectl, name, "RolledBack")
            to_exit.append(seen - sent)
            to_event.append(failed - sent)
            to_revert.append(reverted - sent)
        say(f"step 4/4: done in {time.monotonic() - started:.0f} s")
        print("apply → Ready, one replica (the operator outside the cluster):")
        print(f"  floor: model baked into the image          {figures(baked)}")
        print(f"  fetched over HTTP and its digest checked    {figures(fetched)}")
        print("a corrupted artifact after a verified release, from its apply:")
        print(f"  → its init container's failed exit seen     {figures(to_exit)}")
        print(f"  → the ArtifactDigestMismatch Event          {figures(to_event)}")
        print(f"  → the RolledBack Event (revert written)     {figures(to_revert)}")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        cluster.down(state_dir, quiet=True)


if __name__ == "__main__":
    main()
