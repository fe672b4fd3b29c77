"""Benchmark: Slipway at scale, side by side with the API server's own floor, in one run.

Run by hand on the local cluster (not in CI; 1,000 objects take about an hour with the soak):

    .venv/bin/python bench/scale.py [--objects 1000] [--soak-minutes 30] [--churn 500]

It starts its own local cluster (enough nodes for one pod per object: a node has a /24)
and operator (metrics on, admin credentials, smoke tests straight to pod and cluster IPs as in
the cluster), then
prints, each Slipway figure next to its floor:

1. apply → Deployment and Service seen, for one object at a time (p50/p99 over ``--singles``);
   floor: the same two children created directly with the same client;
2. ``--objects`` applied at once (``--writers`` threads) → all children seen; floor: the same
   2 × N children created at once with the same client and threads (replicas 0: the floor is
   the API server's, not the pods'); with ``--floor-with-pods`` a second floor with one pod
   per Deployment, which the cluster starts while the rest are created, as for Slipway's;
3. time until all N are Ready (every pod verified behind its gate, then the release);
4. operator RSS at 0, 100 and N objects, and over ``--soak-minutes`` of idle resyncs;
5. CPU seconds per good rollout (a new model version on ``--rollouts`` objects, 1 replica);
6. watch events received and API requests made per pod change in that rollout;
7. the operator's CPU and watch events while ``--churn`` unrelated pods are created and deleted
   in another namespace, against its CPU over an idle window of the same length.

Times come from watches in this process, so each includes one watch delivery; the floor's do
too. Progress goes to stderr; the table to stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import math
import os
import pathlib
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
from prometheus_client import parser as prometheus_parser

from slipway.api import validation
from slipway.logic import render
from slipway_dev import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS, FLOOR_NS, CHURN_NS = "scale", "floor", "churn"
IMAGE = "registry.example.com/slipway/reference-model:1.0.0"
PODS_PER_NODE = 240  # a node's pod range is a /24
# The leader Lease of a large install: client-go's 15/10/2 s lost the Lease 7 to 21 times in
# ten minutes when 1,000 servers loaded the two cores (2026-12-03), and each loss parks the
# work. A longer Lease only delays a takeover, which this bench does not measure.
LEASE_FOR_A_LOADED_HOST = {"SLIPWAY_LEASE_SECONDS": "60",
                           "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": "45",
                           "SLIPWAY_LEASE_RETRY_SECONDS": "5"}
START = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - START
    print(f"[scale {time.strftime('%H:%M:%S')} +{elapsed / 60:.1f} min] {message}",
          file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def release(name: str, version: str = "1.0.0") -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "reference.yaml").read_text()))
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["replicas"] = 1
    doc["spec"]["runtime"]["image"] = IMAGE
    doc["spec"]["runtime"].pop("resources", None)
    doc["spec"]["model"]["version"] = version
    doc["spec"]["model"]["uri"] = f"file:///opt/models/iris-classifier/{version}/model.json"
    for test in doc["spec"]["smokeTests"]:
        # No latency budget: with a thousand servers starting on two cores, the answers are
        # slow, and this measures the operator, not the model.
        test.get("expect", {}).pop("maxLatencyMs", None)
        for value in test.get("expect", {}).get("values", []):
            if value["path"] == "$.model.version":
                value["equals"] = version
    # Probes every 10 s (the kubelet's default) rather than the example's 2 s: the node agent
    # probes every pod of the run on two cores.
    for probe in ("readiness", "liveness"):
        doc["spec"]["probes"][probe]["periodSeconds"] = 10
    # And answers given 10 s, liveness 6 misses (a minute): on two cores busy with a thousand
    # servers, a slow answer must not be a restart. (The two 1,000-object runs of 2026-12-03
    # that stopped at 512 Ready were not slow servers: the host's ARP table overflowed at
    # 512 entries and the other pods were unreachable; podnet.ensure_neighbour_room.)
    for probe in ("readiness", "liveness", "startup"):
        doc["spec"]["probes"][probe]["timeoutSeconds"] = 10
    doc["spec"]["probes"]["liveness"]["failureThreshold"] = 6
    # And ten minutes to start, not the example's 60 s: at 1,000 objects a reference server
    # took longer than that to answer its first probe, and was restarted into a CrashLoop.
    doc["spec"]["probes"]["startup"].update({"periodSeconds": 5, "failureThreshold": 120})
    # One pod per object at any time: the pod network is one Linux bridge, which takes at most
    # 1,024 ports (pods).
    doc["spec"]["rollout"].update({"maxSurge": 0, "maxUnavailable": 1})
    # No drain either: a pod that drains keeps its veth (its bridge port) for the drain's length
    # while its replacement takes another.
    doc["spec"]["runtime"]["drainSeconds"] = 0
    # Hundreds of pods start and wait behind their gates at once on two cores: minutes, not the
    # example's 60 s.
    doc["spec"]["rollout"]["progressDeadlineSeconds"] = 1800
    # And smoke-test requests given 60 s, 5 tries and 15 minutes for a whole run: on
    # 2026-12-03 a release failed its Service check after three 5 s timeouts at a load
    # average of 450 (1,000 Python servers on two cores). The checks themselves are unchanged.
    doc["spec"]["rollout"].update({"smokeTestTimeoutSeconds": 60, "smokeTestAttempts": 5,
                                   "verificationDeadlineSeconds": 900})
    return dict(doc)


def _relabel(value: Any) -> Any:
    """Slipway's labels renamed: the floor's objects must not reach the operator's watches."""
    if isinstance(value, dict):
        return {(k.replace("slipway.dev/", "floor.example/").replace(
            "app.kubernetes.io/managed-by", "floor.example/managed-by")
            if isinstance(k, str) else k): _relabel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relabel(v) for v in value]
    return value


