"""A real Prometheus (Debian's) scrapes the operator with manifests/monitoring's rules, and a
rollback on the local cluster fires SlipwayReleaseRolledBack for that ModelDeployment."""

from __future__ import annotations

import json
import pathlib
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from slipway_dev import cluster as dev_cluster
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import NAME, V1, V2_WRONG_MODEL_PATH, Story
from tests.unit.test_monitoring import RULES


class Prometheus:
    def __init__(self, folder: pathlib.Path, target: str) -> None:
        self.port = dev_cluster.free_port()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            # As the README says to scrape it: the target's own namespace label (a pod's)
            # must not replace the ModelDeployment's.
            "scrape_configs": [{"job_name": "slipway", "honor_labels": True,
                                "static_configs": [{"targets": [target], "labels": {
                                    "namespace": "slipway-system", "pod": "operator-0"}}]}],
        }))
        self.log = folder / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with self.opener.open(url, timeout=5) as answer:
                body = answer.read().decode()
        except OSError as error:
            raise AssertionError(f"Prometheus did not answer {path}: {error}") from None
        return json.loads(body) if path.startswith("/api/") else body

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def prometheus(operator: Operator, tmp_path: pathlib.Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, f"127.0.0.1:{operator.metrics_port}")
    try:
        wait_until(lambda: server.get("/-/ready"), timeout=60, what="Prometheus ready",
                   diagnose=lambda: server.log.read_text(errors="replace"))
        yield server
    finally:
        server.stop()


def test_a_rollback_fires_the_rollback_alert_in_prometheus(
        kubectl: Kubectl, operator: Operator, namespace: str, prometheus: Prometheus) -> None:
    # Given the operator scraped, leading, and a first release verified: no alert of ours
    def scraped() -> bool:
        result = prometheus.get("/api/v1/query", query='up{job="slipway"}')["data"]["result"]
        return bool(result) and result[0]["value"][1] == "1"
    wait_until(scraped, timeout=30, what="the operator scraped",
               diagnose=lambda: prometheus.log.read_text(errors="replace"))
    story = Story(kubectl, operator, namespace)
    story.apply(V1)
    story.wait_phase("Ready")

    def ours() -> list[dict[str, Any]]:
        return [alert for alert in prometheus.alerts()
                if alert["labels"].get("namespace") == namespace
                or alert["labels"]["alertname"] == "SlipwayNoLeader"]
    assert ours() == []
    # When a bad release is rolled back
    story.apply(V2_WRONG_MODEL_PATH)
    story.wait_phase("RolledBack")

    # Then the alert fires for that ModelDeployment, and for nothing else
    def firing() -> dict[str, Any] | None:
        for alert in ours():
            if alert["labels"]["alertname"] == "SlipwayReleaseRolledBack" and \
                    alert["state"] == "firing":
                return alert
        return None
    alert = wait_until(firing, timeout=30, what="SlipwayReleaseRolledBack firing",
                       diagnose=lambda: json.dumps(prometheus.alerts(), indent=1))
    assert alert["labels"] == {"alertname": "SlipwayReleaseRolledBack", "severity": "warning",
                               "namespace": namespace, "name": NAME}
    assert f"{namespace}/{NAME}" in alert["annotations"]["summary"]
    others = {a["labels"]["alertname"] for a in ours()} - {"SlipwayReleaseRolledBack",
                                                           "SlipwayModelDeploymentStalled"}
    assert others == set(), ours()
