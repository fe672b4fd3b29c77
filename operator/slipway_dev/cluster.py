"""A real Kubernetes control plane as local processes: ``slipway dev-cluster up|down|status``.

There is no Docker engine on the machines we develop and test on, so kind and minikube are out.
This starts etcd, kube-apiserver (RBAC, Node authorizer, default admission plugins including
PodSecurity), kube-controller-manager (all controllers), kube-scheduler and the node agent (the
kubelet's stand-in, ``slipway_dev.nodeagent``), all on loopback with free ports and locally made
certificates. Tests, the demo and users get the same cluster.

State (certificates, kubeconfigs, logs, pids) lives in one folder; ``down`` stops every process
``up`` started and removes the folder. ``status`` reports a crashed component instead of hiding it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from slipway_dev import binaries

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = pathlib.Path(".slipway") / "dev-cluster"
STATE_FILE = "cluster.json"
SERVICE_CIDR = "10.0.0.0/24"  # loopback mode: allocated, never routed, nothing listens there
OPERATOR_USER = "system:serviceaccount:slipway-system:slipway-operator"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent")


class ClusterError(RuntimeError):
    """The cluster could not be started, or a component died."""


class Progress:
    """Step lines with elapsed time, so a long start never leaves a silent terminal."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.step = 0
        self.start = time.monotonic()
        self.quiet = quiet

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.start:5.1f}s"

    def next(self, what: str) -> None:
        self.step += 1
        self.say(f"step {self.step}/{self.total}: {what}")

    def say(self, what: str) -> None:
        if not self.quiet:
            print(f"[dev-cluster {self.elapsed()}] {what}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Certificates: one CA, a serving certificate for 127.0.0.1/localhost, client certificates.


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    if shutil.which("openssl") is None:
        raise ClusterError("openssl is needed to make the cluster's certificates "
                           "(Debian: apt-get install openssl)")
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _ec_key(name: str, pki: pathlib.Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key",
             cwd=pki)


def _signed_cert(name: str, subject: str, pki: pathlib.Path, *, server: bool = False,
                 service_ip: str = "10.0.0.1") -> None:
    _ec_key(name, pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
             cwd=pki)
    ext = pki / f"{name}.ext"
    if server:
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n"
                       f"subjectAltName=IP:127.0.0.1,IP:{service_ip},DNS:localhost,"
                       "DNS:kubernetes,"
                       "DNS:kubernetes.default,DNS:kubernetes.default.svc\n")
    else:
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "365", "-sha256", "-extfile", ext.name,
             "-out", f"{name}.crt", cwd=pki)


def make_pki(pki: pathlib.Path, service_cidr: str = SERVICE_CIDR) -> None:
    """The CA and every certificate; the API server's names its first Service IP (the
    ``kubernetes`` Service's, which pods dial)."""
    pki.mkdir(parents=True, exist_ok=True)
    _ec_key("ca", pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=slipway-dev-ca",
             "-days", "365", "-sha256", "-out", "ca.crt", cwd=pki)
    service_ip = str(next(ipaddress.ip_network(service_cidr).hosts()))
    _signed_cert("apiserver", "/CN=kube-apiserver", pki, server=True, service_ip=service_ip)
    _signed_cert("admin", "/O=system:masters/CN=slipway-admin", pki)
    _signed_cert("kcm", "/CN=system:kube-controller-manager", pki)
    _signed_cert("scheduler", "/CN=system:kube-scheduler", pki)
    _ec_key("sa", pki)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: pathlib.Path, server: str, pki: pathlib.Path, user: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "slipway-dev", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "slipway-dev", "context": {"cluster": "slipway-dev",
                                                         "user": user}}],
        "current-context": "slipway-dev",
    }, indent=2))


# --------------------------------------------------------------------------------------------
# Processes


@dataclasses.dataclass
class Component:
    name: str
    pid: int
    log: str
    health: str | None = None  # URL polled by status
    argv: list[str] | None = None  # how it was started (restart_etcd; the tests read it)


