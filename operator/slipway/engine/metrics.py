"""Prometheus metrics of the operator, served by ``slipway run --metrics-port``.

What an admin graphs and alerts on: how often Slipway reconciles and whether it errs, releases by
verdict, automatic reverts by reason, how long smoke tests take, and the phase each
ModelDeployment is in now. A registry of our own keeps the output to Slipway's series (plus the
process collector), whatever else the Python process imports.
"""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
from prometheus_client import core, registry

from slipway.clients import cache, kube

REGISTRY = core.CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)

PHASES = ("Pending", "Progressing", "Verifying", "Ready", "Failed", "RollingBack", "RolledBack",
          "Invalid")

RECONCILES = prometheus_client.Counter(
    "slipway_reconciles_total",
    "Reconciles of a ModelDeployment, by result (ok, retry, error, stale, standby: stopped on "
    "losing the leader Lease).",
    ["result"], registry=REGISTRY)
ROLLOUTS = prometheus_client.Counter(
    "slipway_rollouts_total",
    "Release verdicts: Verified, Failed (by its reason), RolledBack, RollbackFailed.",
    ["result", "reason"], registry=REGISTRY)
REVERTS = prometheus_client.Counter(
    "slipway_reverts_total", "Automatic reverts to the rollback target, by the failure's reason.",
    ["reason"], registry=REGISTRY)
SMOKE_DURATION = prometheus_client.Histogram(
    "slipway_smoke_test_duration_seconds",
    "Wall time of one smoke-test run (all tests against all targets), by outcome.",
    ["outcome"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
VERIFICATIONS = prometheus_client.Gauge(
    "slipway_verifications", "Verification runs held by the verifier (running, or done and "
    "not yet recorded).", registry=REGISTRY)
GATES = prometheus_client.Counter(
    "slipway_pod_gate_writes_total",
    "Readiness-gate writes: opened after a pod passed (open), or closed by reason "
    "(SmokeTestsFailed, SmokeTestsNotRun, ContainerRestarted).",
    ["result"], registry=REGISTRY)
RECONCILES_QUEUED = prometheus_client.Gauge(
    "slipway_reconciles_queued",
    "Reconciles that fell due and wait for one of the SLIPWAY_RECONCILE_WORKERS threads.",
    registry=REGISTRY)
WATCH_EVENTS = prometheus_client.Counter(
    "slipway_watch_events_total",
    "Watch events delivered to the operator, by kind (ModelDeployment, Deployment, Service, "
    "Pod): with server-side selectors, only Slipway's own objects.",
    ["kind"], registry=REGISTRY)


# The series the alerts take increase() or rate() of exist from the start, at 0: a counter
# that first appears already at 1 has no increase, and its first occurrence (often its only
# one) would never fire (manifests/monitoring/).
RECONCILES.labels("error")
ROLLOUTS.labels("Failed", "SmokeTestsNotRun")


LEADER = prometheus_client.Gauge(
    "slipway_leader", "1 while this process holds the leader Lease and may act, 0 standing by.",
    registry=REGISTRY)
LEADER_CHANGES = prometheus_client.Counter(
    "slipway_leader_changes_total",
    "Times this process started or stopped leading (started, stopped).", ["change"],
    registry=REGISTRY)
LEADER_ATTEMPTS = prometheus_client.Counter(
    "slipway_leader_lease_attempts_total",
    "Attempts on the leader Lease, by result: create, take, renew (written), held-by-another, "
    "conflict (someone wrote first), error.", ["result"], registry=REGISTRY)


class _Collector(registry.Collector):
    """Series read at scrape time: API requests this process made, objects in the cache."""

    def collect(self) -> Iterator[core.Metric]:
        requests = core.CounterMetricFamily(
            "slipway_api_requests", "Requests the reconciles made to the API server, by verb "
            "and resource (kopf's watches and Events not included).", labels=["verb", "resource"])
        for (verb, resource), count in sorted(kube.requests_made().items()):
            requests.add_metric([verb, resource], count)
        yield requests
        objects = core.GaugeMetricFamily("slipway_cache_objects",
                                         "Objects held in the informer cache, by kind.",
                                         labels=["kind"])
        size = core.GaugeMetricFamily("slipway_cache_bytes",
                                      "Bytes of compact JSON held in the informer cache, by kind.",
                                      labels=["kind"])
        for kind, (count, nbytes) in sorted(cache.STORE.counts().items()):
            objects.add_metric([kind], count)
            size.add_metric([kind], nbytes)
        yield objects
        yield size


REGISTRY.register(_Collector())

PHASE = prometheus_client.Gauge(
    "slipway_model_deployment_phase",
    "1 for the phase each ModelDeployment is in, 0 for the others.",
    ["namespace", "name", "phase"], registry=REGISTRY)


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    for candidate in PHASES:
        PHASE.labels(namespace, name, candidate).set(1 if candidate == phase else 0)


def forget(namespace: str, name: str) -> None:
    for candidate in PHASES:
        try:
            PHASE.remove(namespace, name, candidate)
        except KeyError:
            pass


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the cluster
    prometheus_client.start_http_server(port, addr=address, registry=REGISTRY)

