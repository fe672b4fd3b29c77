"""A hostile ModelDeployment can neither escape nor stall the operator, on both smoke routes.

Escape attempts, each tried with the operator outside the cluster sending its smoke tests
through the API server's proxy ("proxy"), and again with it sending them straight to pod and
cluster IPs ("direct"), always as its own ServiceAccount. Each attempt must be refused at
admission, or end as a failed or not-run verdict, and nothing but the model's own pods may be
reached. The proof is twofold:

- canaries: a server on a loopback address of the host and a pod in another namespace, both
  answering exactly what the attempts' witness test would accept (a ConfigMapList), and
  counting every request made with the operator's User-Agent. They must count none, while the
  test itself can reach them (so a count of zero means something);
- the API server's audit log of the operator's ServiceAccount: no request outside the attempt's
  namespace or to kube-system, no ConfigMaps or Secrets, and every proxied request to a pod or
  Service of the attempt's own ModelDeployment, with a path free of dot segments.

The direct-route operator runs in a private mount namespace whose /etc/hosts sends every
"iris.NAMESPACE.svc" name, the relative name the operator used to dial, to the loopback canary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from slipway.api import validation
from slipway.logic import render
from slipway_dev import cluster as dev_cluster
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, audited, condition, load_yaml, wait_until
from tests.conftest import EXAMPLES, ROOT

NAME = "iris"
HOSTILE = "registry.example.com/slipway/hostile-server"
CANARY_IP = "127.77.0.1"  # the host canary listens here, port 80
CANARY_NAME = "canary.slipway.test"  # resolves to CANARY_IP for the direct-route operator
SAMPLE = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
# Passes only on the answer of a canary or of the API server's own ConfigMap list.
WITNESS = {"name": "witness", "body": SAMPLE,
           "expect": {"status": 200, "bodySchema": {"type": "object"},
                      "values": [{"path": "$.kind", "equals": "ConfigMapList"}]}}
CONFIGMAPS = "/api/v1/namespaces/kube-system/configmaps"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: pod network namespaces")


def release(image: str = f"{HOSTILE}:ok") -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / "reference.yaml")
    spec = doc["spec"]
    spec["replicas"] = 1
    spec["runtime"]["image"] = image
    spec["smokeTests"] = [copy.deepcopy(WITNESS)]
    spec["rollout"] = {"progressDeadlineSeconds": 60, "smokeTestTimeoutSeconds": 3,
                       "smokeTestAttempts": 1, "verificationDeadlineSeconds": 20}
    return doc


# --------------------------------------------------------------------------------------------
# Canaries


class Canary:
    """A hostile server in canary mode; counts what it was asked."""

    def __init__(self, url: str) -> None:
        self.url = url

    def hits(self) -> list[dict[str, Any]]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/__hits", timeout=5) as page:
            return list(json.loads(page.read()))

    def answers(self) -> bool:
        try:
            self.hits()
        except OSError:
            return False
        return True

    def poke(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/poke", timeout=5) as page:
            page.read()


@pytest.fixture(scope="module")
def host_canary() -> Iterator[Canary]:
    subprocess.run(["ip", "addr", "add", f"{CANARY_IP}/32", "dev", "lo"], check=False,
                   capture_output=True)
    env = dict(os.environ, HOSTILE_MODE="canary", SLIPWAY_BIND_HOST=CANARY_IP, PORT="80",
               PYTHONPATH=str(ROOT / "operator"))
    process = subprocess.Popen([sys.executable, "-m", "slipway_dev.hostile"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    canary = Canary(f"http://{CANARY_IP}")
    try:
        wait_until(canary.answers, timeout=20, what="the host canary")
        yield canary
    finally:
        process.terminate()
        process.wait(timeout=10)
        subprocess.run(["ip", "addr", "del", f"{CANARY_IP}/32", "dev", "lo"], check=False,
                       capture_output=True)


def run_pod(kubectl: Kubectl, namespace: str, name: str, image: str,
            labels: dict[str, str]) -> dict[str, Any]:
    """A bare pod (restricted security context) running one of the hostile images; Ready."""
    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{
            "name": "server", "image": image, "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080},
                               "periodSeconds": 1},
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                "runAsUser": 65532, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}}}]}})

    def ready() -> dict[str, Any] | None:
        pod = kubectl.get("pod", name, namespace)
        return pod if (condition(pod, "Ready") or {}).get("status") == "True" else None
    return wait_until(ready, timeout=60, what=f"pod {namespace}/{name} Ready")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pod_canary(kubectl: Kubectl, crd: str) -> Iterator[tuple[Canary, str]]:
    namespace = "hostile-canary"
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    wait_until(lambda: kubectl.get("serviceaccount", "default", namespace), timeout=60,
               what="the canary namespace")
    pod = run_pod(kubectl, namespace, "canary", f"{HOSTILE}:canary", {"app": "canary"})
    ip = pod["status"]["podIP"]
    try:
        yield Canary(f"http://{ip}:8080"), ip
    finally:
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)


# --------------------------------------------------------------------------------------------
# The attempts


@dataclasses.dataclass
class Context:
    kubectl: Kubectl
    namespace: str
    route: str
    api_server: str
    canary_pod_ip: str
    doc: dict[str, Any] = dataclasses.field(default_factory=dict)  # the attempt's release
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


Mutate = Callable[[dict[str, Any], Context], None]
Action = Callable[[Context], None]


@dataclasses.dataclass
class Attempt:
    id: str
    kind: str  # "admission" (kubectl apply refused), "invalid" (InvalidSpec), "verdict"
    mutate: Mutate
    expect: str  # a fragment of kubectl's error, of the Stalled message, or of a result message
    setup: Action | None = None  # before the ModelDeployment is applied
    during: Action | None = None  # repeated until the verdict is in


def smoke_path(path: str) -> Mutate:
    def mutate(doc: dict[str, Any], ctx: Context) -> None:
        doc["spec"]["smokeTests"][0]["path"] = path
    return mutate


def spec_at(dotted: str, value: Any) -> Mutate:
    def mutate(doc: dict[str, Any], ctx: Context) -> None:
        node = doc["spec"]
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value(ctx) if callable(value) else value
    return mutate


def headers(values: dict[str, str]) -> Mutate:
    return spec_at("smokeTests.0.headers", values)


def image(tag: str, **env: str) -> Mutate:
    def mutate(doc: dict[str, Any], ctx: Context) -> None:
        doc["spec"]["runtime"]["image"] = f"{HOSTILE}:{tag}"
        doc["spec"]["runtime"]["env"] = [
            {"name": key, "value": value.format(api=ctx.api_server, canary=CANARY_IP)}
            for key, value in env.items()]
    return mutate


def both(*mutations: Mutate) -> Mutate:
    def mutate(doc: dict[str, Any], ctx: Context) -> None:
        for each in mutations:
            each(doc, ctx)
    return mutate


def patch_service(patch: dict[str, Any]) -> Action:
    def act(ctx: Context) -> None:
        ctx.kubectl.run("patch", "service", NAME, "-n", ctx.namespace, "--type", "merge",
                        "-p", json.dumps(patch), check=False)
    return act


def endpoint_slice_to_the_pod_canary(ctx: Context) -> None:
    ctx.kubectl.apply({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "iris-by-hand", "namespace": ctx.namespace,
                     "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ctx.canary_pod_ip], "conditions": {"ready": True}}]})


def impostor(labels: Callable[[Context], dict[str, str]]) -> Action:
    def act(ctx: Context) -> None:
        run_pod(ctx.kubectl, ctx.namespace, "impostor", f"{HOSTILE}:canary", labels(ctx))
    return act


def our_labels(ctx: Context) -> dict[str, str]:
    """What the pods of this attempt's release carry, revision included."""
    spec = validation.parse_spec(ctx.doc["spec"])
    meta = render.Meta(name=NAME, namespace=ctx.namespace)
    rendered = render.render(spec, meta)
    return {**render.selector_labels(meta), render.LABEL_REVISION: rendered.revision}