@dataclasses.dataclass
class ClusterState:
    state_dir: str
    kubeconfig: str
    server: str
    components: list[Component]
    network: str = "auto"
    nodes: list[str] = dataclasses.field(default_factory=list)
    service_cidr: str = SERVICE_CIDR
    binaries: dict[str, str] = dataclasses.field(default_factory=dict)

    def save(self) -> None:
        path = pathlib.Path(self.state_dir) / STATE_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: pathlib.Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


# Children started by this process: kept referenced so that they are reaped by ``down`` rather
# than reported as leaked by the garbage collector.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(name: str, argv: list[str], logs: pathlib.Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    _CHILDREN[process.pid] = process
    return process


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _tail(path: str | pathlib.Path, lines: int = 15) -> str:
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ssl_context(pki: pathlib.Path, *, client: str | None = "admin",
                 verify: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt")) if verify else \
        ssl._create_unverified_context()  # noqa: S323 - components' self-signed health ports
    if client:
        context.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    return context


def probe(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_for(what: str, check: Any, progress: Progress, *, timeout: float,
             process: subprocess.Popen[bytes] | None = None, log: pathlib.Path | None = None,
             every: float = 5.0) -> None:
    """Poll ``check`` until true, saying what is awaited every few seconds."""
    start = time.monotonic()
    last = start
    while True:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise ClusterError(f"{what}: process exited with {process.returncode}; last log "
                               f"lines ({log}):\n{_tail(log) if log else ''}")
        now = time.monotonic()
        if now - start > timeout:
            raise ClusterError(f"{what}: not ready after {timeout:.0f}s; last log lines "
                               f"({log}):\n{_tail(log) if log else ''}")
        if now - last >= every:
            progress.say(f"  still waiting for {what} ({now - start:.0f}s of {timeout:.0f}s)")
            last = now
        time.sleep(0.2)


def kubectl(state: ClusterState, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The cluster's kubectl with its kubeconfig; output captured, never raises on failure."""
    return subprocess.run([state.binaries["kubectl"], "--kubeconfig", state.kubeconfig, *args],
                          capture_output=True, text=True, input=stdin, timeout=timeout)


def up(state_dir: pathlib.Path | None = None, *, nodes: int = 1, network: str = "auto",
       quiet: bool = False, crashloop_backoff_base: float | None = None,
       extra_agent_args: list[str] | None = None) -> ClusterState:
    """Start everything; return the state (kubeconfig path, pids). Stops what it started on error."""
    state_dir = (state_dir or DEFAULT_STATE_DIR).resolve()
    existing = ClusterState.load(state_dir)
    if existing is not None:
        raise ClusterError(f"a cluster already has its state in {state_dir}; run "
                           "`slipway dev-cluster down` (or status) first")
    progress = Progress(8, quiet=quiet)
    progress.next("control-plane binaries (built once, cached by version)")
    bins = {k: str(v) for k, v in binaries.ensure_binaries(verbose=not quiet).items()}

    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    pki = state_dir / "pki"
    node_names = [f"node-{i + 1}" for i in range(nodes)]
    state = ClusterState(state_dir=str(state_dir), kubeconfig=str(state_dir / "kubeconfig"),
                         server="", components=[], network=network, nodes=node_names,
                         binaries=bins)
    try:
        _start(state, progress, pki, logs, crashloop_backoff_base, extra_agent_args or [])
    except BaseException:
        progress.say("start failed; stopping what was started")
        down(state_dir, quiet=True, keep_logs=True)
        raise
    progress.say(f"cluster is up in {progress.elapsed().strip()}")
    return state


def _start(state: ClusterState, progress: Progress, pki: pathlib.Path, logs: pathlib.Path,
           crashloop_backoff_base: float | None, extra_agent_args: list[str]) -> None:
    state_dir = pathlib.Path(state.state_dir)
    bins = state.binaries

    # The pod network first (the API server's certificate names its first Service IP): in netns
    # mode the cluster IPs are a /20 of the same range, served by the node agent's service proxy
    # on its bridge, so they answer and never leave the machine.
    bridge = cidr = ""
    if state.network != "loopback" and (state.network == "netns" or _netns_possible()):
        bridge, cidr = pick_pod_network()
        state.service_cidr = service_cidr_of(cidr)
    progress.next("certificates and keys (CA, serving, admin, components, service accounts)")
    make_pki(pki, state.service_cidr)

    progress.next("etcd")
    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd_argv = [
        bins["etcd"], "--name", "slipway-dev", "--data-dir", str(state_dir / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"slipway-dev=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(2 * 1024**3),
    ]
    etcd = _spawn("etcd", etcd_argv, logs)
    state.components.append(Component("etcd", etcd.pid, str(logs / "etcd.log"),
                                      f"{etcd_url}/health", argv=etcd_argv))
    state.save()
    wait_for("etcd /health", lambda: probe(f"{etcd_url}/health"), progress, timeout=60,
             process=etcd, log=logs / "etcd.log")


    progress.next("kube-apiserver (RBAC, default admission plugins incl. PodSecurity)")
    api_port = free_port()
    # Every request of the operator's ServiceAccount (manifests/) is audited, so that a test can
    # prove that each RBAC rule is used (least privilege). Everything else: not logged.
    policy = state_dir / "audit-policy.yaml"
    policy.write_text(json.dumps({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}]}))
    state.server = f"https://127.0.0.1:{api_port}"
    apiserver = _spawn("kube-apiserver", [
        bins["kube-apiserver"],
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={state.service_cidr}",
        "--allow-privileged=true",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--endpoint-reconciler-type=none",
        f"--audit-policy-file={policy}",
        f"--audit-log-path={logs / 'audit.log'}",
        "--audit-log-maxsize=200",
        "--profiling=false",
        "--v=1",
    ], logs)
    state.components.append(Component("kube-apiserver", apiserver.pid,
                                      str(logs / "kube-apiserver.log"), f"{state.server}/readyz"))
    state.save()
    context = _ssl_context(pki)
    wait_for("kube-apiserver /readyz", lambda: probe(f"{state.server}/readyz", context),
             progress, timeout=180, process=apiserver, log=logs / "kube-apiserver.log")
    write_kubeconfig(pathlib.Path(state.kubeconfig), state.server, pki, "admin")
    for user in ("kcm", "scheduler"):
        write_kubeconfig(state_dir / f"{user}.kubeconfig", state.server, pki, user)
    state.save()

    progress.next("kube-controller-manager (all controllers) and kube-scheduler")
    kcm_port, sched_port = free_port(), free_port()
    kcm = _spawn("kube-controller-manager", [
        bins["kube-controller-manager"],
        f"--kubeconfig={state_dir / 'kcm.kubeconfig'}",
        f"--authentication-kubeconfig={state_dir / 'kcm.kubeconfig'}",
        f"--authorization-kubeconfig={state_dir / 'kcm.kubeconfig'}",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--controllers=*", "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={state.service_cidr}",
        "--node-monitor-grace-period=60s",
        "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
        "--v=1",
    ], logs)
    state.components.append(Component("kube-controller-manager", kcm.pid,
                                      str(logs / "kube-controller-manager.log"),
                                      f"https://127.0.0.1:{kcm_port}/healthz"))
    scheduler = _spawn("kube-scheduler", [
        bins["kube-scheduler"],
        f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        f"--authentication-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        f"--authorization-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
        "--v=1",
    ], logs)
    state.components.append(Component("kube-scheduler", scheduler.pid,
                                      str(logs / "kube-scheduler.log"),
                                      f"https://127.0.0.1:{sched_port}/healthz"))
    state.save()
    insecure = _ssl_context(pki, client=None, verify=False)
    wait_for("kube-controller-manager /healthz",
             lambda: probe(f"https://127.0.0.1:{kcm_port}/healthz", insecure), progress,
             timeout=120, process=kcm, log=logs / "kube-controller-manager.log")
    wait_for("kube-scheduler /healthz",
             lambda: probe(f"https://127.0.0.1:{sched_port}/healthz", insecure), progress,
             timeout=120, process=scheduler, log=logs / "kube-scheduler.log")

    progress.next(f"node agent ({len(state.nodes)} node(s), network {state.network})")
    agent_args = [
        sys.executable, "-m", "slipway_dev.nodeagent", "--kubeconfig", state.kubeconfig,
        "--nodes", ",".join(state.nodes), "--images", str(REPO_ROOT / "examples" / "images.yaml"),
        "--state-dir", str(state_dir / "nodes"), "--network", state.network,
        "--delete-nodes-on-exit",
    ]
    if bridge:
        agent_args += ["--bridge", bridge, "--pod-cidr", cidr,
                       "--service-cidr", state.service_cidr]
    if crashloop_backoff_base is not None:
        agent_args += ["--crashloop-backoff-base", str(crashloop_backoff_base)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "operator"), *filter(None, [env.get("PYTHONPATH")])])
    agent = _spawn("node-agent", agent_args + extra_agent_args, logs, env=env)
    state.components.append(Component("node-agent", agent.pid, str(logs / "node-agent.log"),
                                       argv=agent_args))
    state.save()

    progress.next("nodes Ready")
    wait_for("nodes Ready", lambda: _nodes_ready(state), progress, timeout=90, process=agent,
             log=logs / "node-agent.log")

    progress.next("default ServiceAccount and cluster roles")
    wait_for("ServiceAccount default/default",
             lambda: kubectl(state, "get", "serviceaccount", "default", "-n", "default")
             .returncode == 0, progress, timeout=90, process=kcm,
             log=logs / "kube-controller-manager.log")
    state.save()


