"""Benchmark: fault tolerance in figures, each next to a floor measured in the same run.

Run by hand on the local cluster (not in CI; about 25 minutes with the defaults):

    .venv/bin/python bench/chaos.py [--takeovers 10] [--soak-objects 50] [--soak-minutes 10]

It starts its own local cluster and two operators (admin credentials, the default Lease
timings: 15 s lease, 10 s renew deadline, 2 s retry), then prints:

1. **takeover**: ``--takeovers`` times, the leader is SIGKILLed while a change (a new revision)
   is applied at that instant: kill → the standby leads, and kill → the change's first decision
   written (``status.observedGeneration``), p50/max; floor: the same change with the leader
   alive, and the Lease duration a standby must wait out (the dead leader never released it);
2. **faults**: the rollout stories (good v1, bad v2, crash-looping v3, good v4) through
   ``slipway_dev.faultproxy``, once passing everything (the floor) and once with 20 % of the
   requests failed (17 % answered 500/503/429/409, 3 % held 31 s, past the client's timeout)
   and half the watches cut: apply → end phase with every Event posted, per story;
3. **soak**: ``--soak-objects`` ModelDeployments, all re-applied unchanged every 10 s for
   ``--soak-minutes``, the leader SIGKILLed every 2 minutes (and started again as the
   standby): writes to children (Deployments, Services, ControllerRevisions; from the API
   server's own ``apiserver_request_total``), rollouts started (Progressing Events), and the
   operators' RSS over the soak.

Progress goes to stderr; the tables to stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import kubernetes
import yaml
from prometheus_client import parser as prometheus_parser

from rollout import write_requests  # bench/ is this script's folder
from slipway_dev import cluster, faultproxy

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/slipway/reference-model"
LEASE_SECONDS = 15
CHILDREN = {"deployments", "services", "controllerrevisions"}
FAULTS = {"errors": 0.17, "delays": 0.03, "delay_seconds": 31.0, "cuts": 0.5,
          "cut_after": [2.0, 20.0]}
WARM_SECONDS = 90  # a restarted operator's RSS is counted once its watches and cache are full
START = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - START
    print(f"[chaos {time.strftime('%H:%M:%S')} +{elapsed / 60:.1f} min] {message}",
          file=sys.stderr, flush=True)


def release(name: str, namespace: str, version: str = "1.0.0", tag: str = "1.0.0",
            replicas: int = 1) -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "reference.yaml").read_text()))
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["model"]["version"] = version
    doc["spec"]["model"]["uri"] = f"file:///opt/models/iris-classifier/{version}/model.json"
    doc["spec"]["runtime"]["image"] = f"{IMAGE}:{tag}"
    doc["spec"]["runtime"].pop("resources", None)
    doc["spec"]["rollout"]["progressDeadlineSeconds"] = 45
    for test in doc["spec"]["smokeTests"]:
        for value in test.get("expect", {}).get("values", []):
            if value["path"] == "$.model.version":
                value["equals"] = version
    return dict(doc)


class Operator:
    """One ``slipway run``, by identity; killed and started again as the bench goes."""

    def __init__(self, state: cluster.ClusterState, identity: str, log: pathlib.Path,
                 env: dict[str, str] | None = None, kubeconfig: str | None = None) -> None:
        self.state, self.identity, self.log = state, identity, log
        self.env, self.kubeconfig = dict(env or {}), kubeconfig
        self.port = cluster.free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.process = cluster.run_operator(self.state, self.log, env=self.env,
                                            metrics_port=self.port, identity=self.identity,
                                            kubeconfig=self.kubeconfig)
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str) -> float | None:
        """A label-less sample, or None while the endpoint does not answer."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as page:
                text = page.read().decode()
        except OSError:
            return None
        for family in prometheus_parser.text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return 0.0

    def leads(self) -> bool:
        return self.alive() and self.metric("slipway_leader") == 1.0

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("operator gone")


