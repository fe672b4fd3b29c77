"""``slipway smoke``: a release's smoke tests against a running server, before any cluster.

The servers are the reference model's images as the local cluster runs them (examples/images.yaml:
the same command and environment), started as local processes on 127.0.0.1; the command is run
as a user runs it, in its own process, and judged by its exit code and what it prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from slipway import cli
from slipway.api import validation
from slipway.clients import smoke
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
RELEASE = EXAMPLES / "reference.yaml"
IMAGE = "registry.example.com/slipway/reference-model:1.0.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_command(image: str) -> tuple[list[str], dict[str, str]]:
    """argv and env of ``image`` from the node agent's image table, placeholders filled."""
    entry = yaml.safe_load((EXAMPLES / "images.yaml").read_text())["images"][image]

    def fill(value: str) -> str:
        return (value.replace("{python}", sys.executable)
                .replace("{bundle}", str(EXAMPLES / "bundle"))
                .replace("{examples}", str(EXAMPLES)))
    argv = [fill(part) for part in [*entry.get("entrypoint", []), *entry.get("cmd", [])]]
    return argv, {name: fill(str(value)) for name, value in (entry.get("env") or {}).items()}


@contextlib.contextmanager
def running(image: str) -> Iterator[str]:
    argv, env = image_command(image)
    port = free_port()
    env = {**os.environ, **env, "PORT": str(port), "SLIPWAY_BIND_HOST": "127.0.0.1"}
    proc = subprocess.Popen(argv, env=env, cwd=EXAMPLES, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{image} did not start: "
                                         f"{proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # waits, and closes the stderr pipe


def slipway_smoke(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    return subprocess.run([sys.executable, "-m", "slipway.cli", "smoke", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=env)


def test_the_good_image_passes_every_test_and_exits_0() -> None:
    with running(IMAGE) as url:
        result = slipway_smoke("-f", str(RELEASE), "--url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TEST", "OUTCOME", "STATUS", "LATENCY", "MESSAGE"]
    outcomes = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert outcomes == {"setosa": "Passed", "batch-of-three": "Passed",
                        "rejects-malformed-input": "Passed", "health": "Passed"}
    assert lines[-1] == f"Passed: 4 smoke tests passed on 1 target ({url})"
    assert "ModelDeployment/iris (document 1): 4 smoke tests against" in result.stderr


@pytest.mark.parametrize(("variant", "failing", "says"), [
    ("wrong-model-path", "setosa", "expected status 200, got 500"),
    ("shape-mismatch", "setosa", "feature count mismatch"),
    ("bad-output", "setosa", "response does not satisfy spec.schema.output"),
    ("swapped-labels", "batch-of-three",
     "$.predictions[2].label is 'versicolor', expected 'virginica'"),
])
def test_each_broken_image_fails_with_the_operators_message_and_exits_1(
    variant: str, failing: str, says: str
) -> None:
    with running(f"{IMAGE}-{variant}") as url:
        result = slipway_smoke("-f", str(RELEASE), "--url", url)
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = result.stdout.splitlines()[-1]
    assert verdict.startswith(f"Failed: smoke test '{failing}' on {url}: "), verdict
    assert says in verdict
    row = next(line for line in result.stdout.splitlines() if line.startswith(failing + " "))
    assert row.split()[1] == "Failed" and says in row


def test_json_is_what_the_operator_would_record_in_status() -> None:
    # The same spec and server through the operator's own entry point: the same checks,
    # outcomes and messages (latency and times aside).
    spec = validation.parse_document(yaml.safe_load(RELEASE.read_text()))
    with running(f"{IMAGE}-swapped-labels") as url:
        result = slipway_smoke("-f", str(RELEASE), "--url", url, "-o", "json")
        direct = smoke.run_smoke_tests_sync(spec, [smoke.Target(url, url)],
                                            smoke.ClientSettings())
    assert result.returncode == 1, result.stderr
    printed = json.loads(result.stdout)

    def shape(results: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(r["name"], r["target"], r["outcome"], r.get("statusCode"), r.get("message"))
                for r in results]
    operator = direct.to_status(revision="x", generation=None, attempts=1)
    assert printed["outcome"] == operator["outcome"] == "Failed"
    assert printed["message"] == direct.message
    assert shape(printed["results"]) == shape(operator["results"])
    assert {"startedAt", "finishedAt"} <= printed.keys()
    assert result.stderr == ""  # nothing but the JSON document, for a pipeline to read


def test_nothing_listening_is_could_not_test_exit_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = slipway_smoke("-f", str(RELEASE), "--url", url)
    assert result.returncode == cli.SMOKE_COULD_NOT_TEST, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(
        f"Error: smoke test 'setosa' on {url}: could not reach it: connection refused")


def test_a_path_prefix_in_the_url_is_kept() -> None:
    # A staging endpoint behind a path, say: the tests' paths are appended to it, so with the
    # prefix the good server answers 404 and the run fails, naming the status.
    with running(IMAGE) as url:
        result = slipway_smoke("-f", str(RELEASE), "--url", url + "/under/a/prefix")
    assert result.returncode == 1
    assert "expected status 200, got 404" in result.stdout


@pytest.mark.parametrize(("url", "problem"), [
    ("127.0.0.1:8080", "must start with http:// or https://"),
    ("ftp://127.0.0.1/", "must start with http:// or https://"),
    ("http:///score", "has no host"),
    ("http://user:secret@127.0.0.1:8080", "must not carry credentials"),
    ("http://127.0.0.1:8080/?x=1", "must not have a query"),
    ("http://127.0.0.1:8080/#top", "must not have a fragment"),
    ("http://127.0.0.1:99999", "not a URL"),
])
def test_a_url_that_cannot_be_a_base_is_a_usage_error(url: str, problem: str) -> None:
    assert problem in (cli.smoke_url_problem(url) or "")
    result = slipway_smoke("-f", str(RELEASE), "--url", url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert problem in result.stderr and "secret" not in result.stderr


def test_usable_urls_are_accepted() -> None:
    for url in ("http://127.0.0.1:8080", "https://staging.example.com/models/iris/",
                "http://[::1]:8080"):
        assert cli.smoke_url_problem(url) is None, url


def test_an_invalid_spec_is_reported_like_validate_and_nothing_is_sent() -> None:
    body = yaml.safe_load(RELEASE.read_text())
    body["spec"]["smokeTests"][0]["path"] = "/../admin"
    result = slipway_smoke("-f", "-", "--url", f"http://127.0.0.1:{free_port()}",
                           stdin=yaml.safe_dump(body))
    assert result.returncode == 1
    assert "<stdin>: ModelDeployment/iris (document 1): spec.smokeTests[0].path" in result.stderr
    assert result.stdout == ""


def test_a_file_with_several_releases_needs_name(tmp_path: pathlib.Path) -> None:
    body = yaml.safe_load(RELEASE.read_text())
    other = {**body, "metadata": {"name": "other"}}
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump_all([body, other]))
    result = slipway_smoke("-f", str(both), "--url", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "holds 2 ModelDeployments (iris, other); pick one with --name" in result.stderr
    missing = slipway_smoke("-f", str(both), "--url", "http://127.0.0.1:1", "--name", "nope")
    assert missing.returncode == 1
    assert "no ModelDeployment named 'nope'" in missing.stderr and "iris, other" in missing.stderr
    with running(IMAGE) as url:
        picked = slipway_smoke("-f", str(both), "--url", url, "--name", "other")
    assert picked.returncode == 0, picked.stdout + picked.stderr
    assert "ModelDeployment/other (document 2)" in picked.stderr


def test_serving_url_needs_an_agreement_section() -> None:
    result = slipway_smoke("-f", str(RELEASE), "--url", "http://127.0.0.1:1",
                           "--serving-url", "http://127.0.0.1:2")
    assert result.returncode == 2
    assert "--serving-url needs spec.agreement" in result.stderr


def test_a_new_model_that_disagrees_with_the_serving_one_fails_as_predictions_disagree(
    tmp_path: pathlib.Path
) -> None:
    body = yaml.safe_load(RELEASE.read_text())
    # Only the agreement can catch it: batch-of-three's own expected labels are left out
    (batch,) = [t for t in body["spec"]["smokeTests"] if t["name"] == "batch-of-three"]
    batch["expect"].pop("values")
    body["spec"]["agreement"] = {"tests": ["batch-of-three"],
                                 "paths": [{"path": "$.predictions",
                                            "tolerance": {"absolute": 0.01}}]}
    release = tmp_path / "release.yaml"
    release.write_text(yaml.safe_dump(body))
    with running(IMAGE) as serving, running(f"{IMAGE}-swapped-labels") as new:
        result = slipway_smoke("-f", str(release), "--url", new, "--serving-url", serving,
                               "-o", "json")
        same = slipway_smoke("-f", str(release), "--url", serving, "--serving-url", serving)
    printed = json.loads(result.stdout)
    assert result.returncode == 1
    assert printed.get("reason") == smoke.PREDICTIONS_DISAGREE, printed
    assert printed["message"].startswith(
        f"{new} vs {serving} (serving): 1 of 3 compared items agree with {serving}")
    assert ".label: 'virginica' vs 'versicolor' (this revision vs serving)" in printed["message"]
    assert same.returncode == 0, same.stdout + same.stderr
