"""The local cluster behaves like Kubernetes: admission, scheduling, probes, pod status, GC.

Given/When/Then in the test bodies; everything goes through the real API server.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from slipway_dev import cluster as dev_cluster
from slipway_dev import podnet
from tests.cluster.kube import Kubectl, condition, load_yaml, wait_until
from tests.conftest import EXAMPLES

RESTRICTED = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

NEVER_READY_SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(500); self.end_headers(); self.wfile.write(b'not ready')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer((os.environ.get('SLIPWAY_BIND_HOST', '0.0.0.0'), 8080), H)"
    ".serve_forever()\n"
)


def pod(name: str, image: str, *, command: list[str] | None = None,
        readiness_path: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image,
                                 "securityContext": CONTAINER_SECURITY,
                                 "ports": [{"name": "http", "containerPort": 8080}]}
    if command:
        container["command"] = command
    if readiness_path:
        container["readinessProbe"] = {"httpGet": {"path": readiness_path, "port": 8080},
                                       "periodSeconds": 1, "failureThreshold": 1}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {**copy.deepcopy(RESTRICTED), "containers": [container],
                     "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 5}}


def container_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    obj = kubectl.get("pod", name, namespace) or {}
    return dict(((obj.get("status") or {}).get("containerStatuses") or [{}])[0])


def test_status_reports_every_component_running(cluster: dev_cluster.ClusterState) -> None:
    healthy, lines = dev_cluster.status(pathlib.Path(cluster.state_dir))
    assert healthy, lines
    for component in dev_cluster.COMPONENTS:
        assert any(line.startswith(component) and "running" in line for line in lines), lines


def test_nodes_are_registered_and_ready(kubectl: Kubectl,
                                        cluster: dev_cluster.ClusterState) -> None:
    nodes = kubectl.get("nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(cluster.nodes)
    for node in nodes:
        assert condition(node, "Ready")["status"] == "True"  # type: ignore[index]


def test_binaries_report_the_pinned_version(kubectl: Kubectl) -> None:
    version = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.3")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0-master"
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_pod_security_admission_rejects_a_privileged_pod(kubectl: Kubectl,
                                                         namespace: str) -> None:
    bad = pod("privileged", "busybox:1.36", command=["sleep", "60"])
    bad["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    result = kubectl.apply(bad, namespace, check=False)
    assert result.returncode != 0
    assert "violates PodSecurity \"restricted:latest\"" in result.stderr


def test_reference_model_pod_becomes_ready_through_real_http_probes(
    kubectl: Kubectl, namespace: str
) -> None:
    # Given a pod of the reference model image with HTTP probes
    manifest = pod("model", "registry.example.com/slipway/reference-model:1.0.0",
                   readiness_path="/readyz")
    # When it is created
    kubectl.apply(manifest, namespace)
    # Then the node agent runs it, it becomes Ready and it answers on its own address
    ready = wait_until(
        lambda: condition(kubectl.get("pod", "model", namespace), "Ready") or {},
        timeout=60, what="pod model Ready",
        diagnose=lambda: kubectl.describe("pod", "model", namespace))
    wait_until(lambda: (condition(kubectl.get("pod", "model", namespace), "Ready") or {})
               .get("status") == "True", timeout=60, what="Ready=True",
               diagnose=lambda: kubectl.describe("pod", "model", namespace))
    assert ready
    status = kubectl.get("pod", "model", namespace)["status"]
    assert status["phase"] == "Running"
    ip = status["podIP"]
    body = json.dumps(json.loads((EXAMPLES / "bundle" / "sample-request.json").read_text()))
    request = urllib.request.Request(f"http://{ip}:8080/score", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert len(answer["predictions"]) == 3


def test_pod_whose_readiness_answers_500_never_becomes_ready(kubectl: Kubectl,
                                                             namespace: str) -> None:
    kubectl.apply(pod("never-ready", "busybox:1.36",
                      command=["python3", "-c", NEVER_READY_SERVER], readiness_path="/readyz"),
                  namespace)
    wait_until(lambda: container_status(kubectl, namespace, "never-ready").get("started"),
               timeout=60, what="container started",
               diagnose=lambda: kubectl.describe("pod", "never-ready", namespace))
    # Readiness is probed every second with failureThreshold 1: give it several chances.
    for _ in range(12):
        cond = condition(kubectl.get("pod", "never-ready", namespace), "Ready")
        assert cond and cond["status"] == "False", cond
        __import__("time").sleep(0.5)
    assert container_status(kubectl, namespace, "never-ready")["ready"] is False


def test_container_that_keeps_exiting_shows_crashloopbackoff_with_rising_restarts(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(pod("crasher", "registry.example.com/slipway/reference-model:1.0.0-missing-dep"),
                  namespace)
    wait_until(lambda: (container_status(kubectl, namespace, "crasher").get("state") or {})
               .get("waiting", {}).get("reason") == "CrashLoopBackOff",
               timeout=90, what="CrashLoopBackOff",
               diagnose=lambda: kubectl.describe("pod", "crasher", namespace))
    first = container_status(kubectl, namespace, "crasher")["restartCount"]
    wait_until(lambda: container_status(kubectl, namespace, "crasher")["restartCount"] > first,
               timeout=90, what="a higher restartCount",
               diagnose=lambda: kubectl.describe("pod", "crasher", namespace))
    last = container_status(kubectl, namespace, "crasher")
    assert last["lastState"]["terminated"]["exitCode"] != 0


def test_a_crash_loop_says_why_from_the_logs_tail_with_fallback_to_logs_on_error(
    kubectl: Kubectl, namespace: str
) -> None:
    crasher = pod("crasher-logs", "registry.example.com/slipway/reference-model:1.0.0-missing-dep")
    crasher["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    kubectl.apply(crasher, namespace)

    def message() -> str:
        status = container_status(kubectl, namespace, "crasher-logs")
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            if (state.get("terminated") or {}).get("message"):
                return str(state["terminated"]["message"])
        return ""
    said = wait_until(message, timeout=60, what="a termination message",
                      diagnose=lambda: kubectl.describe("pod", "crasher-logs", namespace))
    # the traceback's last line, as the kubelet takes it from the log's tail
    assert "ModuleNotFoundError: No module named 'slipway_gpu_kernels'" in said
    assert len(said.encode()) <= 2048


def test_init_containers_run_in_order_share_volumes_and_a_failure_shows_as_init_error(
    kubectl: Kubectl, namespace: str
) -> None:
    def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "image": "busybox:1.36", "command": ["sh", "-c", script],
                "securityContext": CONTAINER_SECURITY,
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"},
                                 {"name": "tmp", "mountPath": "/tmp"}], **extra}
    volumes = [{"name": "shared", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    marker = f"/tmp/slipway-init-{namespace}"
    good = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "inits"}, "spec": {
        **copy.deepcopy(RESTRICTED), "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 2, "volumes": volumes,
        "initContainers": [
            container("first", "echo one > /shared/order"),
            container("second", f"echo two >> /shared/order; echo private > {marker}")],
        # The app container starts only after both, in order; it sees what they wrote in the
        # emptyDir, and its /tmp is the pod's own (the host's /tmp has no marker)
        "containers": [container(
            "main", f"test \"$(tr '\\n' ' ' < /shared/order)\" = 'one two ' && "
            f"test -f {marker} && exec sleep 600; exit 7")]}}
    kubectl.apply(good, namespace)
    wait_until(lambda: container_status(kubectl, namespace, "inits").get("started"),
               timeout=60, what="the app container started after its init containers",
               diagnose=lambda: kubectl.describe("pod", "inits", namespace))
    assert not os.path.exists(marker)
    inits = kubectl.get("pod", "inits", namespace)["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["reason"] for s in inits] == ["Completed", "Completed"]
    time.sleep(2)
    assert container_status(kubectl, namespace, "inits")["restartCount"] == 0

    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "init-fails"
    bad["spec"]["initContainers"] = [container(
        "fetch", "printf 'ArtifactDigestMismatch: expected sha256:aa, got sha256:bb' "
        "> /dev/termination-log; echo noise; exit 2"), container("never", "exit 0")]
    kubectl.apply(bad, namespace)

    def shown() -> str:
        table = kubectl.run("get", "pod", "init-fails", "-n", namespace, "--no-headers").stdout
        status = table.split()[2]
        return status if status in ("Init:Error", "Init:CrashLoopBackOff") else ""
    wait_until(shown, timeout=60, what="Init:Error or Init:CrashLoopBackOff in kubectl get",
               diagnose=lambda: kubectl.describe("pod", "init-fails", namespace))
    obj = kubectl.get("pod", "init-fails", namespace)
    first, second = obj["status"]["initContainerStatuses"]
    ended = first["state"].get("terminated") or first["lastState"].get("terminated")
    assert ended["exitCode"] == 2
    assert ended["message"] == "ArtifactDigestMismatch: expected sha256:aa, got sha256:bb"
    assert "terminated" not in second["state"] and not second["lastState"]  # never ran
    assert obj["status"]["phase"] == "Pending"
    assert container_status(kubectl, namespace, "init-fails")["state"]["waiting"]["reason"] == \
        "PodInitializing"
    assert not os.path.exists("/dev/termination-log")


def test_unknown_image_shows_imagepullbackoff(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(pod("unknown", "registry.example.com/does-not-exist:9.9"), namespace)
    wait_until(lambda: (container_status(kubectl, namespace, "unknown").get("state") or {})
               .get("waiting", {}).get("reason") == "ImagePullBackOff",
               timeout=60, what="ImagePullBackOff",
               diagnose=lambda: kubectl.describe("pod", "unknown", namespace))
    assert kubectl.get("pod", "unknown", namespace)["status"]["phase"] == "Pending"


def test_deleted_pod_is_stopped_and_removed(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(pod("short", "busybox:1.36", command=["sleep", "600"]), namespace)
    wait_until(lambda: container_status(kubectl, namespace, "short").get("started"),
               timeout=60, what="container started")
    kubectl.run("delete", "pod", "short", "-n", namespace, "--wait=true", "--timeout=30s")
    assert kubectl.get("pod", "short", namespace) is None


def test_a_pre_stop_sleep_keeps_a_deleted_pod_serving_then_it_is_stopped(
    kubectl: Kubectl, namespace: str
) -> None:
    # Given a serving pod whose container has a 3 s preStop sleep (the hook Slipway renders)
    manifest = pod("draining", "registry.example.com/slipway/reference-model:1.0.0",
                   readiness_path="/readyz")
    manifest["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 3}}}
    manifest["spec"]["terminationGracePeriodSeconds"] = 20
    kubectl.apply(manifest, namespace)
    wait_until(lambda: (condition(kubectl.get("pod", "draining", namespace), "Ready") or {})
               .get("status") == "True", timeout=60, what="Ready=True",
               diagnose=lambda: kubectl.describe("pod", "draining", namespace))
    ip = kubectl.get("pod", "draining", namespace)["status"]["podIP"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def answers() -> bool:
        try:
            with opener.open(f"http://{ip}:8080/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    # When it is deleted
    kubectl.run("delete", "pod", "draining", "-n", namespace, "--wait=false")
    deleted = time.monotonic()
    last_answer = deleted
    while time.monotonic() - deleted < 15 and kubectl.get("pod", "draining", namespace):
        if answers():
            last_answer = time.monotonic()
        time.sleep(0.2)
    gone = time.monotonic()
    # Then it answered through the sleep, got its SIGTERM after it, and went within the grace
    assert last_answer - deleted >= 2.5, f"stopped serving {last_answer - deleted:.1f}s in"
    assert gone - deleted >= 3.0
    assert kubectl.get("pod", "draining", namespace) is None, "still there after 15 s"
    assert not answers()


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["spec"]["smokeTests"][0].__setitem__("path", "http://evil.example/x"),
     "spec.smokeTests[0].path"),
    (lambda d: d["spec"]["model"].__setitem__("digest", "sha256:xyz"), "spec.model.digest"),
    (lambda d: d["spec"]["runtime"].__setitem__("port", 70000), "spec.runtime.port"),
    (lambda d: d["spec"]["smokeTests"].append(copy.deepcopy(d["spec"]["smokeTests"][0])),
     "spec.smokeTests"),
    (lambda d: d["spec"]["smokeTests"][0].__setitem__("expect", {"status": 999}),
     "spec.smokeTests[0].expect.status"),
    (lambda d: d["spec"]["runtime"].__setitem__("imagePolicy", "x"), "spec.runtime.imagePolicy"),
    (lambda d: d["metadata"].__setitem__("name", "x" * 70), "metadata.name"),
    (lambda d: d["spec"].__setitem__("rollout", {"maxSurge": 0, "maxUnavailable": 0}),
     "spec.rollout"),
    (lambda d: d["spec"]["model"].__setitem__("uri", "s3://models/iris/"), "spec.model.digest"),
    (lambda d: d["spec"]["model"].__setitem__("credentialsSecret", "keys"),
     "spec.model.credentialsSecret"),
    (lambda d: (d["spec"]["model"].update(uri="https://m.example/m.pkl",
                                          insecureSkipDigest=True),
                d["spec"]["runtime"].__setitem__("env", [{"name": "MODEL_PATH", "value": "/"}])),
     "spec.runtime.env"),
    (lambda d: d["spec"].pop("schema"), "spec.schema"),
], ids=["absolute-path-cel", "digest-cel", "port-openapi", "duplicate-names-cel",
        "status-code-cel", "unknown-field", "long-name-cel", "surge-unavailable-cel",
        "fetched-without-digest-cel", "credentials-for-file-cel", "model-path-cel",
        "schema-without-a-preset-cel"])
def test_server_side_validation_rejects_invalid_model_deployments_naming_the_field(
    kubectl: Kubectl, crd: str, namespace: str, mutate: Any, field: str
) -> None:
    doc = load_yaml(EXAMPLES / "minimal.yaml")
    mutate(doc)
    result = kubectl.apply(doc, namespace, check=False)
    assert result.returncode != 0, result.stdout
    assert field in result.stderr, result.stderr


def test_a_readiness_gate_holds_ready_until_its_condition_is_true_and_endpoints_follow(
    kubectl: Kubectl, namespace: str
) -> None:
    # Given a gated pod of the reference model behind a Service
    manifest = pod("gated", "registry.example.com/slipway/reference-model:1.0.0",
                   readiness_path="/readyz")
    manifest["metadata"]["labels"] = {"app": "gated"}
    manifest["spec"]["readinessGates"] = [{"conditionType": "example.com/checked"}]
    kubectl.apply(manifest, namespace)
    kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gated"},
                   "spec": {"selector": {"app": "gated"},
                            "ports": [{"port": 80, "targetPort": 8080}]}}, namespace)

    def conditions() -> dict[str, dict[str, Any]]:
        obj = kubectl.get("pod", "gated", namespace) or {}
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}

    def ready_endpoints() -> int:
        slices = kubectl.get("endpointslices", namespace=namespace,
                             selector="kubernetes.io/service-name=gated")["items"]
        return sum(1 for s in slices for e in s.get("endpoints") or []
                   if (e.get("conditions") or {}).get("ready"))

    # Then its containers become ready, but the pod does not: the gate's condition is missing
    wait_until(lambda: conditions().get("ContainersReady", {}).get("status") == "True",
               timeout=60, what="ContainersReady", diagnose=lambda: kubectl.describe(
                   "pod", "gated", namespace))
    held = conditions()["Ready"]
    assert held["status"] == "False" and held["reason"] == "ReadinessGatesNotReady"
    assert "example.com/checked" in held["message"] and "does not exist" in held["message"]
    assert "0/1" in kubectl.run("get", "pod", "gated", "-n", namespace, "-o", "wide").stdout
    assert ready_endpoints() == 0
    # When someone else writes the gate's condition (a strategic-merge patch) and one of their
    # own beside it
    patch = {"status": {"conditions": [
        {"type": "example.com/checked", "status": "True", "reason": "Checked"},
        {"type": "example.com/other", "status": "True", "reason": "Theirs"}]}}
    kubectl.run("patch", "pod", "gated", "-n", namespace, "--subresource=status",
                "--type=strategic", "-p", json.dumps(patch))
    # Then Ready follows at once (not at the next probe period), and nothing written by others
    # is dropped
    wait_until(lambda: conditions().get("Ready", {}).get("status") == "True", timeout=5,
               what="Ready=True after the gate opened")
    assert "1/1" in kubectl.run("get", "pod", "gated", "-n", namespace, "-o", "wide").stdout
    wait_until(lambda: ready_endpoints() == 1, timeout=30, what="the endpoint ready")
    # And closing the gate takes the pod out of the Service again
    patch["status"]["conditions"][0]["status"] = "False"
    kubectl.run("patch", "pod", "gated", "-n", namespace, "--subresource=status",
                "--type=strategic", "-p", json.dumps(patch))
    wait_until(lambda: conditions().get("Ready", {}).get("status") == "False", timeout=5,
               what="Ready=False after the gate closed")
    assert conditions()["Ready"]["reason"] == "ReadinessGatesNotReady"
    wait_until(lambda: ready_endpoints() == 0, timeout=30, what="the endpoint not ready")
    kept = conditions()
    assert kept["example.com/other"]["reason"] == "Theirs"
    assert kept["example.com/checked"]["status"] == "False"
    assert kept["ContainersReady"]["status"] == "True"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces")
def test_the_pod_bridge_keeps_its_address_while_pods_come_and_go(
    cluster: dev_cluster.ClusterState, kubectl: Kubectl, namespace: str
) -> None:
    # Given a pod on the node agent's bridge
    agent = cluster.component("node-agent")
    assert agent is not None and agent.argv and "--bridge" in agent.argv, agent
    sysfs = pathlib.Path("/sys/class/net") / agent.argv[agent.argv.index("--bridge") + 1]
    kubectl.apply(pod("first", "registry.example.com/slipway/reference-model:1.0.0"), namespace)
    wait_until(lambda: (kubectl.get("pod", "first", namespace) or {}).get("status", {})
               .get("podIP"), timeout=60, what="pod first has an IP")
    before = (sysfs / "address").read_text().strip()
    # Then its address was set, not inherited from a port: a bridge left to itself takes
    # the lowest of its ports' addresses, which changes as pods' veths come and go, and every
    # pod's ARP entry for it (Services, the API server) is wrong until probed again (~5 s)
    assert (sysfs / "addr_assign_type").read_text().strip() == "3"  # NET_ADDR_SET
    assert before == podnet.bridge_mac(sysfs.name)
    # When more pods come and one goes, the address stays
    for name in ("second", "third"):
        kubectl.apply(pod(name, "registry.example.com/slipway/reference-model:1.0.0"), namespace)
    wait_until(lambda: all((kubectl.get("pod", n, namespace) or {}).get("status", {})
                           .get("podIP") for n in ("second", "third")),
               timeout=60, what="pods second and third have IPs")
    kubectl.run("delete", "pod", "first", "-n", namespace, "--wait=true", "--timeout=60s")
    assert (sysfs / "address").read_text().strip() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces")
def test_a_new_node_agent_stops_the_pods_a_dead_one_left_running() -> None:
    # Given a pod's namespace left by a node agent that was killed (a bench stopped with
    # Ctrl-C left 964 servers running), with its server still in it, in a session of its own
    bridge, leftover = "slwlf", "slwlf-0badc0de"
    subprocess.run(["ip", "netns", "del", leftover], capture_output=True)
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    server = subprocess.Popen(["ip", "netns", "exec", leftover, "sleep", "600"],
                              start_new_session=True)
    network = None
    try:
        wait_until(lambda: subprocess.run(["ip", "netns", "pids", leftover], capture_output=True,
                                          text=True).stdout.split(), timeout=10,
                   what="the leftover server runs in its namespace")
        # When a node agent makes the same bridge again
        network = podnet.NetnsNetwork(bridge, "10.251.0.0/24")
        # Then the server is gone with its namespace
        assert server.wait(timeout=10) == -signal.SIGKILL
        assert leftover not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True, check=True).stdout
    finally:
        if server.poll() is None:
            server.kill()
        if network is not None:
            network.close()
        subprocess.run(["ip", "netns", "del", leftover], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces")
def test_a_bridge_whose_node_agent_was_killed_is_taken_again() -> None:
    # Given the bridge and route a killed node agent left behind (its lock no longer held)
    bridge, cidr = dev_cluster.pick_pod_network()
    gateway = next(ipaddress.ip_network(cidr).hosts())
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{gateway}/16", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        # Then the next cluster takes it again (its agent cleans up what is there)
        assert dev_cluster.pick_pod_network() == (bridge, cidr)
        # But not while a node agent holds it
        holder = subprocess.Popen(["flock", f"/run/slipway-nodeagent-{bridge}.lock",
                                   "sleep", "600"], start_new_session=True)
        try:
            wait_until(lambda: subprocess.run(
                ["flock", "-n", f"/run/slipway-nodeagent-{bridge}.lock", "true"]).returncode,
                timeout=10, what="the lock is held")
            assert dev_cluster.pick_pod_network()[0] != bridge
        finally:
            os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
            holder.wait()
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=True)
        pathlib.Path(f"/run/slipway-nodeagent-{bridge}.lock").unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces")
def test_down_removes_what_a_killed_node_agent_left(tmp_path: pathlib.Path) -> None:
    # Given what a node agent killed in its cleanup leaves (a bench's 1,000 pods took longer
    # than its 15 s grace, and 739 namespaces stayed): a bridge, pods' namespaces with a server
    # still running in one, a veth per pod; and the cluster state that names that agent
    bridge = "slwdn"
    pods = [f"{bridge}-0000000{i}" for i in range(3)]
    for netns in pods:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", f"{bridge}h00000000", "type", "veth", "peer", "name",
                    f"{bridge}p00000000"], check=True)
    subprocess.run(["ip", "link", "set", f"{bridge}p00000000", "netns", pods[0]], check=True)
    server = subprocess.Popen(["ip", "netns", "exec", pods[1], "sleep", "600"],
                              start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    dev_cluster.ClusterState(
        state_dir=str(tmp_path), kubeconfig="", server="",
        components=[dev_cluster.Component("node-agent", dead.pid, "",
                                          argv=["python", "-m", "slipway_dev.nodeagent",
                                                "--bridge", bridge, "--pod-cidr",
                                                "10.250.0.0/24"])]).save()
    try:
        wait_until(lambda: podnet.namespace_pids([pods[1]])[pods[1]], timeout=10,
                   what="the leftover server runs in its namespace")
        # When the cluster is taken down
        assert dev_cluster.down(tmp_path, quiet=True)
        # Then the server is killed, and the namespaces, the veth and the bridge are gone
        assert server.wait(timeout=10) == -signal.SIGKILL
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout
        assert not [netns for netns in pods if netns in namespaces]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=True).stdout
        assert f" {bridge}:" not in links and f"{bridge}h00000000" not in links
    finally:
        if server.poll() is None:
            server.kill()
        for netns in pods:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{bridge}h00000000"], capture_output=True)