def remote_ref(where: str) -> Mutate:
    return spec_at(where, {"$ref": f"http://{CANARY_IP}/schema.json"})


ADMISSION = [
    Attempt("dot-segments", "admission", smoke_path(f"/../../../../../../../..{CONFIGMAPS}"),
            "'..' segments"),
    Attempt("encoded-dot-segments", "admission",
            smoke_path(f"/%2e%2e/%2e%2e/%2e%2e/%2e%2e{CONFIGMAPS}"), "percent-encode"),
    Attempt("half-encoded-dot-segment", "admission", smoke_path(f"/.%2E/.%2E{CONFIGMAPS}"),
            "percent-encode"),
    Attempt("encoded-slashes", "admission", smoke_path("/score%2f..%2f..%2fapi"),
            "percent-encode"),
    Attempt("double-encoding", "admission", smoke_path(f"/%252e%252e{CONFIGMAPS}"),
            "percent-encode"),
    Attempt("backslashes", "admission", smoke_path("/score\\..\\..\\api"), "backslashes"),
    Attempt("protocol-relative-host", "admission", smoke_path(f"//{CANARY_IP}/x"), "'//'"),
    Attempt("absolute-uri", "admission", smoke_path(f"http://{CANARY_IP}/x"),
            "must start with '/'"),
    Attempt("fragment", "admission", smoke_path(f"/score#@{CANARY_IP}"), "'#'"),
    Attempt("crlf-in-path", "admission", smoke_path(f"/score\r\nHost: {CANARY_IP}"),
            "no spaces"),
    Attempt("dot-segments-in-the-query", "admission", smoke_path("/score?next=/../../api"),
            "'..' segments"),
    Attempt("scoring-path-traversal", "admission", spec_at("runtime.scoringPath", "/../api"),
            "'..' segments"),
    Attempt("probe-path-traversal", "admission",
            spec_at("probes.readiness.path", f"/../..{CONFIGMAPS}"), "'..' segments"),
    Attempt("host-header", "admission", headers({"Host": CANARY_IP}), "a header name must"),
    Attempt("crlf-in-a-header", "admission", headers({"X-Note": f"a\r\nHost: {CANARY_IP}"}),
            "should match"),
    Attempt("impersonation-header", "admission", headers({"Impersonate-User": "system:admin"}),
            "a header name must"),
    Attempt("front-proxy-identity-header", "admission",
            headers({"X-Remote-Group": "system:masters"}), "a header name must"),
    Attempt("apparmor-unconfined", "admission", spec_at("placement.podAnnotations", {
        "container.apparmor.security.beta.kubernetes.io/model-server": "unconfined"}),
        "Kubernetes domains"),
    Attempt("runtime-device-annotation", "admission", spec_at("placement.podAnnotations", {
        "io.kubernetes.cri-o.Devices": "/dev/mem"}), "container runtimes"),
    Attempt("system-priority-class", "admission",
            spec_at("placement.priorityClassName", "system-node-critical"), "system- priority"),
]

