"""Fetched artifacts on the local cluster: an init container of the operator's own image
downloads the model (from a real HTTP server, and from a real S3 API: moto's server), checks it
against spec.model.digest, and hands it to the model server read-only; a corrupted or
unreachable artifact fails the release with its own reason within seconds, and it is reverted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, condition, wait_until
from tests.cluster.test_guarded_rollout import NAME, Story, release
from tests.conftest import EXAMPLES

MODEL = EXAMPLES / "bundle" / "model" / "model.json"
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532,
              "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
LEAKS = ("hunter2", "s3cr3t-signature", "never-shown-secret-key")


def server_pod(kubectl: Kubectl, namespace: str, name: str, image: str,
               env: dict[str, str], readiness: str | None) -> str:
    """Run a test server as a pod of the cluster; its pod IP once it serves."""
    container: dict[str, Any] = {
        "name": "main", "image": image, "securityContext": CONTAINER_SECURITY,
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": k, "value": v} for k, v in env.items()]}
    if readiness:
        container["readinessProbe"] = {"httpGet": {"path": readiness, "port": 8080},
                                       "periodSeconds": 1}
    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                   "spec": {"securityContext": RESTRICTED, "containers": [container],
                            "automountServiceAccountToken": False,
                            "terminationGracePeriodSeconds": 2}}, namespace)

    def serving() -> str | None:
        pod = kubectl.get("pod", name, namespace) or {}
        ip = (pod.get("status") or {}).get("podIP")
        ready = readiness is None or (condition(pod, "Ready") or {}).get("status") == "True"
        return str(ip) if ip and ready else None
    return str(wait_until(serving, timeout=60, what=f"the {name} pod serving",
                          diagnose=lambda: kubectl.describe("pod", name, namespace)))


def fetched_release(version: str, uri: str, digest: str | None, **model: Any
                    ) -> dict[str, Any]:
    doc = release(version)
    doc["spec"]["model"]["uri"] = uri
    if digest is not None:
        doc["spec"]["model"]["digest"] = digest
    doc["spec"]["model"].update(model)
    return doc


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class FetchWatch:
    """The failed fetch of a release's pod, seen while the release runs (the revert deletes
    the pod): when the init container exited, and what it said."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl, self.namespace = kubectl, namespace
        self.finished: float | None = None
        self.message = ""

    def look(self) -> None:
        pods = self.kubectl.get("pods", namespace=self.namespace,
                                selector=f"slipway.dev/model-deployment={NAME}")["items"]
        for pod in pods:
            for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
                for state in (status.get("state") or {}, status.get("lastState") or {}):
                    ended = state.get("terminated") or {}
                    if ended.get("exitCode") and ended.get("finishedAt"):
                        at = seconds(ended["finishedAt"])
                        if self.finished is None or at < self.finished:
                            self.finished, self.message = at, str(ended.get("message") or "")


def assert_no_leak(story: Story, md: dict[str, Any]) -> None:
    shown = json.dumps(md.get("status")) + json.dumps(story.md_events()) + \
        story.operator.log.read_text(errors="replace")
    for secret in LEAKS:
        assert secret not in shown, f"{secret!r} leaked into status, Events or the log"


@pytest.fixture
def story(kubectl: Kubectl, operator: Operator, namespace: str) -> Story:
    return Story(kubectl, operator, namespace)


