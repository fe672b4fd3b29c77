"""A user's traffic through a Service, and the Service's ready endpoints, recorded while a test
changes the release (cluster tests and bench/ share it).

The client sends the sample request through the API server's service proxy every ``period``
seconds (with ``?client=traffic``, which the reference server logs, so that a pod's own log
tells whether user traffic reached it); the watcher reads the EndpointSlices and keeps how many
ready endpoints there were, at least and over time.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import ssl
import threading
import time
from typing import Any

import httpx
import kubernetes

from slipway_dev import cluster as dev_cluster
from tests.conftest import EXAMPLES

SAMPLE = json.loads((EXAMPLES / "bundle" / "sample-request.json").read_text())
EXPECTED_LABELS = ["setosa", "versicolor", "virginica"]
MARK = "client=traffic"


@dataclasses.dataclass
class Answer:
    at: float
    status: int  # 0: no answer (the request failed)
    version: str | None
    labels: list[str] | None
    numbers: bool  # every probability is a number
    detail: str

    def good(self, versions: set[str]) -> bool:
        return self.status == 200 and self.version in versions and \
            self.labels == EXPECTED_LABELS and self.numbers


class _Loop:
    """A thread that calls ``step`` every ``period`` seconds while the ``with`` block runs."""

    period = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.step()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))


class Traffic(_Loop):
    def __init__(self, cluster: dev_cluster.ClusterState, namespace: str, service: str,
                 period: float = 0.1) -> None:
        pki = pathlib.Path(cluster.state_dir) / "pki"
        self.url = (f"{cluster.server}/api/v1/namespaces/{namespace}/services/"
                    f"http:{service}:http/proxy/score?{MARK}")
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.client = httpx.Client(verify=context, timeout=5.0, trust_env=False)
        self.period = period
        self.answers: list[Answer] = []
        super().__init__()

    def step(self) -> None:
        self.answers.append(self._one())

    def close(self) -> None:
        self.client.close()

    def _one(self) -> Answer:
        now = time.time()
        try:
            response = self.client.post(self.url, json=SAMPLE)
        except httpx.HTTPError as error:
            return Answer(now, 0, None, None, False, f"{type(error).__name__}: {error}")
        try:
            body = response.json()
            predictions = body.get("predictions") or []
            labels = [p.get("label") for p in predictions]
            numbers = all(isinstance(p.get("probability"), (int, float)) for p in predictions)
            version = (body.get("model") or {}).get("version")
        except (ValueError, AttributeError):
            labels, numbers, version = None, False, None
        return Answer(now, response.status_code, version, labels, numbers,
                      response.text[:200])

    def bad(self, versions: set[str]) -> list[Answer]:
        return [answer for answer in self.answers if not answer.good(versions)]


class ReadyEndpoints(_Loop):
    """The ready endpoints of a Service, read every ``period`` seconds."""

    def __init__(self, cluster: dev_cluster.ClusterState, namespace: str, service: str,
                 period: float = 0.2) -> None:
        self.api = kubernetes.client.DiscoveryV1Api(
            kubernetes.config.new_client_from_config(cluster.kubeconfig))
        self.namespace = namespace
        self.selector = f"kubernetes.io/service-name={service}"
        self.period = period
        self.samples: list[tuple[float, int]] = []
        super().__init__()

    def count(self) -> int:
        slices = self.api.list_namespaced_endpoint_slice(self.namespace,
                                                         label_selector=self.selector)
        return sum(1 for item in slices.items for endpoint in item.endpoints or []
                   if endpoint.conditions is not None and endpoint.conditions.ready)

    def step(self) -> None:
        try:
            self.samples.append((time.time(), self.count()))
        except Exception:  # noqa: BLE001 - a missed sample is no sample
            pass

    def least_since(self, start: float) -> int:
        """The fewest ready endpoints sampled from ``start`` (a time.time()) on."""
        return min(count for at, count in self.samples if at >= start)


def user_requests(cluster: dev_cluster.ClusterState, pod: dict[str, Any]) -> int:
    """How many of the traffic client's requests reached this pod (its own log says)."""
    meta = pod["metadata"]
    folder = pathlib.Path(cluster.state_dir) / "nodes" / "pods" / \
        f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return sum(path.read_text(errors="replace").count(MARK)
               for path in folder.glob("*/*.log"))