# Wrong answers, a second late: long enough for what a tenant does while they are awaited.
SLOW_500 = image("slow-500", HOSTILE_DELAY="1")
PASSES_ITS_OWN = image("canary")

NOT_RUN = [
    Attempt("remote-ref-in-the-input-schema", "invalid", remote_ref("schema.input"),
            "is not local"),
    Attempt("remote-ref-in-a-body-schema", "invalid",
            remote_ref("smokeTests.0.expect.bodySchema"), "is not local"),
    Attempt("remote-metaschema", "invalid",
            spec_at("schema.output", {"$schema": f"http://{CANARY_IP}/meta.json"}), "drafts"),
    Attempt("id-turning-a-ref-remote", "invalid",
            spec_at("schema.output", {"$id": f"http://{CANARY_IP}/s.json",
                                      "$ref": "other.json"}), "is not local"),
    Attempt("huge-request-body", "invalid",
            spec_at("smokeTests.0.body", {"instances": [[5.1, 3.5, 1.4, 0.2]] * 1500}),
            "at most 16 KiB"),
    Attempt("userinfo-looking-path", "verdict", smoke_path(f"/@{CANARY_IP}{CONFIGMAPS}"),
            "$.kind is missing"),
    Attempt("rewrite-headers", "verdict", headers({
        "X-Original-URL": CONFIGMAPS, "X-Rewrite-URL": CONFIGMAPS,
        "X-Forwarded-Host": CANARY_IP, "Forwarded": f"host={CANARY_IP}"}),
        "$.kind is missing"),
    Attempt("redirect-to-the-canary", "verdict", image("redirect", HOSTILE_TARGET="http://{canary}/"),
            "not followed"),
    Attempt("redirect-to-the-api-server", "verdict",
            image("redirect", HOSTILE_TARGET="{api}" + CONFIGMAPS), "not followed"),
    Attempt("gzip-bomb", "verdict", image("gzip-bomb"), "response larger than 64 KiB"),
    Attempt("huge-answer", "verdict", image("huge"), "response larger than 64 KiB"),
    Attempt("externalname-switched-during-the-run", "verdict", SLOW_500, "",
            during=patch_service({"spec": {"type": "ExternalName",
                                            "externalName": CANARY_NAME}})),
    # The model's own pod answers as a canary does, so it passes its own tests behind its
    # readiness gate and the release goes on to the Service, which routes elsewhere.
    Attempt("endpoint-slice-by-hand-to-another-namespace", "verdict", PASSES_ITS_OWN,
            "which is not a pod of this ModelDeployment", setup=endpoint_slice_to_the_pod_canary),
    Attempt("impostor-pod-with-slipway-labels", "verdict", PASSES_ITS_OWN,
            "which is not a pod of this ModelDeployment", setup=impostor(our_labels)),
    Attempt("relative-service-dns-name", "verdict", SLOW_500, "got 500"),
]
ALL = ADMISSION + NOT_RUN
RELATIVE = next(a for a in NOT_RUN if a.id == "relative-service-dns-name")
ROUTES = ("proxy", "direct")


