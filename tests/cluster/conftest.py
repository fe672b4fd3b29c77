"""Fixtures for tests against a real control plane built from source (marker ``cluster``).

One cluster per test session (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
the node agent), the CRD installed, the operator running as a subprocess watching all
namespaces, and a fresh namespace per test labelled for the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import parser as prometheus_parser
import yaml

from slipway_dev import cluster as dev_cluster
from tests.cluster.kube import Kubectl, wait_until
from tests.conftest import ROOT

pytestmark = pytest.mark.cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[dev_cluster.ClusterState]:
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-test-cluster-"))
    state = dev_cluster.up(state_dir, nodes=2, crashloop_backoff_base=1.0)
    try:
        yield state
    finally:
        # A failure that does not come back on its own is explained only by the logs of the
        # operator, the node agent and the control plane: kept when a test failed.
        failed = bool(request.session.testsfailed)
        dev_cluster.down(state_dir, quiet=True, keep_logs=failed)
        if failed:
            sys.stderr.write(f"\ncluster logs of this session kept in {state_dir / 'logs'}\n")


@pytest.fixture(scope="session")
def kubectl(cluster: dev_cluster.ClusterState) -> Kubectl:
    return Kubectl(cluster.binaries["kubectl"], cluster.kubeconfig)


@pytest.fixture(scope="session")
def crd(cluster: dev_cluster.ClusterState) -> str:
    return dev_cluster.install_crd(cluster)


OPERATOR_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                  "RoleBinding")


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: dev_cluster.ClusterState, kubectl: Kubectl, crd: str) -> str:
    """Credentials of the operator's own ServiceAccount, with the RBAC of manifests/.

    The whole cluster suite runs the operator with these: a rule missing from the ClusterRole
    fails the tests that need it, and test_zz_least_privilege fails on a rule nothing used.
    """
    # The base, and the proxy-route overlay: the suite runs the operator outside the cluster,
    # where its smoke tests go through the API server's proxy (and, for the direct-route tests,
    # straight to pod and cluster IPs).
    docs = []
    for path in (ROOT / "manifests", ROOT / "manifests" / "proxy-route"):
        rendered = kubectl.run("kustomize", str(path)).stdout
        docs += [doc for doc in yaml.safe_load_all(rendered)
                 if doc and doc["kind"] in OPERATOR_KINDS]
    kubectl.apply(yaml.safe_dump_all(docs))
    token = kubectl.run("create", "token", "slipway-operator", "-n", "slipway-system",
                        "--duration=24h").stdout.strip()
    path = pathlib.Path(cluster.state_dir) / "operator.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster.server,
            "certificate-authority": str(pathlib.Path(cluster.state_dir) / "pki" / "ca.crt")}}],
        "users": [{"name": "slipway-operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local",
                                                      "user": "slipway-operator"}}],
    }))
    return str(path)


class Operator:
    """``slipway run`` in a subprocess; can be killed and started again."""

    def __init__(self, kubeconfig: str, log: pathlib.Path, identity: str = "suite-operator",
                 args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """``identity``: its name in the leader Lease, the same across restarts (as a container
        restarted in its pod: it renews its own Lease at once); ``args``, ``env``: added to
        every start."""
        self.kubeconfig = kubeconfig
        self.log = log
        self.identity = identity
        self.args = list(args or [])
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = dev_cluster.free_port()
        self.health_port = 0  # set with --liveness in ``args``

    def start(self, *, env: dict[str, str] | None = None, wrapper: list[str] | None = None,
              module: str = "slipway.cli") -> None:
        """Start ``slipway run``; ``env`` adds variables (SLIPWAY_SMOKE_ROUTE, say), ``wrapper``
        is put before the command (a private mount namespace), ``module`` replaces the entry
        point (a test's own, which changes the operator before running it)."""
        merged = dict(os.environ, KUBECONFIG=self.kubeconfig, SLIPWAY_WATCH_SERVER_TIMEOUT="60",
                      SLIPWAY_CONFLICT_RECHECK_SECONDS="2", **self.env, **(env or {}))
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [*(wrapper or []), sys.executable, "-m", module, "run", "--liveness", "",
                 "--metrics-port", str(self.metrics_port), "--identity", self.identity,
                 *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=merged, start_new_session=True)

    def metrics(self) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as page:
                return str(page.read().decode())
        except OSError as error:  # just started: wait_until tries again on AssertionError
            raise AssertionError(f"no metrics on :{self.metrics_port} yet: {error}") from None

    def metric(self, metric_name: str, /, **labels: str) -> float:
        """The value of one sample (0 when the series does not exist yet)."""
        for family in prometheus_parser.text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == metric_name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(cluster: dev_cluster.ClusterState, operator_kubeconfig: str) -> Iterator[Operator]:
    runner = Operator(operator_kubeconfig,
                      pathlib.Path(cluster.state_dir) / "logs" / "operator.log")
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    # Readable and unique: the test's name, cut short, plus a hash of its full id.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]
    short = request.node.name.lower().removeprefix("test_").replace("_", "-")[:40]
    short = "".join(c if c.isalnum() or c == "-" else "-" for c in short).strip("-")
    name = f"t-{short}-{digest}"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                 "pod-security.kubernetes.io/enforce-version": "latest"}}})
    wait_until(lambda: kubectl.get("serviceaccount", "default", name), timeout=60,
               what=f"ServiceAccount default in {name}")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)