def floor_children(name: str, replicas: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and Service Slipway renders for ``release(name)``, as a stranger's,
    with ``replicas`` pods (no readiness gate: nothing would open it)."""
    spec = validation.parse_spec(release(name)["spec"])
    rendered = render.render(spec, render.Meta(name=name, namespace=FLOOR_NS))
    deployment, service = (_relabel(copy.deepcopy(obj)) for obj in
                           (rendered.deployment, rendered.service))
    for obj in (deployment, service):
        obj["metadata"].pop("ownerReferences", None)
        obj["metadata"]["namespace"] = FLOOR_NS
    deployment["spec"]["replicas"] = replicas
    deployment["spec"]["template"]["spec"].pop("readinessGates", None)
    return deployment, service


class Seen:
    """First-seen times of Deployments and Services, and of ModelDeployment phases, by watch."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self.lock = threading.Lock()
        self.times: dict[tuple[str, str, str], float] = {}
        self.pod_changes = 0
        # ModelDeployments that ended Failed or RolledBack: name -> "reason: message"
        self.failed: dict[str, str] = {}
        self.stop = threading.Event()

    def mark(self, key: tuple[str, str, str]) -> None:
        with self.lock:
            self.times.setdefault(key, time.monotonic())

    def get(self, key: tuple[str, str, str]) -> float | None:
        with self.lock:
            return self.times.get(key)

    def _loop(self, lister: Any, on: Any) -> None:
        # Each new stream resumes from the last resourceVersion seen: a stream started without
        # one lists every object again as ADDED (1,000 "pod changes" a minute at 1,000 pods).
        version: str | None = None
        expired = "watch expired (410): listing again; counts include the list"
        while not self.stop.is_set():
            try:
                extra = {"resource_version": version} if version else {}
                for event in kubernetes.watch.Watch().stream(lister, timeout_seconds=60,
                                                             _request_timeout=90, **extra):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        if (obj.get("code") if isinstance(obj, dict) else None) == 410:
                            say(expired)
                            version = None
                        break
                    version = (obj["metadata"].get("resourceVersion") if isinstance(obj, dict)
                               else obj.metadata.resource_version) or version
                    on(event)
                    if self.stop.is_set():
                        return
            except kubernetes.client.ApiException as error:
                if error.status == 410:
                    say(expired)
                    version = None
                else:
                    say(f"watch broke ({error.status}); again")
                time.sleep(0.5)
            except Exception as error:  # noqa: BLE001 - a broken watch is started again
                say(f"watch broke ({type(error).__name__}); again")
                time.sleep(0.5)

    def start(self) -> None:
        apps = kubernetes.client.AppsV1Api(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)

        def child(kind: str) -> Any:
            def on(event: dict[str, Any]) -> None:
                if event["type"] == "ADDED":
                    meta = event["object"].metadata
                    self.mark((meta.namespace, meta.name, kind))
            return on

        def md(event: dict[str, Any]) -> None:
            obj = event["object"]
            status = obj.get("status") or {}
            current = status.get("observedGeneration") == obj["metadata"].get("generation")
            if current and status.get("phase") in ("Failed", "RolledBack"):
                failure = status.get("lastFailure") or {}
                with self.lock:
                    self.failed[obj["metadata"]["name"]] = (
                        f"{status['phase']} {failure.get('reason')}: "
                        f"{str(failure.get('message'))[:300]}")
            if status.get("phase") == "Ready" and current:
                self.mark((NS, obj["metadata"]["name"],
                           f"ready:{obj['metadata'].get('generation')}"))

        def pods(event: dict[str, Any]) -> None:
            with self.lock:
                self.pod_changes += 1

        loops = [
            (apps.list_deployment_for_all_namespaces, child("deployment")),
            (core.list_service_for_all_namespaces, child("service")),
            (lambda **kw: custom.list_namespaced_custom_object(
                "slipway.dev", "v1alpha1", NS, "modeldeployments", **kw), md),
            (lambda **kw: core.list_namespaced_pod(NS, **kw), pods),
        ]
        for lister, on in loops:
            threading.Thread(target=self._loop, args=(lister, on), daemon=True).start()


class Operator:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process, self.port = process, port
        self.ticks = os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("operator gone")

    def cpu(self) -> float:
        fields = pathlib.Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / self.ticks

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as page:
            text = page.read().decode()
        out = {}
        for family in prometheus_parser.text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out


def total(metrics: dict[Any, float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in metrics.items() if n == name
               and all(dict(labels).get(k) == want for k, want in match.items()))


def wait(check: Any, timeout: float, what: str, progress: Any = None,
         failed: dict[str, str] | None = None) -> float:
    """Wait until ``check()``; stop the run at once when ``failed`` (name -> why) fills: a
    release that failed will not become Ready, and the figures would be meaningless."""
    start = time.monotonic()
    last = 0.0
    while not check():
        now = time.monotonic()
        if failed:
            lines = "\n".join(f"  {name}: {why}" for name, why in sorted(failed.items())[:10])
            raise SystemExit(f"{len(failed)} release(s) failed while waiting for {what}:\n"
                             f"{lines}")
        if now - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        if progress is not None and now - last > 15:
            say(f"  waiting for {what}: {progress()} ({now - start:.0f} s)")
            last = now
        time.sleep(0.05)
    return time.monotonic() - start


def delete_all(kubectl: list[str], kinds: str, namespace: str) -> None:
    """Delete every object of ``kinds`` in ``namespace`` and wait until none is left
    (``kubectl delete --wait`` waits for each object in turn: minutes for thousands)."""
    subprocess.run([*kubectl, "delete", kinds, "--all", "-n", namespace, "--wait=false"],
                   check=True, capture_output=True)
    wait(lambda: not subprocess.run([*kubectl, "get", kinds, "-n", namespace, "-o", "name"],
                                    check=True, capture_output=True, text=True).stdout.strip(),
         600, f"{kinds} in {namespace} gone")


def create_all(jobs: list[Any], writers: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--churn", type=int, default=500)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--soak-minutes", type=float, default=30)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    parser.add_argument("--floor-with-pods", action="store_true",
                        help="also measure the burst's floor with one pod per Deployment, "
                             "started by the cluster as Slipway's are (the pods are deleted "
                             "again before Slipway's burst; minutes at 1,000)")
    parser.add_argument("--profile", type=pathlib.Path, default=None,
                        help="record the operator with py-spy (pip install -e '.[bench]') "
                             "during the rollouts of step 5, into this folder: collapsed "
                             "stacks and a summary of where the time went")
    args = parser.parse_args()
    if args.profile is not None and \
            not pathlib.Path(sys.executable).with_name("py-spy").exists():
        raise SystemExit("--profile needs py-spy next to this Python: "
                         "pip install -e '.[bench]'")
    n = args.objects
    nodes = max(1, math.ceil((n + 10) / PODS_PER_NODE))
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-scale-"))
    say(f"local cluster with {nodes} node(s) in {state_dir}")
    # The pod network of network namespaces (root): the API server's proxy and EndpointSlices
    # refuse loopback addresses.
    state = cluster.up(state_dir, nodes=nodes,
                       extra_agent_args=["--max-pods", str(PODS_PER_NODE + 10)])
    operator_process = None
    try:
        cluster.install_crd(state)
        kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
        for ns in (NS, FLOOR_NS, CHURN_NS):
            subprocess.run([*kubectl, "create", "namespace", ns], check=True,
                           capture_output=True)
        port = cluster.free_port()
        # Smoke tests straight to pod and cluster IPs, as the operator in the cluster sends them
        # (from outside, the API server's proxy would carry them all and be measured too).
        operator_process = cluster.run_operator(state, state_dir / "operator.log",
                                                env={"SLIPWAY_SMOKE_ROUTE": "direct",
                                                     **LEASE_FOR_A_LOADED_HOST},
                                                metrics_port=port)
        operator = Operator(operator_process, port)
        api = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
        apps = kubernetes.client.AppsV1Api(api)
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        seen = Seen(api)
        seen.start()
        wait(lambda: _metrics_up(operator), 60, "the operator's metrics")
        time.sleep(5)
        rss = {"0 objects": operator.rss_mib()}

        def create_md(body: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object("slipway.dev", "v1alpha1", NS,
                                                   "modeldeployments", body)

        def create_floor(name: str, replicas: int = 0) -> None:
            deployment, service = floor_children(name, replicas)
            apps.create_namespaced_deployment(FLOOR_NS, deployment)
            core.create_namespaced_service(FLOOR_NS, service)

        def children_seen(ns: str, name: str) -> float | None:
            times = [seen.get((ns, name, kind)) for kind in ("deployment", "service")]
            return max(times) if all(times) else None  # type: ignore[type-var]

        # 1. one at a time
        say(f"1/7 one at a time: {args.singles} floor pairs and {args.singles} releases, "
            "interleaved")
        single, single_floor = [], []
        for i in range(args.singles):
            name = f"single-{i:02d}"
            sent = time.monotonic()
            create_floor(name)
            wait(lambda: children_seen(FLOOR_NS, name), 30, f"floor children of {name}")
            single_floor.append(children_seen(FLOOR_NS, name) - sent)  # type: ignore[operator]
            sent = time.monotonic()
            create_md(release(name))
            wait(lambda: children_seen(NS, name), 60, f"children of {name}")
            single.append(children_seen(NS, name) - sent)  # type: ignore[operator]
            time.sleep(0.3)
        for i in range(args.singles):
            custom.delete_namespaced_custom_object("slipway.dev", "v1alpha1", NS,
                                                   "modeldeployments", f"single-{i:02d}")
        delete_all(kubectl, "deployments,services", FLOOR_NS)
        say(f"  single apply → children: p50 {statistics.median(single) * 1000:.0f} ms "
            f"(floor {statistics.median(single_floor) * 1000:.0f} ms)")
        wait(lambda: not apps.list_namespaced_deployment(NS).items, 120,
             "the single releases' Deployments gone")
        wait(lambda: not core.list_namespaced_pod(NS).items, 180, "their pods gone")

        def at_once(ns: str, names: list[str], create: Any, timeout: float) -> float:
            """``create(name)`` for all ``names`` on the writer threads; seconds until the
            watch had seen every one's Deployment and Service."""
            sent = time.monotonic()
            create_all([lambda name=name: create(name) for name in names], args.writers)
            wait(lambda: all(children_seen(ns, name) for name in names), timeout,
                 "all children", lambda: f"{sum(1 for m in names if children_seen(ns, m))}/{n}")
            return max(children_seen(ns, name) for name in names) - sent  # type: ignore

        # 2. at once: the floor first, then Slipway
        say(f"2/7 {n} floor pairs at once ({args.writers} writers)")
        names = [f"model-{i:04d}" for i in range(n)]
        burst_floor = at_once(FLOOR_NS, names, create_floor, 600)
        say(f"  floor: all children of {n} in {burst_floor:.1f} s")
        delete_all(kubectl, "deployments,services", FLOOR_NS)
        time.sleep(5)
        burst_floor_pods = None
        if args.floor_with_pods:
            # The same, while the cluster starts a pod for each Deployment, as it does for
            # Slipway's: what the pods' start costs the API server and the machine, apart.
            # Names of their own: the watch keeps the first time it saw each (namespace, name)
            say(f"2/7 {n} floor pairs at once with one pod each")
            burst_floor_pods = at_once(FLOOR_NS, [f"podfloor-{i:04d}" for i in range(n)],
                                       lambda name: create_floor(name, 1), 600)
            say(f"  floor with pods: all children of {n} in {burst_floor_pods:.1f} s")
            delete_all(kubectl, "deployments,services", FLOOR_NS)
            wait(lambda: not core.list_namespaced_pod(FLOOR_NS).items, 900,
                 "the floor's pods gone",
                 lambda: f"{len(core.list_namespaced_pod(FLOOR_NS).items)} left")
            time.sleep(5)

        say(f"2/7 {n} ModelDeployments at once ({args.writers} writers)")
        cpu0 = operator.cpu()
        sent = time.monotonic()
        burst = at_once(NS, names, lambda name: create_md(release(name)), 1200)
        rss[f"{n} objects, children there"] = operator.rss_mib()
        say(f"  Slipway: all children of {n} in {burst:.1f} s (floor {burst_floor:.1f} s); "
            f"RSS {rss[f'{n} objects, children there']:.0f} MiB")

        # 3. Ready
        say(f"3/7 waiting until all {n} are Ready")

        def ready_count() -> int:
            return sum(1 for name in names if seen.get((NS, name, "ready:1")))

        wait(lambda: ready_count() >= min(100, n), 3600, "100 Ready",
             lambda: f"{ready_count()}/{n}", failed=seen.failed)
        rss[f"{min(100, n)} of them Ready"] = operator.rss_mib()
        say(f"  RSS at {min(100, n)} Ready: {rss[f'{min(100, n)} of them Ready']:.0f} MiB")
        wait(lambda: ready_count() >= n, 3600, f"all {n} Ready", lambda: f"{ready_count()}/{n}",
             failed=seen.failed)
        all_ready = max(seen.get((NS, name, "ready:1")) or 0 for name in names) - sent
        cpu_first = operator.cpu() - cpu0
        time.sleep(30)
        rss[f"all {n} Ready"] = operator.rss_mib()
        say(f"  all Ready after {all_ready:.1f} s; CPU {cpu_first:.1f} s; "
            f"RSS {rss[f'all {n} Ready']:.0f} MiB")

        # 5. and 6. a good rollout on some of them
        rolled = names[:args.rollouts]
        say(f"5/7 a new model version on {len(rolled)} objects")
        time.sleep(10)
        before, cpu0 = operator.metrics(), operator.cpu()
        with seen.lock:
            pods0 = seen.pod_changes
        spy = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [str(pathlib.Path(sys.executable).with_name("py-spy")), "record", "--pid",
                 str(operator_process.pid), "--format", "raw", "--rate", "200", "--threads",
                 "--output", str(args.profile / "rollouts.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
        for name in rolled:
            custom.patch_namespaced_custom_object(
                "slipway.dev", "v1alpha1", NS, "modeldeployments", name,
                {"spec": release(name, "1.0.1")["spec"]})  # the expected answers too
        wait(lambda: all(seen.get((NS, name, "ready:2")) for name in rolled), 1800,
             "the rollouts Ready",
             lambda: f"{sum(1 for m in rolled if seen.get((NS, m, 'ready:2')))}/{len(rolled)}",
             failed=seen.failed)
        time.sleep(10)  # the old pods' last changes
        cpu1 = operator.cpu()  # before the scrape: rendering /metrics is the bench's cost
        after = operator.metrics()
        with seen.lock:
            pod_changes = seen.pod_changes - pods0
        if spy is not None and args.profile is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it recorded
            spy.wait(timeout=60)
            (args.profile / "summary.txt").write_text(summarise(args.profile / "rollouts.txt"))
            say(f"profile in {args.profile}")
        per_rollout = (cpu1 - cpu0) / len(rolled)
        scrape0 = operator.cpu()
        for _ in range(5):
            operator.metrics()
        scrape_cpu = (operator.cpu() - scrape0) / 5  # what Prometheus costs it per scrape
        say(f"  CPU per rollout {per_rollout * 1000:.0f} ms; {pod_changes} pod changes")
        pod_events = total(after, "slipway_watch_events_total", kind="Pod") - \
            total(before, "slipway_watch_events_total", kind="Pod")
        requests = {verb: total(after, "slipway_api_requests_total", verb=verb) -
                    total(before, "slipway_api_requests_total", verb=verb)
                    for verb in ("get", "list", "create", "patch", "delete")}
        by_resource = sorted(
            ((dict(labels).get("verb"), dict(labels).get("resource"),
              v - before.get((name_, labels), 0.0))
             for (name_, labels), v in after.items() if name_ == "slipway_api_requests_total"),
            key=lambda item: -item[2])
        say("  requests per rollout: " + ", ".join(
            f"{verb} {resource} {count / len(rolled):.2f}"
            for verb, resource, count in by_resource if count))

        # 7. unrelated churn, against an idle window of the same length. First the rollouts'
        # own tail (old pods going, last status writes) must be over: the window counts every
        # event the operator receives, and only the unrelated pods may be in it.
        say(f"7/7 {args.churn} unrelated pods created and deleted in {CHURN_NS}")
        quiet_since, last = time.monotonic(), total(operator.metrics(),
                                                    "slipway_watch_events_total")
        deadline = time.monotonic() + 300
        while time.monotonic() - quiet_since < 15 and time.monotonic() < deadline:
            time.sleep(3)
            now = total(operator.metrics(), "slipway_watch_events_total")
            if now != last:
                quiet_since, last = time.monotonic(), now
        before, cpu0 = operator.metrics(), operator.cpu()
        churn_start = time.monotonic()

        def unrelated(i: int) -> None:
            core.create_namespaced_pod(CHURN_NS, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"unrelated-{i:04d}", "labels": {"app": "unrelated"}},
                "spec": {"nodeSelector": {"nowhere": "true"},
                         "containers": [{"name": "c", "image": IMAGE}]}})

        create_all([lambda i=i: unrelated(i) for i in range(args.churn)], args.writers)
        delete_all(kubectl, "pods", CHURN_NS)
        churn_seconds = time.monotonic() - churn_start
        cpu1 = operator.cpu()  # before the scrape: rendering /metrics is the bench's cost
        after = operator.metrics()
        churn_cpu = cpu1 - cpu0
        churn_events = total(after, "slipway_watch_events_total") - \
            total(before, "slipway_watch_events_total")
        churn_by_kind = {dict(labels).get("kind"): v - before.get((name_, labels), 0.0)
                         for (name_, labels), v in after.items()
                         if name_ == "slipway_watch_events_total"}
        say("  watch events in the churn window: " + (", ".join(
            f"{kind} {count:.0f}" for kind, count in churn_by_kind.items() if count) or "none"))
        cpu0 = operator.cpu()
        time.sleep(churn_seconds)
        idle_cpu = operator.cpu() - cpu0

        def ms(values: list[float]) -> str:
            return f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {pct(values, 0.99) * 1000:.0f} ms"

        print()
        print(f"Slipway scale benchmark: {n} ModelDeployments, 1 replica each, {nodes} nodes, "
              "one run; floor = the same children created directly with the same client")
        print(f"| figure | Slipway | floor | ratio |\n|---|---|---|---|")
        print(f"| single apply → children (×{args.singles}) | {ms(single)} | {ms(single_floor)} | "
              f"{statistics.median(single) / statistics.median(single_floor):.2f}× |")
        print(f"| {n} applied at once → all children | {burst:.1f} s | {burst_floor:.1f} s | "
              f"{burst / burst_floor:.2f}× |")
        if burst_floor_pods is not None:
            print(f"| the same, floor with one pod per Deployment started as it goes | "
                  f"{burst:.1f} s | {burst_floor_pods:.1f} s | "
                  f"{burst / burst_floor_pods:.2f}× |")
        print(f"| {n} applied at once → all Ready | {all_ready:.1f} s | | |")
        print(f"| operator CPU, first rollout of all {n} | {cpu_first:.1f} s "
              f"({cpu_first / n * 1000:.0f} ms each) | | |")
        print(f"| CPU per good rollout (×{len(rolled)}, 1 replica) | {per_rollout * 1000:.0f} ms | | |")
        print(f"| pod changes in those rollouts (seen by a watch) | {pod_changes} | | |")
        print(f"| operator CPU per /metrics scrape at {n} objects | {scrape_cpu * 1000:.0f} ms "
              "| | |")
        print(f"| watch events received per pod change | {pod_events / max(pod_changes, 1):.2f} | | |")
        print(f"| API requests per pod change: reads (get+list) | "
              f"{(requests['get'] + requests['list']) / max(pod_changes, 1):.3f} "
              f"({requests['get']:.0f} get, {requests['list']:.0f} list) | | |")
        print(f"| API requests per pod change: writes | "
              f"{(requests['create'] + requests['patch'] + requests['delete']) / max(pod_changes, 1):.3f}"
              f" ({requests['create']:.0f} create, {requests['patch']:.0f} patch, "
              f"{requests['delete']:.0f} delete) | | |")
        print(f"| {args.churn} unrelated pods churned: operator CPU | {churn_cpu:.2f} s "
              f"in {churn_seconds:.0f} s | {idle_cpu:.2f} s idle | |")
        print(f"| watch events for the unrelated pods | {churn_events:.0f} | 0 | |")
        print("| operator RSS | " + ", ".join(f"{v:.0f} MiB at {k}" for k, v in rss.items()) +
              " | | |")
        sys.stdout.flush()

        # 4. the soak
        soak: list[float] = []
        minutes = args.soak_minutes
        if minutes > 0:
            say(f"4/7 soak: RSS each minute for {minutes:g} min, nothing changing")
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                time.sleep(min(60.0, max(0.0, end - time.monotonic())))
                soak.append(operator.rss_mib())
                say(f"  RSS {soak[-1]:.0f} MiB ({len(soak)}/{math.ceil(minutes)} min)")

        seen.stop.set()
        if soak:
            print(f"| RSS over {minutes:g} min idle | min {min(soak):.0f}, max {max(soak):.0f}, "
                  f"last {soak[-1]:.0f} MiB ({(max(soak) - min(soak)) / min(soak) * 100:.1f} %) "
                  "| | |")
    finally:
        try:
            if operator_process is not None and not args.keep:
                operator_process.terminate()
                try:
                    operator_process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    say("  the operator did not stop in 30 s: killed")
                    operator_process.kill()
                    operator_process.wait(timeout=30)
        finally:
            if not args.keep:
                # Always, even when the operator would not stop: else the cluster and every
                # pod's server outlive the bench.
                cluster.down(state_dir, quiet=True)


def summarise(path: pathlib.Path, top: int = 40) -> str:
    """Where the samples of a py-spy raw (collapsed) profile went: by function, inclusive and
    self, as shares of the samples that were not idle (waiting threads excluded)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    busy = 0
    idle = ("wait (threading.py", "select (selectors.py", "_worker (concurrent", "run_forever",
            "sleep", "poll (selectors.py", "acquire", "_wait_for_tstate_lock", "get (queue.py")
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if not frame.startswith("thread (")
                  and not frame.startswith("process ")]
        if not frames or any(frames[-1].startswith(word) for word in idle):
            continue
        count = int(count_text)
        busy += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{busy} busy samples (200 Hz, all threads; idle waits left out)", "",
             "inclusive:"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {count / max(busy, 1) * 100:5.1f} %  {frame}")
    lines += ["", "self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {count / max(busy, 1) * 100:5.1f} %  {frame}")
    return "\n".join(lines) + "\n"


def _metrics_up(operator: Operator) -> bool:
    try:
        operator.metrics()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
