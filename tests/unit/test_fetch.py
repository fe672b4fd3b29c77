"""``slipway fetch``: artifacts fetched from a real HTTP server and a real S3 implementation
(moto's server, SigV4 over HTTP on loopback) and checked against their digest.

The folder fetched from S3 must have the digest ``slipway digest`` gives the folder that was
uploaded (nested folders, empty files, non-ASCII names); a corrupted byte fails with
ArtifactDigestMismatch naming both digests; an unreachable URI with ArtifactFetchFailed naming
the URI without its credentials.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from slipway.clients import artifacts
from slipway.logic import artifact
from tests.unit.test_digest import tree


@pytest.fixture
def http_root(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    """A real HTTP server on loopback, serving a folder."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-shown", "AWS_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def upload(folder: pathlib.Path, bucket: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def fetch_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slipway.cli", "fetch", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_a_file_over_http_is_fetched_and_verified(http_root: tuple[str, pathlib.Path],
                                                 tmp_path: pathlib.Path) -> None:
    base, served = http_root
    (served / "model.joblib").write_bytes(os.urandom(300_000))
    expected = artifacts.digest_path(served / "model.joblib").digest
    dest = tmp_path / "model"
    done = fetch_cli("--uri", f"{base}/model.joblib", "--digest", expected, "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    fetched = dest / "artifact" / "model.joblib"
    assert fetched.read_bytes() == (served / "model.joblib").read_bytes()
    record = json.loads((dest / "verified.json").read_text())
    assert (record["digest"], record["verified"], record["path"]) == \
        (expected, True, str(fetched))


def test_one_changed_byte_is_a_digest_mismatch_naming_both_digests(
        http_root: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    base, served = http_root
    data = bytearray(os.urandom(10_000))
    (served / "model.bin").write_bytes(bytes(data))
    expected = artifacts.digest_path(served / "model.bin").digest
    data[5000] ^= 0x01
    (served / "model.bin").write_bytes(bytes(data))
    actual = artifacts.digest_path(served / "model.bin").digest
    log = tmp_path / "termination-log"
    dest = tmp_path / "model"
    done = fetch_cli("--uri", f"{base}/model.bin", "--digest", expected, "--dest", str(dest),
                     "--termination-log", str(log))
    assert done.returncode == 2
    message = log.read_text()
    assert message.startswith("ArtifactDigestMismatch: ")
    assert f"expected {expected}, got {actual}" in message
    assert not (dest / "artifact").exists() and not (dest / "verified.json").exists()


def test_an_unreachable_uri_fails_naming_it_without_its_credentials(
        tmp_path: pathlib.Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://alice:hunter2@127.0.0.1:{port}/models/iris.joblib?X-Amz-Signature=abc123"
    log = tmp_path / "termination-log"
    done = fetch_cli("--uri", uri, "--digest", "sha256:" + "0" * 64, "--dest",
                     str(tmp_path / "model"), "--termination-log", str(log))
    assert done.returncode == 1
    message = log.read_text()
    assert message.startswith(f"ArtifactFetchFailed: http://127.0.0.1:{port}/models/iris.joblib")
    for secret in ("alice", "hunter2", "abc123", "Signature"):
        assert secret not in message and secret not in done.stderr


def test_an_s3_prefix_is_fetched_as_a_folder_with_the_digest_slipway_digest_gives(
        s3_env: dict[str, str], tmp_path: pathlib.Path) -> None:
    source = tree(tmp_path / "source")
    expected = artifacts.digest_path(source).digest
    upload(source, "models", "iris/1.0.0")
    dest = tmp_path / "model"
    done = fetch_cli("--uri", "s3://models/iris/1.0.0/", "--digest", expected, "--dest",
                     str(dest), env=s3_env)
    assert done.returncode == 0, done.stderr
    assert artifacts.digest_path(dest / "artifact").digest == expected
    assert (dest / "artifact" / "Ω données" / "étiquettes é.txt").read_text() == \
        (source / "Ω données" / "étiquettes é.txt").read_text()
    assert (dest / "artifact" / "weights" / "empty.bin").read_bytes() == b""
    # without its slash the URI names one object, which is not there: said, with the hint
    with pytest.raises(artifacts.FetchError) as caught:
        artifacts.fetch("s3://models/iris/1.0.0", tmp_path / "again", expected)
    assert "no such object (a folder's URI ends with /)" in str(caught.value)
    assert not (tmp_path / "again" / "artifact").exists()
    # the layout the renderer announces (MODEL_PATH) is where the files are
    assert artifact.model_path("s3://models/iris/1.0.0/") == "/mnt/models/artifact"
    assert "s3cr3t-never-shown" not in done.stderr


def test_an_s3_object_is_a_file_and_a_missing_one_fails(s3_env: dict[str, str],
                                                      tmp_path: pathlib.Path) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="single")
    boto3.client("s3").put_object(Bucket="single", Key="a/model.onnx", Body=b"onnx bytes")
    expected = "sha256:" + __import__("hashlib").sha256(b"onnx bytes").hexdigest()
    found = artifacts.fetch("s3://single/a/model.onnx", tmp_path / "m", expected)
    assert (found.files, found.manifest) == (1, None)
    assert (tmp_path / "m" / "artifact" / "model.onnx").read_bytes() == b"onnx bytes"
    with pytest.raises(artifacts.FetchError) as caught:
        artifacts.fetch("s3://single/nothing/here", tmp_path / "n", expected)
    assert caught.value.reason == artifacts.FETCH_FAILED
    assert "s3://single/nothing/here: no such object" in str(caught.value)
    assert artifact.model_path("s3://single/a/model.onnx") == "/mnt/models/artifact/model.onnx"
    with pytest.raises(artifacts.FetchError) as caught:
        artifacts.fetch("s3://single/empty/", tmp_path / "e", expected)
    assert "s3://single/empty/: no object under this prefix" in str(caught.value)


def test_a_hostile_object_key_cannot_leave_the_folder(s3_env: dict[str, str],
                                                    tmp_path: pathlib.Path) -> None:
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="hostile")
    client.put_object(Bucket="hostile", Key="m/../../escaped.txt", Body=b"x")
    with pytest.raises(artifacts.FetchError, match="'..' path segment"):
        artifacts.fetch("s3://hostile/m/", tmp_path / "dest", None)
    assert not (tmp_path / "escaped.txt").exists()


def test_a_digest_is_required_unless_the_user_says_no_verify(tmp_path: pathlib.Path) -> None:
    done = fetch_cli("--uri", "http://127.0.0.1:9/x", "--dest", str(tmp_path),
                     env={"MODEL_DIGEST": ""})
    assert done.returncode == 64 and "--no-verify" in done.stderr
    bad = fetch_cli("--uri", "http://127.0.0.1:9/x", "--digest", "md5:abc", "--dest",
                    str(tmp_path))
    assert bad.returncode == 64 and "is not sha256:" in bad.stderr
    refused = fetch_cli("--uri", "file:///etc/passwd", "--no-verify", "--dest", str(tmp_path))
    assert refused.returncode == 1 and "fetches http://, https:// and s3:// only" in refused.stderr