def run_operator(state: ClusterState, log: pathlib.Path,
                 env: dict[str, str] | None = None, metrics_port: int = 0, *,
                 identity: str | None = None,
                 kubeconfig: str | None = None) -> subprocess.Popen[bytes]:
    """``slipway run`` against this cluster with its admin credentials (or ``kubeconfig``),
    logging to ``log`` (the benchmarks' operator; the tests run it as its own
    ServiceAccount); ``identity``: its name in the leader Lease (default: host and random)."""
    argv = [sys.executable, "-m", "slipway.cli", "run", "--liveness", "",
            "--metrics-port", str(metrics_port), "--lease-namespace", "default"]
    if identity:
        argv += ["--identity", identity]
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, env={"KUBECONFIG": kubeconfig or state.kubeconfig, "PATH": "/usr/bin:/bin",
                       **(env or {})},
            stdout=out, stderr=subprocess.STDOUT)


def _netns_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def service_cidr_of(pod_cidr: str) -> str:
    """The cluster IPs of a pod network: its last /20, 4,094 Services (nodes take /24s from the
    start, so up to 240 nodes)."""
    network = ipaddress.ip_network(pod_cidr)
    return str(list(network.subnets(new_prefix=20))[-1])


def pick_pod_network() -> tuple[str, str]:
    """A bridge name and pod CIDR no other local cluster uses (several may run at once)."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for line in routes.splitlines():
        words = line.split()
        with contextlib.suppress(ValueError):
            device = words[words.index("dev") + 1] if "dev" in words[:-1] else ""
            taken.append((ipaddress.ip_network(words[0], strict=False), device))
    for index in range(1, 40):
        bridge = f"slw{index}"
        cidr = ipaddress.ip_network(f"10.{213 + index}.0.0/16")
        # A bridge whose node agent is gone (killed before it cleaned up) is taken again: the
        # new agent removes what the old one left, its pods' processes too (podnet).
        if pathlib.Path(f"/sys/class/net/{bridge}").exists() and not _agent_gone(bridge):
            continue
        if any(cidr.overlaps(net) for net, device in taken
               if net.prefixlen > 0 and device != bridge):
            continue
        return bridge, str(cidr)
    raise ClusterError("no free pod network among slw1..slw39 / 10.214-252.0.0/16")


def _argument(argv: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv``, if any."""
    for given, value in zip(argv, argv[1:], strict=False):
        if given == flag:
            return value
    return None


