"""Behaviour of the reference model server (examples/bundle) and its broken variants.

Why: the operator's smoke test is only as trustworthy as the model it is exercised against,
so the server's HTTP contract is pinned here with real processes on 127.0.0.1.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

BUNDLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "bundle"
SAMPLE = json.loads((BUNDLE / "sample-request.json").read_text())
OUTPUT_SCHEMA = json.loads((BUNDLE / "schemas" / "output.schema.json").read_text())
INPUT_SCHEMA = json.loads((BUNDLE / "schemas" / "input.schema.json").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def score(port: int, payload: Any) -> tuple[int, Any]:
    return request(port, "POST", "/score", json.dumps(payload).encode())


@contextlib.contextmanager
def server(**env: str) -> Iterator[int]:
    port = free_port()
    full_env = {**os.environ, "SLIPWAY_BIND_HOST": "127.0.0.1", "PORT": str(port), **env}
    proc = subprocess.Popen(
        [sys.executable, str(BUNDLE / "server.py")],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            if time.monotonic() > deadline:
                raise AssertionError("server did not listen within 10 s")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=5) == 0, "SIGTERM should shut the server down cleanly"
        finally:
            proc.kill()
            proc.stderr.close()


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 5
    while request(port, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def good_server() -> Iterator[int]:
    with server(MODEL_NAME="iris", MODEL_VERSION="7", MODEL_URI="file:///models/iris") as port:
        wait_ready(port)
        yield port


def test_sample_request_is_valid_against_the_input_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(INPUT_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(OUTPUT_SCHEMA)
    jsonschema.validate(SAMPLE, INPUT_SCHEMA, cls=jsonschema.Draft202012Validator)


def test_healthz_reports_the_process_alive(good_server: int) -> None:
    assert request(good_server, "GET", "/healthz") == (200, {"status": "alive"})


def test_readyz_is_ok_after_init(good_server: int) -> None:
    assert request(good_server, "GET", "/readyz") == (200, {"status": "ready"})


def test_readyz_is_503_while_the_model_loads() -> None:
    with server(SLIPWAY_INIT_DELAY="2") as port:
        assert request(port, "GET", "/healthz")[0] == 200
        assert request(port, "GET", "/readyz") == (503, {"status": "loading"})
        assert score(port, SAMPLE)[0] == 503


def test_score_answers_predictions_valid_against_the_output_schema(good_server: int) -> None:
    status, body = score(good_server, SAMPLE)
    assert status == 200
    jsonschema.validate(body, OUTPUT_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert [p["label"] for p in body["predictions"]] == ["setosa", "versicolor", "virginica"]
    assert all(p["probability"] > 0.9 for p in body["predictions"])


def test_score_echoes_model_name_version_and_uri_from_env(good_server: int) -> None:
    _, body = score(good_server, SAMPLE)
    assert body["model"] == {"name": "iris", "version": "7", "uri": "file:///models/iris"}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'"just a string"',
        b'{"rows": [[1, 2, 3, 4]]}',
        b'{"instances": []}',
        b'{"instances": [[1, 2, 3]]}',
        b'{"instances": [[1, 2, "x", 4]]}',
        b'{"instances": [[1, 2, true, 4]]}',
        b'{"instances": [1, 2, 3, 4]}',
    ],
)
def test_malformed_input_is_rejected_with_400_and_a_message(good_server: int, body: bytes) -> None:
    status, answer = request(good_server, "POST", "/score", body)
    assert status == 400
    assert isinstance(answer["error"], str) and answer["error"]


def test_unknown_endpoint_is_404(good_server: int) -> None:
    assert request(good_server, "GET", "/predict")[0] == 404


def test_missing_dependency_variant_crashes_at_start_with_a_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, str(BUNDLE / "server.py")],
        env={
            **os.environ,
            "SLIPWAY_BIND_HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "SCORE_SCRIPT": str(BUNDLE / "variants" / "missing_dep.py"),
        },
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ModuleNotFoundError" in proc.stderr and "slipway_gpu_kernels" in proc.stderr


def test_wrong_model_path_variant_is_healthy_but_500s_naming_the_path() -> None:
    with server(SCORE_SCRIPT=str(BUNDLE / "variants" / "wrong_model_path.py")) as port:
        wait_ready(port)
        assert request(port, "GET", "/healthz")[0] == 200
        for _ in range(2):  # every call fails, not only the first
            status, body = score(port, SAMPLE)
            assert status == 500
            assert str(BUNDLE / "models" / "model.json") in body["error"]


def test_shape_mismatch_variant_500s_on_the_schema_valid_sample() -> None:
    with server(SCORE_SCRIPT=str(BUNDLE / "variants" / "shape_mismatch.py")) as port:
        wait_ready(port)
        status, body = score(port, SAMPLE)
        assert status == 500
        assert "feature count mismatch" in body["error"] and "expects 3" in body["error"]


def test_bad_output_variant_answers_200_with_the_right_labels_but_breaks_the_contract() -> None:
    with server(SCORE_SCRIPT=str(BUNDLE / "variants" / "bad_output.py")) as port:
        wait_ready(port)
        status, body = score(port, SAMPLE)
        assert status == 200
        assert [p["label"] for p in body["predictions"]] == ["setosa", "versicolor", "virginica"]
        assert isinstance(body["predictions"][0]["probability"], str)
        errors = list(jsonschema.Draft202012Validator(OUTPUT_SCHEMA).iter_errors(body))
        assert errors and "is not of type 'number'" in errors[0].message


def test_swapped_labels_variant_is_schema_valid_and_swaps_two_classes() -> None:
    with server(SCORE_SCRIPT=str(BUNDLE / "variants" / "swapped_labels.py")) as port:
        wait_ready(port)
        status, body = score(port, SAMPLE)
        assert status == 200
        assert [p["label"] for p in body["predictions"]] == ["setosa", "virginica", "versicolor"]
        assert list(jsonschema.Draft202012Validator(OUTPUT_SCHEMA).iter_errors(body)) == []