def test_the_table_has_at_least_25_attempts_each_tried_on_both_routes() -> None:
    assert len({attempt.id for attempt in ALL}) == len(ALL) >= 25
    assert ROUTES == ("proxy", "direct")


# --------------------------------------------------------------------------------------------
# Running them


def namespace_of(route: str, attempt: Attempt) -> str:
    return f"x-{route}-{attempt.id}"[:63].rstrip("-")


@pytest.fixture(scope="module")
def api_server(cluster: dev_cluster.ClusterState) -> str:
    return cluster.server


def hosts_file(tmp: pathlib.Path) -> pathlib.Path:
    """/etc/hosts of the direct-route operator: every attempt's relative Service name, and the
    ExternalName the attempts switch to, lead to the host canary."""
    names = [f"{NAME}.{namespace_of('direct', a)}.svc" for a in NOT_RUN] + [CANARY_NAME]
    path = tmp / "hosts"
    path.write_text("127.0.0.1 localhost\n" + "".join(f"{CANARY_IP} {n}\n" for n in names))
    return path


def private_hosts(hosts: pathlib.Path) -> list[str]:
    """A command prefix: run in a mount namespace of its own, with ``hosts`` as /etc/hosts."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mount --bind {hosts} /etc/hosts && exec \"$@\"", "sh"]


def resolve_as_the_direct_operator(tmp: pathlib.Path, name: str) -> str:
    code = f"import socket; print(socket.gethostbyname({name!r}))"
    result = subprocess.run([*private_hosts(hosts_file(tmp)), sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


@contextlib.contextmanager
def route(operator: Operator, name: str, tmp: pathlib.Path) -> Iterator[None]:
    """Run the session's operator on one route (the proxy one is how the suite runs it)."""
    if name == "proxy":
        yield
        return
    operator.stop()
    operator.start(env={"SLIPWAY_SMOKE_ROUTE": "direct"}, wrapper=private_hosts(hosts_file(tmp)))
    try:
        yield
    finally:
        operator.stop()
        operator.start()


def make_namespace(kubectl: Kubectl, name: str) -> None:
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                 "pod-security.kubernetes.io/enforce-version": "latest"}}})
    wait_until(lambda: kubectl.get("serviceaccount", "default", name), timeout=60,
               what=f"ServiceAccount default in {name}")


