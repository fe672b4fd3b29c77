"""``make demo``: the local cluster, the operator and the reference model, end to end.

Every step says what it does and how long it has taken, and the last one shows ``kubectl get md``
and the pods until the release is Ready, so a first-time user sees the whole story in one
terminal. Re-running it reuses a cluster and an operator that are already up.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from slipway_dev import cluster

NAMESPACE = "slipway-demo"
EXAMPLE = cluster.REPO_ROOT / "examples" / "reference.yaml"


def _must(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise cluster.ClusterError(f"{what} failed:\n{result.stderr.strip()}")
    return result.stdout


def ensure_cluster(state_dir: pathlib.Path, progress: cluster.Progress) -> cluster.ClusterState:
    state = cluster.ClusterState.load(state_dir.resolve())
    if state is not None:
        healthy, lines = cluster.status(state_dir)
        if healthy:
            progress.say("reusing the running local cluster")
            return state
        progress.say("the local cluster in " + str(state_dir) + " is unhealthy:\n  "
                     + "\n  ".join(lines) + "\n  restarting it")
        cluster.down(state_dir, quiet=True)
    return cluster.up(state_dir)


def ensure_operator(state: cluster.ClusterState, progress: cluster.Progress) -> None:
    existing = state.component("operator")
    if existing and cluster.pid_alive(existing.pid):
        progress.say(f"operator already running (pid {existing.pid}, log {existing.log})")
        return
    state.components = [c for c in state.components if c.name != "operator"]
    logs = pathlib.Path(state.state_dir) / "logs"
    env = dict(os.environ, KUBECONFIG=state.kubeconfig)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(cluster.REPO_ROOT / "operator"), *filter(None, [env.get("PYTHONPATH")])])
    port = cluster.free_port()
    process = cluster._spawn("operator", [
        sys.executable, "-m", "slipway.cli", "run", "--liveness",
        f"http://127.0.0.1:{port}/healthz", "--lease-namespace", "default"], logs, env=env)
    state.components.append(cluster.Component("operator", process.pid,
                                              str(logs / "operator.log"),
                                              f"http://127.0.0.1:{port}/healthz"))
    state.save()
    cluster.wait_for("operator liveness", lambda: cluster.probe(
        f"http://127.0.0.1:{port}/healthz"), progress, timeout=60, process=process,
        log=logs / "operator.log")


def show_until_ready(state: cluster.ClusterState, name: str, progress: cluster.Progress,
                     timeout: float) -> bool:
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout:
        table = cluster.kubectl(state, "get", "md,pods", "-n", NAMESPACE, "-o", "wide").stdout
        if table != last:
            progress.say("kubectl get md,pods -n " + NAMESPACE + "\n" + table.rstrip())
            last = table
        raw = cluster.kubectl(state, "get", "md", name, "-n", NAMESPACE, "-o", "json")
        if raw.returncode == 0:
            md = json.loads(raw.stdout)
            for cond in (md.get("status") or {}).get("conditions") or []:
                if cond["type"] == "Ready" and cond["status"] == "True" and \
                        cond.get("observedGeneration") == md["metadata"]["generation"]:
                    return True
                if cond["type"] == "Stalled" and cond["status"] == "True":
                    progress.say(f"the release stalled: {cond['reason']}: {cond['message']}")
                    return False
        time.sleep(1)
    progress.say(f"not Ready after {timeout:.0f}s")
    return False


def main(state_dir: pathlib.Path | None = None) -> int:
    state_dir = state_dir or cluster.DEFAULT_STATE_DIR
    progress = cluster.Progress(5)
    try:
        progress.next("local Kubernetes (etcd, apiserver, controller-manager, scheduler, "
                      "node agent)")
        state = ensure_cluster(state_dir, progress)
        progress.next("ModelDeployment CRD")
        cluster.install_crd(state, progress)
        progress.next("operator (slipway run)")
        ensure_operator(state, progress)
        progress.next(f"namespace {NAMESPACE} (Pod Security: restricted) and the reference "
                      "model")
        namespace = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        _must(cluster.kubectl(state, "apply", "-f", "-", stdin=namespace), "creating the namespace")
        _must(cluster.kubectl(state, "apply", "-n", NAMESPACE, "-f", str(EXAMPLE)), "applying "
              f"{EXAMPLE.name}")
        progress.next("waiting for the release to be rolled out and Ready")
        ready = show_until_ready(state, "iris", progress, timeout=240)
    except cluster.ClusterError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    kubectl = state.binaries["kubectl"]
    print(f"""
{'The reference model is Ready.' if ready else 'The release did not become Ready (see above).'}

  export KUBECONFIG={state.kubeconfig} PATH={pathlib.Path(kubectl).parent}:$PATH
  kubectl get md -n {NAMESPACE}
  kubectl describe md iris -n {NAMESPACE}
  kubectl get events -n {NAMESPACE} --sort-by=.lastTimestamp

Try a broken release (500 on every request):
  kubectl patch md iris -n {NAMESPACE} --type merge \\
    -p '{{"spec":{{"runtime":{{"image":"registry.example.com/slipway/reference-model:1.0.0-wrong-model-path"}}}}}}'

Operator log: {state.state_dir}/logs/operator.log
Stop everything: make demo-down
""")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
