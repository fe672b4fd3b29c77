"""A real model server through Slipway: MLServer 1.7.1 with its scikit-learn runtime, speaking
the Open Inference Protocol (``protocol: v2``), its model trained here on iris and fetched from
a real S3 API (moto's server) with its digest: ``examples/mlserver-iris.yaml`` as a user
applies it.

- the model is verified and Ready;
- a model trained on shifted labels, whose answers the smoke tests' own checks accept (a
  schema-valid 200), disagrees with the serving one and is reverted (PredictionsDisagree);
- the good model with one byte changed fails on its digest and is reverted
  (ArtifactDigestMismatch).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest

from slipway_dev import tools
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, condition, load_yaml, wait_until
from tests.cluster.test_artifacts import server_pod
from tests.cluster.test_guarded_rollout import Story
from tests.conftest import EXAMPLES

EXAMPLE = EXAMPLES / "mlserver-iris.yaml"
MODEL_NAME = "iris-sklearn"

TRAIN = """
import json, pathlib, sys
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
folder, version, shift = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
features, labels = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(features, (labels + shift) % 3)
folder.mkdir(parents=True)
joblib.dump(model, folder / "model.joblib")
(folder / "model-settings.json").write_text(json.dumps({
    "name": sys.argv[4], "implementation": "mlserver_sklearn.SKLearnModel",
    "parameters": {"uri": "./model.joblib", "version": version}}, indent=2))
print(list(model.predict(features[[0, 100]])))
"""


def train(mlserver_bin: pathlib.Path, folder: pathlib.Path, version: str, shift: int) -> None:
    """A model folder as a user packages one for MLServer, trained with MLServer's own
    scikit-learn (the same version loads it)."""
    done = subprocess.run([str(mlserver_bin / "python"), "-c", TRAIN, str(folder), version,
                           str(shift), MODEL_NAME], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def digest_of(folder: pathlib.Path) -> str:
    return subprocess.run([sys.executable, "-m", "slipway.cli", "digest", str(folder)],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def mlserver_bin() -> pathlib.Path:
    return tools.ensure_mlserver(verbose=False)


def release(version: str, uri: str, digest: str, exact: bool = True) -> dict[str, Any]:
    doc = load_yaml(EXAMPLE)
    doc["spec"]["model"].update(version=version, uri=uri, digest=digest)
    doc["spec"]["rollout"] = {"progressDeadlineSeconds": 120}
    if not exact:  # a user who checks only the contract: the agreement check is what is left
        for test in doc["spec"]["smokeTests"]:
            test.get("expect", {}).pop("values", None)
    return doc


def test_mlserver_serves_a_fetched_model_and_a_disagreeing_or_corrupted_one_is_reverted(
        kubectl: Kubectl, operator: Operator, namespace: str, tmp_path: pathlib.Path,
        mlserver_bin: pathlib.Path) -> None:
    import boto3

    name = load_yaml(EXAMPLE)["metadata"]["name"]
    story = Story(kubectl, operator, namespace, name)
    ip = server_pod(kubectl, namespace, "s3", "registry.example.com/slipway/s3-server:moto",
                    {}, None)
    endpoint = f"http://{ip}:8080"
    # Three artifacts: the model, one trained on shifted labels, and the model with one byte
    # changed after its digest was taken
    train(mlserver_bin, tmp_path / "1.0.0", "1.0.0", 0)
    train(mlserver_bin, tmp_path / "1.1.0", "1.1.0", 1)
    shutil.copytree(tmp_path / "1.0.0", tmp_path / "1.2.0")
    good, shifted = digest_of(tmp_path / "1.0.0"), digest_of(tmp_path / "1.1.0")
    weights = bytearray((tmp_path / "1.2.0" / "model.joblib").read_bytes())
    weights[len(weights) // 2] ^= 1
    (tmp_path / "1.2.0" / "model.joblib").write_bytes(bytes(weights))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="slipway", aws_secret_access_key="slipway-secret")
    wait_until(lambda: client.create_bucket(Bucket="models"), timeout=30,
               what="the S3 server answering")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        for path in sorted((tmp_path / version).iterdir()):
            client.put_object(Bucket="models", Key=f"{MODEL_NAME}/{version}/{path.name}",
                              Body=path.read_bytes())
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "models-s3"},
                   "stringData": {"AWS_ACCESS_KEY_ID": "slipway",
                                  "AWS_SECRET_ACCESS_KEY": "slipway-secret",
                                  "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}},
                  namespace)
    uri = f"s3://models/{MODEL_NAME}/{{}}/"

    # Given the example, fetched with its digest and served by MLServer: verified and Ready
    story.apply(release("1.0.0", uri.format("1.0.0"), good))
    md = story.wait_phase("Ready", timeout=180)
    story.expect_events([("Normal", "Progressing"), ("Normal", "Verifying"),
                         ("Normal", "Verified")])
    results = {r["name"]: r for r in md["status"]["lastSmokeTest"]["results"]}
    assert {r["outcome"] for r in results.values()} == {"Passed"}, results
    assert set(results) == {"setosa", "virginica", "batch", "v1-body-refused"}
    pod = story.ready_pods()[0]
    probes = pod["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{MODEL_NAME}/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert md["status"]["rollbackTarget"]["modelVersion"] == "1.0.0"

    # When 1.1.0, trained on shifted labels, is released with checks of the contract only
    story.apply(release("1.1.0", uri.format("1.1.0"), shifted, exact=False))
    md = story.wait_phase("RolledBack", timeout=180)
    events = story.expect_events([("Normal", "Progressing"), ("Warning", "PredictionsDisagree"),
                                  ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    # Then its pod's answers were compared with 1.0.0's, class for class, behind its readiness
    # gate, and it was reverted
    assert "0 of 3 compared items agree" in events[1]["message"], events[1]["message"]
    assert "$.outputs[0].data[0]" in events[1]["message"]
    assert condition(md, "Stalled")["reason"] == "PredictionsDisagree"  # type: ignore[index]
    wait_until(lambda: len(story.ready_pods()) == 1, timeout=90, what="1.0.0 serving again",
               diagnose=story.diagnose)

    # When 1.2.0 names the good model's digest, but its weights have one byte changed
    story.apply(release("1.2.0", uri.format("1.2.0"), good))
    md = story.wait_phase("RolledBack", timeout=180)
    events = story.expect_events([("Normal", "Progressing"), ("Warning", "ArtifactDigestMismatch"),
                                  ("Warning", "RollingBack"), ("Normal", "RolledBack")])
    assert f"expected {good}, got sha256:" in events[1]["message"], events[1]["message"]
    assert condition(md, "Stalled")["reason"] == "ArtifactDigestMismatch"  # type: ignore[index]
    # And the model that serves is still 1.0.0's, answering as it did
    serving = story.kubectl.get("deployment", name, namespace)
    env = {e["name"]: e.get("value")
           for e in serving["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert env["MODEL_URI"] == uri.format("1.0.0") and env["MODEL_DIGEST"] == good
    assert "slipway-secret" not in json.dumps(md.get("status")) + \
        operator.log.read_text(errors="replace")