def first_verdict(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    md = kubectl.get("md", NAME, namespace) or {}
    status = md.get("status") or {}
    if (status.get("observedGeneration") != md.get("metadata", {}).get("generation")):
        return None
    stalled = condition(md, "Stalled") or {}
    if stalled.get("reason") == "InvalidSpec" and stalled.get("status") == "True":
        return {"invalid": stalled["message"], "phase": status.get("phase")}
    smoke = status.get("lastSmokeTest")
    if smoke and smoke.get("revision") == status.get("desiredRevision"):
        return {"smoke": smoke, "phase": status.get("phase")}
    return None


def run_attempts(kubectl: Kubectl, operator: Operator, route_name: str, api: str,
                 canary_pod_ip: str) -> dict[str, dict[str, Any]]:
    """Every attempt on one route, the slow ones side by side; what each ended as."""
    outcomes: dict[str, dict[str, Any]] = {}
    for attempt in ADMISSION:
        ctx = Context(kubectl, namespace_of(route_name, attempt), route_name, api, canary_pod_ip)
        make_namespace(kubectl, ctx.namespace)
        doc = release()
        attempt.mutate(doc, ctx)
        result = kubectl.apply(doc, ctx.namespace, check=False)
        outcomes[attempt.id] = {"code": result.returncode, "error": result.stderr}
    contexts: dict[str, Context] = {}
    threads: list[threading.Thread] = []
    for attempt in NOT_RUN:
        ctx = contexts[attempt.id] = Context(kubectl, namespace_of(route_name, attempt),
                                             route_name, api, canary_pod_ip, release())
        make_namespace(kubectl, ctx.namespace)
        attempt.mutate(ctx.doc, ctx)
        if attempt.setup:
            attempt.setup(ctx)
        kubectl.apply(ctx.doc, ctx.namespace)
        if attempt.during:
            def keep_at_it(attempt: Attempt = attempt, ctx: Context = ctx) -> None:
                while not ctx.stop.wait(0.3):
                    assert attempt.during is not None
                    attempt.during(ctx)
            thread = threading.Thread(target=keep_at_it, daemon=True)
            thread.start()
            threads.append(thread)
    deadline = time.monotonic() + 180
    pending = {a.id for a in NOT_RUN}
    while pending and time.monotonic() < deadline:
        for attempt_id in sorted(pending):
            verdict = first_verdict(kubectl, contexts[attempt_id].namespace)
            if verdict is not None:
                outcomes[attempt_id] = verdict
                contexts[attempt_id].stop.set()
                pending.discard(attempt_id)
        time.sleep(0.3)
    for ctx in contexts.values():
        ctx.stop.set()
    for thread in threads:
        thread.join(timeout=10)
    assert not pending, f"no verdict on the {route_name} route for {sorted(pending)}:\n" + \
        operator.tail(40)
    return outcomes


def check_outcome(attempt: Attempt, outcome: dict[str, Any]) -> None:
    if attempt.kind == "admission":
        assert outcome["code"] != 0, f"{attempt.id} was admitted"
        assert attempt.expect in outcome["error"], (attempt.id, outcome["error"])
        return
    if attempt.kind == "invalid":
        assert "invalid" in outcome, (attempt.id, outcome)
        assert attempt.expect in outcome["invalid"], (attempt.id, outcome["invalid"])
        assert outcome["phase"] == "Invalid"
        return
    assert "smoke" in outcome, (attempt.id, outcome)
    smoke = outcome["smoke"]
    assert smoke["outcome"] in ("Failed", "Error"), (attempt.id, smoke)
    assert outcome["phase"] != "Ready", (attempt.id, outcome)
    # No check passed: the witness passes only on a canary's or the API server's answer.
    assert not [r for r in smoke["results"] if r["outcome"] == "Passed"], (attempt.id, smoke)
    messages = " | ".join(r["message"] for r in smoke["results"])
    assert attempt.expect in messages, (attempt.id, messages)


def check_audit(state_dir: str, since: str, namespaces: set[str]) -> None:
    """Everything the operator asked the API server for in the window stayed in its lane."""
    events = [e for e in audited(state_dir, dev_cluster.OPERATOR_USER)
              if e.get("requestReceivedTimestamp", "") >= since]
    assert events, "no request of the operator was audited"
    for event in events:
        ref = event.get("objectRef") or {}
        uri = event.get("requestURI", "")
        assert ref.get("namespace") != "kube-system", uri
        assert ref.get("resource") not in ("configmaps", "secrets"), uri
        assert ".." not in uri and "%2e" not in uri.lower(), uri
        if ref.get("subresource") == "proxy" and ref.get("namespace", "").startswith("x-"):
            assert ref.get("namespace") in namespaces, uri
            assert ref.get("name", "").startswith(NAME), uri  # the Service, or a pod iris-…
            assert ref.get("name", "") != "impostor", uri


@pytest.mark.parametrize("route_name", ROUTES)
def test_escape_attempts_are_refused_or_fail_and_reach_nothing_but_the_models_own_pods(
    route_name: str, kubectl: Kubectl, operator: Operator, cluster: dev_cluster.ClusterState,
    host_canary: Canary, pod_canary: tuple[Canary, str], api_server: str,
    tmp_path: pathlib.Path,
) -> None:
    canary_pod, canary_ip = pod_canary
    # The canaries count what reaches them: the test itself can.
    before = len(host_canary.hits()), len(canary_pod.hits())
    host_canary.poke()
    canary_pod.poke()
    assert (len(host_canary.hits()), len(canary_pod.hits())) == (before[0] + 1, before[1] + 1)
    if route_name == "direct":  # and the relative name leads to the canary where it runs
        assert resolve_as_the_direct_operator(
            tmp_path, f"{NAME}.{namespace_of('direct', RELATIVE)}.svc") == CANARY_IP
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    namespaces = {namespace_of(route_name, a) for a in ALL}
    try:
        with route(operator, route_name, tmp_path):
            outcomes = run_attempts(kubectl, operator, route_name, api_server, canary_ip)
            if route_name == "direct":
                # The Service manipulations were real: a client without Slipway's checks that
                # dials the hand-made EndpointSlice's Service reaches the other namespace's pod.
                reaches_canary_pod_through_the_hand_made_slice(kubectl, canary_pod)
        wrong = []
        for attempt in ALL:
            try:
                check_outcome(attempt, outcomes[attempt.id])
            except AssertionError as error:
                wrong.append(f"{attempt.id}: {error}")
        assert wrong == [], "\n".join(wrong)
        # Nothing but the test's own pokes reached the canaries (whatever the User-Agent: a
        # fetched $ref would not say slipway-smoke-test).
        assert [h for h in host_canary.hits() if h["path"] != "/poke"] == []
        assert [h for h in canary_pod.hits() if h["path"] != "/poke"] == []
        check_audit(cluster.state_dir, since, namespaces)
    finally:
        for namespace in namespaces:
            kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)


