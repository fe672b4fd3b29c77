"""Kubelet rules of the node agent: back-off, env resolution, phase and conditions."""
from __future__ import annotations

import base64
import os
import pathlib

import pytest

import slipway_dev.podlogic as podlogic
import slipway_dev.podnet as podnet

POD = {
    "metadata": {"name": "m-1", "namespace": "ml", "uid": "u-1", "labels": {"app": "iris"}},
    "spec": {"nodeName": "node-1", "containers": [{"name": "model"}]},
}


def test_crashloop_backoff_restarts_at_once_then_doubles_up_to_the_cap() -> None:
    delays = [podlogic.backoff_delay(n) for n in range(1, 9)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert [podlogic.backoff_delay(n, base=2, cap=10) for n in range(1, 6)] == [0, 2, 4, 8, 10]


def test_backoff_is_forgotten_after_running_twice_the_cap() -> None:
    assert podlogic.should_reset_backoff(600, cap=300)
    assert not podlogic.should_reset_backoff(599, cap=300)


@pytest.mark.parametrize(
    ("policy", "code", "expected"),
    [("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False),
     ("OnFailure", 2, True), ("Never", 1, False)],
)
def test_restart_policy(policy: str, code: int, expected: bool) -> None:
    assert podlogic.restart_wanted(policy, code) is expected


def lookups() -> tuple[podlogic.Lookup, podlogic.Lookup]:
    cms = {("ml", "cfg"): {"LEVEL": "debug", "MODE": "fast"}}
    secrets = {("ml", "creds"): {"token": base64.b64encode(b"s3cret").decode()}}
    return (
        lambda ns, name: cms.get((ns, name)),
        lambda ns, name: podlogic.decode_secret(secrets.get((ns, name))),
    )


def test_env_resolves_literals_refs_and_fields_with_container_env_winning() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PORT", "value": "9000"},
            {"name": "URL", "value": "http://$(POD_IP):$(PORT)"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        ],
    }
    cm, secret = lookups()
    env = podlogic.resolve_env(
        POD, container, [("PORT", "8080"), ("IMG", "1")], cm, secret, "10.213.1.2", "10.213.0.1"
    )
    assert env["PORT"] == "9000" and env["IMG"] == "1"
    assert env["URL"] == "http://$(POD_IP):9000"  # POD_IP is defined after URL
    assert env["POD_IP"] == "10.213.1.2" and env["NAME"] == "m-1" and env["APP"] == "iris"
    assert env["LEVEL"] == "debug" and env["CFG_MODE"] == "fast" and env["TOKEN"] == "s3cret"


def test_missing_reference_is_a_config_error_unless_optional() -> None:
    cm, secret = lookups()
    missing = {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "NOPE"}}}
    with pytest.raises(podlogic.EnvError, match="NOPE"):
        podlogic.resolve_env(POD, {"env": [missing]}, [], cm, secret)
    missing["valueFrom"]["configMapKeyRef"]["optional"] = True
    assert "X" not in podlogic.resolve_env(POD, {"env": [missing]}, [], cm, secret)
    with pytest.raises(podlogic.EnvError, match="secret ml/gone not found"):
        podlogic.resolve_env(
            POD, {"env": [{"name": "Y", "valueFrom": {"secretKeyRef": {"name": "gone",
                                                                         "key": "k"}}}]},
            [], cm, secret,
        )


def cs(state: str, ready: bool = False, code: int = 0, ran: bool = False
       ) -> podlogic.ContainerStatus:
    st = podlogic.ContainerStatus(name="c", image="i", state=state, ready=ready, exit_code=code)
    if ran:
        st.last_terminated = {"exitCode": 1}
    return st