def _agent_gone(bridge: str) -> bool:
    """No node agent holds ``bridge``'s lock (podnet.NetnsNetwork takes it before it makes
    the bridge, and holds it while it runs)."""
    try:
        handle = open(f"/run/slipway-nodeagent-{bridge}.lock", "a")  # noqa: SIM115
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _nodes_ready(state: ClusterState) -> bool:
    result = kubectl(state, "get", "nodes", "-o", "json")
    if result.returncode != 0:
        return False
    items = json.loads(result.stdout).get("items", [])
    ready = {
        item["metadata"]["name"] for item in items
        if any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in item.get("status", {}).get("conditions", []))
    }
    return set(state.nodes) <= ready


CRD_NAME = "modeldeployments.slipway.dev"


def _crd_established(state: ClusterState, name: str) -> bool:
    result = kubectl(state, "get", "crd", name, "-o", "json")
    if result.returncode != 0:
        return False
    conditions = (json.loads(result.stdout).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install_crd(state: ClusterState, progress: Progress | None = None, *,
                timeout: float = 60) -> str:
    """Apply the ModelDeployment CRD (server-side) and wait until it is Established.

    Polled here rather than with `kubectl wait --for=condition=Established`: right after the
    create the CRD has no status.conditions yet, and kubectl wait then fails at once ("<nil> is
    of the type <nil>, expected []interface{}") instead of waiting.
    """
    crd = REPO_ROOT / "crds" / f"{CRD_NAME}.yaml"
    result = kubectl(state, "apply", "--server-side", "-f", str(crd))
    if result.returncode != 0:
        raise ClusterError(f"applying {crd} failed:\n{result.stderr.strip()}")
    wait_for(f"CRD {CRD_NAME} Established", lambda: _crd_established(state, CRD_NAME),
             progress or Progress(1, quiet=True), timeout=timeout,
             log=pathlib.Path(state.state_dir) / "logs" / "kube-apiserver.log")
    return CRD_NAME


def down(state_dir: pathlib.Path | None = None, *, quiet: bool = False,
         keep_logs: bool = False) -> bool:
    """Stop every process ``up`` started (node agent first), then remove the state folder."""
    state_dir = (state_dir or DEFAULT_STATE_DIR).resolve()
    state = ClusterState.load(state_dir)
    if state is None:
        if not quiet:
            print(f"no cluster state in {state_dir}; nothing to stop", file=sys.stderr)
        return False
    for component in reversed(state.components):
        _stop(component, grace=15 if component.name == "node-agent" else 10)
        if not quiet:
            print(f"[dev-cluster] stopped {component.name} (pid {component.pid})",
                  file=sys.stderr)
        bridge = _argument(component.argv or [], "--bridge")
        if component.name == "node-agent" and bridge and _agent_gone(bridge):
            # A node agent with a thousand pods does not finish its cleanup in its grace
            # time and is killed: what it left (pods' processes, namespaces, veths, the
            # bridge) goes now, not when the next cluster happens to take this bridge.
            from slipway_dev import podnet

            podnet.remove_bridge_leftovers(bridge)
    if keep_logs:
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(state_dir / "etcd", ignore_errors=True)
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
    return True


def restart_etcd(state: ClusterState, *, down_seconds: float = 0.0, kill: bool = False,
                 timeout: float = 60) -> float:
    """Stop etcd (SIGTERM, or SIGKILL with ``kill``), keep it down for ``down_seconds``, start
    it again on its data and ports, and wait for its /health. The API server stays up and
    reconnects by itself. Returns the seconds etcd did not answer."""
    etcd = state.component("etcd")
    if etcd is None or not etcd.argv:
        raise ClusterError("no restartable etcd in this cluster's state (started by an older "
                           "slipway_dev?)")
    began = time.monotonic()
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(etcd.pid, signal.SIGKILL)
    _stop(etcd, grace=10)
    time.sleep(down_seconds)
    logs = pathlib.Path(etcd.log).parent
    process = _spawn("etcd", etcd.argv, logs)
    etcd.pid = process.pid
    state.save()
    progress = Progress(1, quiet=True)
    wait_for("etcd /health after its restart", lambda: probe(str(etcd.health)), progress,
             timeout=timeout, process=process, log=pathlib.Path(etcd.log))
    return time.monotonic() - began


def _stop(component: Component, *, grace: float) -> None:
    _stop_pid(component.pid, grace=grace)
    child = _CHILDREN.pop(component.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)


def _stop_pid(pid: int, *, grace: float) -> None:
    component = Component("", pid, "")
    if not pid_alive(component.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(component.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(component.pid):
        time.sleep(0.1)
    if pid_alive(component.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(component.pid, signal.SIGKILL)


def status(state_dir: pathlib.Path | None = None) -> tuple[bool, list[str]]:
    """One line per component: running and healthy, unhealthy, or dead (with its log tail)."""
    state_dir = (state_dir or DEFAULT_STATE_DIR).resolve()
    state = ClusterState.load(state_dir)
    if state is None:
        return False, [f"no cluster in {state_dir} (start one with `slipway dev-cluster up`)"]
    pki = state_dir / "pki"
    lines, healthy = [], True
    for component in state.components:
        if not pid_alive(component.pid):
            healthy = False
            lines.append(f"{component.name:25} DEAD (pid {component.pid}); last log lines:\n"
                         + _tail(component.log, 8))
            continue
        ok = True
        if component.health:
            if component.name == "kube-apiserver":
                context: ssl.SSLContext | None = _ssl_context(pki)
            elif component.health.startswith("https"):
                context = _ssl_context(pki, client=None, verify=False)
            else:
                context = None
            ok = probe(component.health, context)
        healthy &= ok
        lines.append(f"{component.name:25} {'running' if ok else 'UNHEALTHY'} "
                     f"(pid {component.pid})")
    if healthy:
        nodes = _nodes_ready(state)
        healthy &= nodes
        lines.append(f"{'nodes':25} {'Ready' if nodes else 'NOT READY'} "
                     f"({', '.join(state.nodes)})")
    lines.append(f"kubeconfig: {state.kubeconfig}")
    return healthy, lines


def usage(state: ClusterState) -> str:
    return (f"The cluster is up. Use it with:\n"
            f"  export KUBECONFIG={state.kubeconfig}\n"
            f"  {state.binaries.get('kubectl', 'kubectl')} get nodes\n"
            f"Stop it with: slipway dev-cluster down")


def main(action: str, args: argparse.Namespace) -> int:
    state_dir = pathlib.Path(args.state_dir) if getattr(args, "state_dir", None) else None
    try:
        if action == "up":
            state = up(state_dir, nodes=getattr(args, "nodes", 1))
            print(usage(state))
            return 0
        if action == "down":
            return 0 if down(state_dir) else 1
        if action == "env":
            loaded = ClusterState.load((state_dir or DEFAULT_STATE_DIR).resolve())
            if loaded is None:
                print("no cluster running", file=sys.stderr)
                return 1
            kubectl_dir = pathlib.Path(loaded.binaries["kubectl"]).parent
            print(f"export KUBECONFIG={loaded.kubeconfig}\nexport PATH={kubectl_dir}:$PATH")
            return 0
        ok, lines = status(state_dir)
        print("\n".join(lines))
        return 0 if ok else 1
    except (ClusterError, binaries.BinariesError) as error:
        print(f"dev-cluster {action}: {error}", file=sys.stderr)
        return 1