def reaches_canary_pod_through_the_hand_made_slice(kubectl: Kubectl, canary: Canary) -> None:
    namespace = namespace_of("direct", next(a for a in NOT_RUN if a.id.startswith("endpoint")))
    service = kubectl.get("service", NAME, namespace)
    url = f"http://{service['spec']['clusterIP']}:80/poke"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    before = len(canary.hits())
    for _ in range(8):  # round robin between the model's pod and the canary
        with contextlib.suppress(OSError):
            with opener.open(url, timeout=5) as page:
                page.read()
    assert len(canary.hits()) > before, "the hand-made EndpointSlice did not route to the canary"


# --------------------------------------------------------------------------------------------
# Stalling the operator: a catastrophic pattern, and servers that never answer


CATASTROPHIC_INPUT = {"type": "object", "required": ["instances"], "properties": {
    "instances": {"type": "string", "pattern": "^(a|aa)+$"}}}


def catastrophic() -> dict[str, Any]:
    """The reported freeze: ^(a|aa)+$ against 38 a's and a '!' took 8.5 s of CPU per parse."""
    doc = release()
    doc["metadata"]["name"] = "regex"
    doc["spec"]["schema"]["input"] = CATASTROPHIC_INPUT
    doc["spec"]["smokeTests"][0]["body"] = {"instances": "a" * 60 + "!"}
    return doc