def wait(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> float:
    started = time.monotonic()
    last = started
    while not check():
        now = time.monotonic()
        if now - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        if now - last > 15:
            say(f"  still waiting for {what} ({now - started:.0f} s)")
            last = now
        time.sleep(every)
    return time.monotonic() - started


class Cluster:
    def __init__(self, state: cluster.ClusterState) -> None:
        self.state = state
        self.kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
        api = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    def namespace(self, name: str) -> str:
        subprocess.run([*self.kubectl, "create", "namespace", name], check=True,
                       capture_output=True)
        return name

    def apply(self, docs: list[dict[str, Any]]) -> None:
        subprocess.run([*self.kubectl, "apply", "-f", "-"], check=True, capture_output=True,
                       input=yaml.safe_dump_all(docs).encode())

    def md(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(
            "slipway.dev", "v1alpha1", namespace, "modeldeployments", name))

    def mds(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(
            "slipway.dev", "v1alpha1", namespace, "modeldeployments")["items"])

    def settled(self, namespace: str, name: str, phase: str) -> bool:
        """In ``phase`` for its generation, with nothing left to announce."""
        md = self.md(namespace, name)
        status = md.get("status") or {}
        return (status.get("phase") == phase and not status.get("announcements") and
                status.get("observedGeneration") == md["metadata"]["generation"])

    def progressing_events(self, namespace: str) -> int:
        events = self.core.list_namespaced_event(namespace).items
        return sum(1 for e in events if e.reason == "Progressing")


def leader_of(operators: list[Operator], timeout: float = 60) -> Operator:
    found: list[Operator] = []

    def one_leads() -> bool:
        found[:] = [op for op in operators if op.leads()]
        return len(found) == 1
    wait(one_leads, timeout, "one leader", every=0.2)
    return found[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --------------------------------------------------------------------------------------------


def takeovers(c: Cluster, operators: list[Operator], rounds: int) -> list[str]:
    ns = c.namespace("chaos-takeover")
    c.apply([release("md-0", ns)])
    wait(lambda: c.settled(ns, "md-0", "Ready"), 180, "md-0 Ready")
    change = 0

    def changed() -> float:
        """Apply a new revision; the seconds until its first decision is written."""
        nonlocal change
        change += 1
        doc = release("md-0", ns)
        doc["spec"]["runtime"]["env"] = [{"name": "CHAOS_ROUND", "value": str(change)}]
        sent = time.monotonic()
        c.apply([doc])
        generation = c.md(ns, "md-0")["metadata"]["generation"]
        wait(lambda: (c.md(ns, "md-0").get("status") or {}).get("observedGeneration") ==
             generation, 120, "the change's first decision", every=0.05)
        return time.monotonic() - sent

    floor = []
    for i in range(3):
        floor.append(changed())
        wait(lambda: c.settled(ns, "md-0", "Ready"), 180, "md-0 Ready")
    lead_times, decide_times = [], []
    for i in range(rounds):
        leader = leader_of(operators)
        standby = next(op for op in operators if op is not leader)
        killed = time.monotonic()
        leader.kill()
        decide_times.append(changed())
        wait(standby.leads, 120, f"{standby.identity} leading", every=0.05)
        lead_times.append(time.monotonic() - killed)
        say(f"takeover {i + 1}/{rounds}: {standby.identity} leads {lead_times[-1]:.1f} s after "
            f"the kill; the change decided {decide_times[-1]:.1f} s after it")
        wait(lambda: c.settled(ns, "md-0", "Ready"), 180, "md-0 Ready")
        leader.start()  # the standby now
    return [
        "| takeover (SIGKILL of the leader) | p50 | max | floor |",
        "|---|---|---|---|",
        f"| kill → the standby leads | {pct(lead_times, 0.5):.1f} s | {max(lead_times):.1f} s "
        f"| the Lease: {LEASE_SECONDS} s |",
        f"| kill → a change applied at the kill decided | {pct(decide_times, 0.5):.1f} s | "
        f"{max(decide_times):.1f} s | leader alive: {statistics.median(floor):.2f} s |",
        f"({rounds} kills)",
    ]


STORIES = [
    ("v1 good", "1.0.0", "1.0.0", "Ready"),
    ("v2 bad (500s)", "2.0.0", "1.0.0-wrong-model-path", "RolledBack"),
    ("v3 crash loop", "3.0.0", "1.0.0-missing-dep", "RolledBack"),
    ("v4 good", "1.1.0", "1.0.0", "Ready"),
]


def stories(c: Cluster, proxy: faultproxy.Process, operator: Operator,
            faults: dict[str, Any], ns: str) -> tuple[list[float], dict[str, Any]]:
    proxy.set_faults(**faults)
    before = proxy.stats() or {}
    c.namespace(ns)
    times = []
    for what, version, tag, end in STORIES:
        began = time.monotonic()
        c.apply([release("iris", ns, version, tag, replicas=2)])
        generation = c.md(ns, "iris")["metadata"]["generation"]

        def done() -> bool:
            md = c.md(ns, "iris")
            return md["metadata"]["generation"] == generation and c.settled(ns, "iris", end)
        wait(done, 600, f"{what} {end} ({ns})", every=0.2)
        times.append(time.monotonic() - began)
        say(f"{ns}: {what} → {end} in {times[-1]:.1f} s")
    history = [h["outcome"] for h in c.md(ns, "iris")["status"]["history"]]
    expected = ["Verified", "Failed", "RolledBack", "Failed", "RolledBack", "Verified"]
    if history != expected:
        raise SystemExit(f"{ns}: history {history}, not {expected}")
    after = proxy.stats() or {}
    counts = {k: after["counts"].get(k, 0) - before.get("counts", {}).get(k, 0)
              for k in after.get("counts", {})}
    return times, counts


def faults(c: Cluster, state_dir: pathlib.Path) -> list[str]:
    pki = state_dir / "pki"
    proxy = faultproxy.Process(c.state.server, ca=str(pki / "ca.crt"),
                               client_cert=(str(pki / "admin.crt"), str(pki / "admin.key")),
                               log=str(state_dir / "logs" / "faultproxy.log"), seed=5)
    kubeconfig = state_dir / "through-proxy.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
        "clusters": [{"name": "proxy", "cluster": {"server": proxy.url}}],
        "users": [{"name": "none", "user": {}}],
        "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "none"}}]}))
    operator = Operator(c.state, "chaos-faults", state_dir / "logs" / "operator-faults.log",
                        kubeconfig=str(kubeconfig))
    operator.start()
    try:
        wait(operator.leads, 60, "the operator behind the proxy leading")
        floor, _ = stories(c, proxy, operator, {}, "chaos-no-faults")
        faulty, counts = stories(c, proxy, operator, FAULTS, "chaos-faults")
    finally:
        operator.stop()
        proxy.stop()
    injected = {k: v for k, v in counts.items() if ":" in k or k in ("delay", "cut")}
    requests = counts.get("requests", 0)
    lines = ["| story (apply → end phase, every Event posted) | no faults (floor) | 20 % faults "
             "| ratio |", "|---|---|---|---|"]
    for (what, _, _, end), a, b in zip(STORIES, floor, faulty):
        lines.append(f"| {what} → {end} | {a:.1f} s | {b:.1f} s | {b / a:.1f}× |")
    lines.append(f"| all four | {sum(floor):.1f} s | {sum(faulty):.1f} s | "
                 f"{sum(faulty) / sum(floor):.1f}× |")
    lines.append(f"({requests} requests in the faulty run, "
                 f"{sum(injected.values())} faults injected: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(injected.items())) + ")")
    return lines


def soak(c: Cluster, operators: list[Operator], objects: int, minutes: float) -> list[str]:
    ns = c.namespace("chaos-soak")
    docs = [release(f"md-{i:03d}", ns) for i in range(objects)]
    c.apply(docs)

    def all_ready() -> bool:
        items = c.mds(ns)
        return len(items) == objects and all(
            (md.get("status") or {}).get("phase") == "Ready" and
            not (md.get("status") or {}).get("announcements") for md in items)
    say(f"soak: {objects} objects applied; waiting until all are Ready")
    wait(all_ready, 900, f"{objects} Ready", every=1)
    time.sleep(15)  # the last rollouts' own writes settle
    writes_before = write_requests(c.state, CHILDREN)
    status_before = write_requests(c.state, {"modeldeployments"})
    progressing_before = c.progressing_events(ns)
    rss: dict[str, list[float]] = {op.identity: [] for op in operators}
    first = {op.identity: op.rss_mib() for op in operators}
    kills = reapplies = 0
    began = time.monotonic()
    next_kill = began + 120
    while time.monotonic() - began < minutes * 60:
        tick = time.monotonic()
        c.apply(docs)
        reapplies += 1
        for op in operators:
            if op.alive() and time.monotonic() - op.started > WARM_SECONDS:
                rss[op.identity].append(op.rss_mib())
        if time.monotonic() >= next_kill:
            leader = leader_of(operators)
            leader.kill()
            kills += 1
            standby = next(op for op in operators if op is not leader)
            took = wait(standby.leads, 120, "the standby leading", every=0.1)
            leader.start()
            say(f"soak: kill {kills}: {standby.identity} leads after {took:.1f} s")
            next_kill += 120
        say(f"soak: {(time.monotonic() - began) / 60:.1f}/{minutes:g} min, {reapplies} "
            f"re-applies, {kills} kills, writes to children so far "
            f"{write_requests(c.state, CHILDREN) - writes_before:.0f}")
        time.sleep(max(0.0, 10 - (time.monotonic() - tick)))
    time.sleep(10)
    child_writes = write_requests(c.state, CHILDREN) - writes_before
    status_writes = write_requests(c.state, {"modeldeployments"}) - status_before
    rollouts = c.progressing_events(ns) - progressing_before
    samples = [v for values in rss.values() for v in values]
    spread = (max(samples) - min(samples)) / min(samples) * 100 if samples else 0.0
    return [
        f"| soak: {objects} objects, re-applied every 10 s for {minutes:g} min, leader killed "
        "every 2 min | figure |", "|---|---|",
        f"| re-applies of every object / leader kills | {reapplies} / {kills} |",
        f"| writes to children (Deployments, Services, ControllerRevisions) | "
        f"{child_writes:.0f} |",
        f"| writes to ModelDeployments (status, kopf's annotations) | {status_writes:.0f} |",
        f"| rollouts started (Progressing Events) | {rollouts} |",
        f"| operator RSS at the start (per process) | "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in first.items()) + " |",
        f"| operator RSS over the soak, min – max (every process once {WARM_SECONDS} s old, "
        "sampled every 10 s) | "
        f"{min(samples):.0f} – {max(samples):.0f} MiB ({spread:.0f} %) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takeovers", type=int, default=10)
    parser.add_argument("--soak-objects", type=int, default=50)
    parser.add_argument("--soak-minutes", type=float, default=10)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["takeover", "faults", "soak"])
    args = parser.parse_args()
    # SIGTERM (a `kill`, a CI timeout) ends the run through the finally below: the cluster,
    # its pods and the operators are stopped, not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-chaos-"))
    say(f"local cluster in {state_dir}")
    state = cluster.up(state_dir, nodes=2, crashloop_backoff_base=1.0)
    operators: list[Operator] = []
    tables: list[list[str]] = []
    try:
        cluster.install_crd(state)
        c = Cluster(state)
        direct = {"SLIPWAY_SMOKE_ROUTE": "direct"}
        operators = [Operator(state, name, state_dir / "logs" / f"operator-{name}.log",
                              env=direct) for name in ("chaos-a", "chaos-b")]
        if "takeover" not in args.skip or "soak" not in args.skip:
            for op in operators:
                op.start()
            leader_of(operators)
        if "takeover" not in args.skip:
            say(f"1/3 takeover: {args.takeovers} kills of the leader")
            tables.append(takeovers(c, operators, args.takeovers))
        if "soak" not in args.skip:
            say(f"2/3 soak: {args.soak_objects} objects, {args.soak_minutes:g} min")
            tables.append(soak(c, operators, args.soak_objects, args.soak_minutes))
        for op in operators:
            op.stop()  # the Lease is released for the operator behind the proxy
        if "faults" not in args.skip:
            say("3/3 faults: the four stories without and with 20 % API faults")
            tables.append(faults(c, state_dir))
    finally:
        for op in operators:
            op.stop()
        cluster.down(state_dir, quiet=True, keep_logs=True)
        say(f"logs kept in {state_dir / 'logs'}")
    print(f"\nbench/chaos.py, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    for table in tables:
        print()
        print("\n".join(table))


if __name__ == "__main__":
    main()