@pytest.fixture
def artifacts(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    root = tmp_path / "artifacts"
    (root / "iris" / "1.0.0").mkdir(parents=True)
    shutil.copy(MODEL, root / "iris" / "1.0.0" / "model.json")
    root.chmod(0o755)
    yield root


def test_a_fetched_model_is_verified_a_corrupted_one_and_an_unreachable_one_are_reverted(
        story: Story, artifacts: pathlib.Path) -> None:
    ip = server_pod(story.kubectl, story.namespace, "artifacts", "registry.example.com/slipway/"
                    "artifact-server:1", {"ARTIFACT_ROOT": str(artifacts)}, "/healthz")
    good = sha256(MODEL.read_bytes())
    uri = f"http://{ip}:8080/files/iris/1.0.0/model.json"

    # Given v1, fetched over HTTP and checked against its digest
    story.apply(fetched_release("1.0.0", uri, good))
    md = story.wait_phase("Ready")
    story.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                         ("Normal", "Verified")])
    pods = story.ready_pods()
    assert pods, story.diagnose()
    for pod in pods:
        (fetch,) = pod["status"]["initContainerStatuses"]
        assert fetch["name"] == "fetch-model"
        assert fetch["state"]["terminated"]["exitCode"] == 0
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MODEL_PATH"] == "/mnt/models/artifact/model.json"
    assert md["status"]["rollbackTarget"]["modelVersion"] == "1.0.0"

    # When v1.1 names the same digest, but the server hands out the file with one byte changed
    corrupted = bytearray(MODEL.read_bytes())
    corrupted[0] ^= 1
    watch = FetchWatch(story.kubectl, story.namespace)
    story.apply(fetched_release("1.1.0", uri.replace("/files/", "/corrupt/"), good))
    md = story.wait_phase("RolledBack", each=watch.look)
    # Then the init container said both digests, Slipway failed the release with its own reason
    # and reverted within 10 s of the init container's exit
    events = story.expect_events([("Normal", "Progressing"), ("Warning", "ArtifactDigestMismatch"),
                                  ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    wanted = f"expected {good}, got {sha256(bytes(corrupted))}"
    assert wanted in watch.message and wanted in events[1]["message"], events[1]["message"]
    assert condition(md, "Stalled")["reason"] == "ArtifactDigestMismatch"  # type: ignore[index]
    assert md["status"]["lastFailure"]["reason"] == "ArtifactDigestMismatch"
    reverted = seconds(condition(md, "RolledBack")["lastTransitionTime"])  # type: ignore[index]
    assert watch.finished is not None
    assert reverted - watch.finished <= 10, f"reverted {reverted - watch.finished:.0f}s after"
    assert story.serving_image().endswith(":1.0.0")
    wait_until(lambda: len(story.ready_pods()) == 2, timeout=60, what="2 Ready v1 pods",
               diagnose=story.diagnose)

    # When v1.2's artifact cannot be reached (its URI carrying a password and a signature)
    watch = FetchWatch(story.kubectl, story.namespace)
    secret_uri = ("http://reader:hunter2@127.0.0.1:9/iris/1.2.0/model.json"
                  "?X-Amz-Signature=s3cr3t-signature")
    story.apply(fetched_release("1.2.0", secret_uri, good))
    md = story.wait_phase("RolledBack", each=watch.look)
    events = story.expect_events([("Normal", "Progressing"), ("Warning", "ArtifactFetchFailed"),
                                  ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    # Then the failure names the URI, without its credentials anywhere Slipway writes
    assert "http://127.0.0.1:9/iris/1.2.0/model.json" in events[1]["message"]
    assert condition(md, "Stalled")["reason"] == "ArtifactFetchFailed"  # type: ignore[index]
    assert watch.finished is not None
    reverted = seconds(condition(md, "RolledBack")["lastTransitionTime"])  # type: ignore[index]
    assert reverted - watch.finished <= 10, f"reverted {reverted - watch.finished:.0f}s after"
    assert_no_leak(story, md)


def test_a_folder_fetched_from_s3_with_a_secrets_credentials_is_verified(
        story: Story, tmp_path: pathlib.Path) -> None:
    import boto3

    ip = server_pod(story.kubectl, story.namespace, "s3", "registry.example.com/slipway/"
                    "s3-server:moto", {}, None)
    endpoint = f"http://{ip}:8080"
    # A model folder as a user packages one: nested folders, an empty file, non-ASCII names
    folder = tmp_path / "iris-1.0.0"
    (folder / "meta" / "données").mkdir(parents=True)
    shutil.copy(MODEL, folder / "model.json")
    (folder / "meta" / "empty.txt").write_bytes(b"")
    (folder / "meta" / "données" / "étiquettes.txt").write_text("setosa versicolor virginica\n")
    # its digest as the user computes it
    digest = subprocess.run([sys.executable, "-m", "slipway.cli", "digest", str(folder)],
                            capture_output=True, text=True, check=True).stdout.strip()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="slipway-test",
                          aws_secret_access_key="never-shown-secret-key")
    wait_until(lambda: client.create_bucket(Bucket="models"), timeout=30,
               what="the S3 server answering")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = "iris/1.0.0/" + path.relative_to(folder).as_posix()
            client.put_object(Bucket="models", Key=key, Body=path.read_bytes())
    story.kubectl.apply({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "iris-s3"}, "stringData": {
                             "AWS_ACCESS_KEY_ID": "slipway-test",
                             "AWS_SECRET_ACCESS_KEY": "never-shown-secret-key",
                             "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}},
                        story.namespace)

    story.apply(fetched_release("1.0.0", "s3://models/iris/1.0.0/", digest,
                                credentialsSecret="iris-s3"))
    md = story.wait_phase("Ready")
    story.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                         ("Normal", "Verified")])
    pod = story.ready_pods()[0]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["MODEL_PATH"] == "/mnt/models/artifact"
    # the credentials went to the fetcher only
    assert pod["spec"]["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "iris-s3"}}]
    assert "envFrom" not in pod["spec"]["containers"][0]
    assert_no_leak(story, md)