def stalling(index: int) -> dict[str, Any]:
    doc = release(f"{HOSTILE}:stall")
    doc["metadata"]["name"] = f"stall-{index}"
    doc["spec"]["rollout"].update(smokeTestTimeoutSeconds=600, smokeTestAttempts=10,
                                  verificationDeadlineSeconds=15)
    return doc


def good(index: int) -> dict[str, Any]:
    doc = load_yaml(EXAMPLES / "reference.yaml")
    doc["metadata"]["name"] = f"good-{index}"
    doc["spec"]["replicas"] = 1
    return doc


def event_time(event: dict[str, Any]) -> float:
    stamp = event.get("eventTime") or event.get("lastTimestamp") or \
        event["metadata"]["creationTimestamp"]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))


def verification_seconds(kubectl: Kubectl, namespace: str, name: str, verdict: str) -> float:
    """From the Verifying Event to the verdict's Event; for a release that failed behind its
    pods' readiness gates (there is no Verifying then), from its Progressing Event, which
    adds the pods' start to the time."""
    def posted() -> dict[str, Any] | None:
        # The verdict is in status before its Event is posted: wait for the Event too.
        events = {e["reason"]: e for e in kubectl.events(namespace, name)
                  if e["involvedObject"]["kind"] == "ModelDeployment"}
        return events if verdict in events else None

    events = wait_until(posted, timeout=20, what=f"the {verdict} Event of {name}")
    start = events.get("Verifying") or events["Progressing"]
    return event_time(events[verdict]) - event_time(start)


def test_neither_a_catastrophic_pattern_nor_servers_that_stall_hold_up_other_releases(
    kubectl: Kubectl, operator: Operator, namespace: str,
) -> None:
    # Given one tenant with a catastrophic pattern and ten model servers that accept every
    # connection and never answer (more than the operator's reconcile workers: 8)
    kubectl.apply(catastrophic(), namespace)
    for index in range(10):
        kubectl.apply(stalling(index), namespace)
    # When ten good releases are applied in other namespaces meanwhile
    others = [f"{namespace}-good-{i}" for i in range(10)]
    try:
        for index, other in enumerate(others):
            make_namespace(kubectl, other)
            kubectl.apply(good(index), other)
        # Then the catastrophic spec is refused at once, naming the body and the pattern
        def invalid() -> dict[str, Any] | None:
            stalled = condition(kubectl.get("md", "regex", namespace), "Stalled") or {}
            return stalled if stalled.get("reason") == "InvalidSpec" else None

        stalled = wait_until(invalid, timeout=60, what="InvalidSpec for the catastrophic pattern")
        assert "does not match '^(a|aa)+$'" in stalled["message"]
        # And every good release rolls out and is verified within seconds of its rollout
        for index, other in enumerate(others):
            wait_until(lambda o=other, i=index: (kubectl.get("md", f"good-{i}", o) or {})
                       .get("status", {}).get("phase") == "Ready", timeout=180,
                       what=f"good-{index} Ready", diagnose=lambda: operator.tail(40))
            assert verification_seconds(kubectl, other, f"good-{index}", "Verified") <= 10
        # And each stalled verification ends at its deadline (15 s), not later
        for index in range(10):
            wait_until(lambda i=index: (kubectl.get("md", f"stall-{i}", namespace) or {})
                       .get("status", {}).get("phase") == "Failed", timeout=120,
                       what=f"stall-{index} Failed", diagnose=lambda: operator.tail(40))
            md = kubectl.get("md", f"stall-{index}", namespace)
            assert "no answer within the verification deadline of 15 s" in \
                md["status"]["lastSmokeTest"]["message"]
            assert 14 <= verification_seconds(kubectl, namespace, f"stall-{index}",
                                              "SmokeTestFailed") <= 35
    finally:
        for other in others:
            kubectl.run("delete", "namespace", other, "--wait=false", check=False)