def test_phase_follows_the_kubelet() -> None:
    assert podlogic.pod_phase("Always", [cs("waiting")], True) == "Pending"
    assert podlogic.pod_phase("Always", [cs("running")], True) == "Running"
    assert podlogic.pod_phase("Always", [cs("waiting", ran=True)], True) == "Running"  # crashloop
    assert podlogic.pod_phase("Never", [cs("terminated", code=0)], True) == "Succeeded"
    assert podlogic.pod_phase("Never", [cs("terminated", code=1)], True) == "Failed"
    assert podlogic.pod_phase("OnFailure", [cs("terminated", code=0)], True) == "Succeeded"
    assert podlogic.pod_phase("Always", [cs("running")], False) == "Pending"


def conditions(pod: dict, statuses: list, now: str = "T1") -> dict:
    return {c["type"]: c for c in podlogic.pod_conditions(pod, statuses, True, now)}


def test_ready_follows_containers_and_keeps_transition_time_while_unchanged() -> None:
    conds = conditions(POD, [cs("running", ready=False)])
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "ContainersNotReady"
    pod = {**POD, "status": {"conditions": list(conds.values())}}
    later = conditions(pod, [cs("running", ready=False)], now="T2")
    assert later["Ready"]["lastTransitionTime"] == "T1"
    flipped = conditions(pod, [cs("running", ready=True)], now="T3")
    assert flipped["Ready"]["status"] == "True" and flipped["Ready"]["lastTransitionTime"] == "T3"


def test_readiness_gates_hold_ready_until_their_condition_is_true() -> None:
    pod = {**POD, "spec": {**POD["spec"], "readinessGates": [{"conditionType": "slipway/smoke"}]}}
    conds = conditions(pod, [cs("running", ready=True)])
    assert conds["ContainersReady"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "ReadinessGatesNotReady"
    gated = {**pod, "status": {"conditions": [{"type": "slipway/smoke", "status": "True"}]}}
    assert conditions(gated, [cs("running", ready=True)])["Ready"]["status"] == "True"
    assert "slipway/smoke" not in conditions(gated, [cs("running", ready=True)])
    assert conditions(gated, [cs("running", ready=True)])["Ready"]["reason"] is None


def test_status_reports_ips_and_container_states() -> None:
    st = cs("waiting", ran=True)
    st.reason, st.restart_count = "CrashLoopBackOff", 3
    status = podlogic.pod_status(POD, [st], [], True, "10.213.1.2", "10.213.0.1", "T0", "T1")
    assert status["podIP"] == "10.213.1.2" and status["podIPs"] == [{"ip": "10.213.1.2"}]
    assert status["phase"] == "Running"
    api = status["containerStatuses"][0]
    assert api["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert api["restartCount"] == 3 and api["lastState"] == {"terminated": {"exitCode": 1}}


def test_address_pool_gives_each_node_its_own_slash_24_and_reuses_freed_addresses_last() -> None:
    pool = podnet.AddressPool("10.213.0.0/16", 1)
    assert str(pool.subnet) == "10.213.1.0/24"
    a, b = pool.take("a"), pool.take("b")
    assert (a, b) == ("10.213.1.2", "10.213.1.3") and pool.take("a") == a
    pool.give_back("a")
    assert pool.take("c") == "10.213.1.4"


def test_the_arp_table_limits_are_raised_to_fit_a_thousand_pods_and_never_lowered(
        tmp_path: pathlib.Path) -> None:
    assert podnet.raised_thresholds((128, 512, 1024)) == podnet.NEIGH_THRESHOLDS
    assert podnet.raised_thresholds((128, 20000, 1024)) == (4096, 20000, 16384)
    assert podnet.raised_thresholds((5000, 9000, 20000)) is None
    # Written to the sysctl files (a copy of their layout here)
    for i, value in enumerate((128, 512, 1024), start=1):
        (tmp_path / f"gc_thresh{i}").write_text(f"{value}\n")
    podnet.ensure_neighbour_room(tmp_path)
    assert [int((tmp_path / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)] == \
        list(podnet.NEIGH_THRESHOLDS)
    podnet.ensure_neighbour_room(tmp_path / "absent")  # no such layout: nothing happens


# -- volumes, as the ServiceAccount admission plugin and a Deployment write them

SA_VOLUME = {"name": "kube-api-access-x1", "projected": {"defaultMode": 420, "sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
        "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
]}}


class Cluster:
    """What the agent reads from the API server for a volume, and the tokens it asked for."""

    MAPS = {("ml", "kube-root-ca.crt"): {"ca.crt": "PEM"}, ("ml", "settings"): {"a": "1",
                                                                                "b": "2"}}

    def __init__(self) -> None:
        self.asked: list[tuple[object, ...]] = []

    def configmap(self, ns: str, name: str) -> dict[str, str] | None:
        return self.MAPS.get((ns, name))

    def secret(self, ns: str, name: str) -> dict[str, str] | None:
        return {"pw": "s3cret"} if name == "creds" else None

    def token(self, *args: object) -> str:
        self.asked.append(args)
        return "jwt"

    def files(self, pod: dict, volume: dict) -> dict[str, str] | None:
        return podlogic.volume_files(pod, volume, self.configmap, self.secret, self.token)


def test_the_service_account_volume_has_a_bound_token_the_ca_and_the_namespace() -> None:
    cluster = Cluster()
    pod = {**POD, "spec": {**POD["spec"], "serviceAccountName": "slipway-operator"}}
    assert cluster.files(pod, SA_VOLUME) == {"token": "jwt", "ca.crt": "PEM", "namespace": "ml"}
    assert cluster.asked == [("ml", "slipway-operator", "", 3607, "m-1", "u-1")]


def test_configmap_secret_and_empty_dir_volumes() -> None:
    cluster = Cluster()
    assert cluster.files(POD, {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}) is None
    assert cluster.files(POD, {"name": "c", "configMap": {"name": "settings"}}) == {"a": "1",
                                                                                   "b": "2"}
    assert cluster.files(POD, {"name": "c", "configMap": {
        "name": "settings", "items": [{"key": "b", "path": "conf/b.txt"}]}}) == {
        "conf/b.txt": "2"}
    assert cluster.files(POD, {"name": "s", "secret": {"secretName": "creds"}}) == {
        "pw": "s3cret"}
    assert cluster.files(POD, {"name": "s", "secret": {"secretName": "gone",
                                                       "optional": True}}) == {}
    assert cluster.asked == []


@pytest.mark.parametrize(("volume", "message"), [
    ({"name": "h", "hostPath": {"path": "/etc"}}, "not ['hostPath']"),
    ({"name": "c", "configMap": {"name": "missing"}}, "configMap ml/missing not found"),
    ({"name": "c", "configMap": {"name": "settings", "items": [{"key": "a",
                                                                "path": "../../etc/x"}]}},
     "must be relative"),
    ({"name": "c", "configMap": {"name": "settings", "items": [{"key": "zz"}]}}, "no key 'zz'"),
])
def test_a_volume_the_agent_cannot_mount_is_a_clear_error(volume: dict, message: str) -> None:
    with pytest.raises(podlogic.EnvError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Cluster().files(POD, volume)


def test_container_mounts_name_their_folders_and_refuse_unknown_volumes() -> None:
    container = {"volumeMounts": [
        {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/"
                                                    "serviceaccount", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "tmp", "mountPath": "/etc/app.conf", "subPath": "app.conf"}]}
    dirs = {"kube-api-access-x1": "/state/v/sa", "tmp": "/state/v/tmp"}
    assert podlogic.container_mounts(container, dirs) == [
        ("/state/v/sa", "/var/run/secrets/kubernetes.io/serviceaccount", True),
        ("/state/v/tmp", "/tmp", False), ("/state/v/tmp/app.conf", "/etc/app.conf", False)]
    with pytest.raises(podlogic.EnvError, match="no such volume"):
        podlogic.container_mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, dirs)
    with pytest.raises(podlogic.EnvError, match="must be absolute"):
        podlogic.container_mounts({"volumeMounts": [{"name": "tmp", "mountPath": "x"}]}, dirs)


def test_the_termination_message_is_the_file_else_the_logs_tail_on_failure(
        tmp_path: pathlib.Path) -> None:
    from slipway_dev import nodeagent

    term, log = tmp_path / "termination-log", tmp_path / "0.log"
    lines = [f"line {i}" for i in range(200)]
    log.write_text("\n".join([*lines, "ModuleNotFoundError: No module named 'sklearn'"]) + "\n")
    term.write_bytes(b"")
    fallback = "FallbackToLogsOnError"
    tail = nodeagent.termination_message(term, log, fallback, 1)
    # the kubelet's bounds: the last 80 lines, at most 2048 bytes
    assert tail.endswith("ModuleNotFoundError: No module named 'sklearn'\n")
    assert len(tail.encode()) <= 2048 and len(tail.splitlines()) <= 80
    assert "line 120" not in tail and "line 199" in tail
    # the file wins when the container wrote one (cut at 4096 bytes); no log on success or
    # with the File policy
    term.write_text("ArtifactDigestMismatch: " + "x" * 5000)
    assert nodeagent.termination_message(term, log, fallback, 2) == \
        ("ArtifactDigestMismatch: " + "x" * 5000)[:4096]
    term.write_bytes(b"")
    assert nodeagent.termination_message(term, log, fallback, 0) == ""
    assert nodeagent.termination_message(term, log, "File", 1) == ""
    assert nodeagent.termination_message(None, None, fallback, 1) == ""


def test_a_volume_is_not_mounted_over_the_machines_own_interpreter_or_checkout() -> None:
    import sys

    from slipway_dev import nodeagent

    checkout = str(pathlib.Path(nodeagent.__file__).resolve().parents[2])
    assert nodeagent._hides_own_files(str(pathlib.Path(checkout).parent))  # a clone in /tmp
    assert nodeagent._hides_own_files(sys.prefix)
    assert nodeagent._hides_own_files("/tmp", "/tmp/work")  # the container's working folder
    assert not nodeagent._hides_own_files("/var/run/secrets/kubernetes.io/serviceaccount")


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root (as the node agent's "
                    "network-namespace mode does)")
def test_a_container_gets_its_own_dev_its_volumes_and_keeps_the_checkout_visible(
        tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    from slipway_dev import nodeagent

    volume = tmp_path / "tmp-volume"
    volume.mkdir()
    (volume / "inside.txt").write_text("from the volume")
    term = tmp_path / "termination-log"
    term.write_bytes(b"")
    checkout = str(pathlib.Path(nodeagent.__file__).resolve().parents[2])
    script = ("cat /tmp/inside.txt; echo; test -d " + checkout + " && echo checkout-visible; "
              "echo nothing > /dev/null && echo dev-null; head -c 4 /dev/urandom | wc -c; "
              "test -d /dev/shm && echo shm; ls /dev | tr '\\n' ' '; echo; "
              "printf 'ArtifactFetchFailed: x' > /dev/termination-log")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-I", "-m",
         "slipway_dev.mountns", "--dev", "--bind", str(volume), "/tmp",
         "--bind", str(term), "/dev/termination-log", "--keep", checkout,
         "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=30, cwd=checkout,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(pathlib.Path(checkout) / "operator")})
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[:5] == ["from the volume", "checkout-visible", "dev-null", "4", "shm"]
    assert set(out[5].split()) == {"null", "zero", "full", "random", "urandom", "tty", "shm",
                                   "pts", "fd", "stdin", "stdout", "stderr", "ptmx",
                                   "termination-log"}
    assert term.read_text() == "ArtifactFetchFailed: x"
    # nothing of it reached the host
    assert not os.path.exists("/dev/termination-log")
    assert not (pathlib.Path("/tmp") / "inside.txt").exists()
