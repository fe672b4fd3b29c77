"""`slipway validate` rejects bad releases with one line per error that names the field."""

from __future__ import annotations

import copy
import io
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from slipway import cli
from tests.conftest import EXAMPLES

Mutation = Callable[[dict[str, Any]], None]


def base() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return mutate


def _add_test(test: dict[str, Any]) -> Mutation:
    return lambda doc: doc["spec"]["smokeTests"].append(test)


GOOD_BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}

# (id, mutation, the field path the error must name, a word the message must contain)
INVALID: list[tuple[str, Mutation, str, str]] = [
    ("missing-model-version", _delete("spec.model.version"), "spec.model.version", "required"),
    ("absolute-smoke-url", _set("spec.smokeTests.0.path", "http://evil.example/score"),
     "spec.smokeTests[0].path", "must start with '/'"),
    ("protocol-relative-smoke-url", _set("spec.smokeTests.0.path", "//evil.example/score"),
     "spec.smokeTests[0].path", "'//'"),
    ("dot-segments-in-smoke-path",
     _set("spec.smokeTests.0.path", "/../../api/v1/namespaces/kube-system/configmaps"),
     "spec.smokeTests[0].path", "'..' segments"),
    ("encoded-dot-in-smoke-path", _set("spec.smokeTests.0.path", "/%2e%2e/api"),
     "spec.smokeTests[0].path", "percent-encode"),
    ("backslash-in-scoring-path", _set("spec.runtime.scoringPath", "/a\\..\\b"),
     "spec.runtime.scoringPath", "backslashes"),
    ("fragment-in-probe-path", _set("spec.probes.liveness", {"path": "/healthz#x"}),
     "spec.probes.liveness.path", "'#'"),
    ("crlf-in-smoke-path", _set("spec.smokeTests.0.path", "/score\r\nHost: evil"),
     "spec.smokeTests[0].path", "no spaces"),
    ("crlf-in-header-value", _set("spec.smokeTests.0.headers", {"X-A": "a\r\nHost: evil"}),
     "spec.smokeTests[0].headers.X-A", "pattern"),
    ("impersonation-header", _set("spec.smokeTests.0.headers", {"Impersonate-User": "admin"}),
     "spec.smokeTests[0].headers", "API server"),
    ("remote-ref-in-schema", _set("spec.schema.input", {"$ref": "http://127.0.0.1:9977/x.json"}),
     "spec.schema.input", "not local"),
    ("recursive-ref-in-schema",
     _set("spec.schema.output", {"properties": {"child": {"$ref": "#"}}}),
     "spec.schema.output", "recursive"),
    ("backreference-pattern", _set("spec.schema.output", {"type": "string", "pattern": "(a)\\1"}),
     "spec.schema.output", "RE2"),
    ("huge-smoke-body", _set("spec.smokeTests.0.body", {"instances": [[1.0] * 4] * 2000}),
     "spec.smokeTests[0].body", "at most 16 KiB"),
    ("bad-digest", _set("spec.model.digest", "md5:abc"), "spec.model.digest", "sha256"),
    ("port-out-of-range", _set("spec.runtime.port", 70000), "spec.runtime.port", "65535"),
    ("unknown-field", _set("spec.runtime.imagePolicy", "Always"), "spec.runtime.imagePolicy",
     "unknown field"),
    ("probe-path-without-slash", _set("spec.probes.readiness", {"path": "readyz"}),
     "spec.probes.readiness.path", "must start with '/'"),
    ("duplicate-smoke-test-names", _add_test({"name": "setosa", "body": GOOD_BODY}),
     "spec.smokeTests", "used twice"),
    ("smoke-body-violates-input-schema",
     _set("spec.smokeTests.0.body", {"instances": [[1, 2, 3]]}),
     "spec.smokeTests[0].body.instances[0]", "schema.input"),
    ("smoke-body-missing", _delete("spec.smokeTests.0.body"), "spec.smokeTests[0].body",
     "needs a body"),
    ("status-code-out-of-range", _set("spec.smokeTests.0.expect", {"status": 700}),
     "spec.smokeTests[0].expect.status", "100-599"),
    ("image-with-scheme", _set("spec.runtime.image", "https://registry/x:1"),
     "spec.runtime.image", "pattern"),
    ("requests-above-limits", _set("spec.runtime.resources",
                                   {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}),
     "spec.runtime.resources", "exceeds"),
    ("gpu-request-without-limit", _set("spec.runtime.resources",
                                       {"requests": {"nvidia.com/gpu": 1}}),
     "spec.runtime.resources", "limits"),
    ("reserved-env-name", _set("spec.runtime.env", [{"name": "MODEL_URI", "value": "x"}]),
     "spec.runtime.env[0]", "set by Slipway"),
    ("env-value-and-valuefrom", _set("spec.runtime.env", [
        {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
     "spec.runtime.env[0]", "not both"),
    ("liveness-success-threshold", _set("spec.probes.liveness",
                                         {"path": "/healthz", "successThreshold": 2}),
     "spec.probes", "successThreshold must be 1"),
    ("surge-and-unavailable-zero", _set("spec.rollout", {"maxSurge": 0, "maxUnavailable": 0}),
     "spec.rollout", "cannot both be 0"),
    ("invalid-json-schema", _set("spec.schema.output", {"type": "banana"}),
     "spec.schema.output", "not a valid JSON Schema"),
    ("unknown-schema-draft", _set("spec.schema.output", {"$schema": "http://evil/schema"}),
     "spec.schema.output", "drafts"),
    ("name-too-long-for-a-service", _set("metadata.name", "a" * 64), "metadata.name",
     "DNS-1035"),
    ("name-starting-with-digit", _set("metadata.name", "1iris"), "metadata.name", "DNS-1035"),
    ("no-smoke-tests", _set("spec.smokeTests", []), "spec.smokeTests", "at least 1"),
    ("bad-json-path", _set("spec.smokeTests.0.expect", {"values": [{"path": "predictions",
                                                                     "equals": 1}]}),
     "spec.smokeTests[0].expect.values[0].path", "pattern"),
    ("reserved-pod-label", _set("spec.placement", {"podLabels": {"slipway.dev/x": "y"}}),
     "spec.placement.podLabels", "reserved"),
    ("wrong-kind", _set("kind", "ModelDeploy"), "kind", "ModelDeployment"),
    ("get-with-body", _add_test({"name": "health", "method": "GET", "path": "/healthz",
                                 "body": {"a": 1}, "expect": {"status": 200}}),
     "spec.smokeTests[1].body", "GET"),
    ("forbidden-header", _set("spec.smokeTests.0.headers", {"Host": "evil.example"}),
     "spec.smokeTests[0].headers", "HTTP client"),
    ("fetched-artifact-without-digest", _set("spec.model.uri", "https://models.example/m.pkl"),
     "spec.model", "digest: required for an artifact Slipway fetches"),
    ("s3-artifact-without-digest", _set("spec.model.uri", "s3://models/iris/1.0.0/"),
     "spec.model", "insecureSkipDigest: true to fetch it unchecked"),
    ("digest-and-skip", lambda doc: doc["spec"]["model"].update(
        uri="s3://models/iris/", digest="sha256:" + "a" * 64, insecureSkipDigest=True),
     "spec.model", "not both"),
    ("skip-digest-for-a-file-uri", _set("spec.model.insecureSkipDigest", True),
     "spec.model", "insecureSkipDigest: for an artifact Slipway fetches"),
    ("credentials-for-a-file-uri", _set("spec.model.credentialsSecret", "s3-keys"),
     "spec.model", "credentialsSecret: for an artifact Slipway fetches"),
    ("credentials-secret-bad-name", lambda doc: doc["spec"]["model"].update(
        uri="s3://models/iris/", insecureSkipDigest=True, credentialsSecret="Keys_1"),
     "spec.model.credentialsSecret", "pattern"),
    ("s3-without-bucket", lambda doc: doc["spec"]["model"].update(
        uri="s3:///iris/model.pkl", digest="sha256:" + "a" * 64),
     "spec.model", "names no bucket"),
    ("model-path-for-a-fetched-artifact", lambda doc: (
        doc["spec"]["model"].update(uri="https://m.example/m.pkl", digest="sha256:" + "a" * 64),
        doc["spec"]["runtime"].update(env=[{"name": "MODEL_PATH", "value": "/x"}])),
     "spec", "MODEL_PATH is set by Slipway"),
]


def run_validate(tmp_path: pathlib.Path, doc: Any,
                 capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = cli.main(["validate", "-f", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_has_at_least_fifteen_distinct_cases() -> None:
    assert len({case[0] for case in INVALID}) == len(INVALID) >= 15


@pytest.mark.parametrize(("mutation", "field", "word"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], mutation: Mutation, field: str,
    word: str,
) -> None:
    doc = base()
    mutation(doc)
    code, out, err = run_validate(tmp_path, doc, capsys)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert lines, "no error printed"
    matching = [line for line in lines if f": {field}: " in line or f": {field}" in line]
    assert matching, f"no line names {field}: {lines}"
    assert any(word.lower() in line.lower() for line in matching), lines
    for line in lines:
        assert line.startswith(f"{tmp_path / 'md.yaml'}: ModelDeployment/"), line


@pytest.mark.parametrize("example", ["minimal.yaml", "complete.yaml", "reference.yaml",
                                     "mlserver-iris.yaml"])
def test_examples_are_valid(capsys: pytest.CaptureFixture[str], example: str) -> None:
    assert cli.main(["validate", "-f", str(EXAMPLES / example)]) == 0
    assert "valid" in capsys.readouterr().out


def test_several_documents_and_stdin_each_get_their_own_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = base()
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "second"
    del bad["spec"]["model"]["uri"]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump_all([good, service, bad])))
    code = cli.main(["validate", "-f", "-"])
    captured = capsys.readouterr()
    assert code == 1
    assert "<stdin>: ModelDeployment/iris (document 1): valid" in captured.out
    assert "skipped Service (document 2)" in captured.err
    assert "<stdin>: ModelDeployment/second (document 3): spec.model.uri: required field is " \
        "missing" in captured.err


def test_yaml_syntax_error_names_the_line(tmp_path: pathlib.Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: slipway.dev/v1alpha1\nspec: [unclosed\n")
    assert cli.main(["validate", "-f", str(path)]) == 1
    assert f"{path}: line 3" in capsys.readouterr().err


def test_missing_file_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "-f", "/nonexistent/md.yaml"]) == 1
    assert "/nonexistent/md.yaml: cannot read" in capsys.readouterr().err


def test_a_file_without_model_deployments_is_an_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert cli.main(["validate", "-f", str(path)]) == 1
    assert "no ModelDeployment found" in capsys.readouterr().err


def test_negative_smoke_test_may_send_a_malformed_body(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = base()
    doc["spec"]["smokeTests"].append(
        {"name": "malformed", "body": {"instances": "x"}, "expect": {"status": 400}})
    code, _, err = run_validate(tmp_path, doc, capsys)
    assert code == 0, err


def test_null_means_default(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = base()
    doc["spec"]["runtime"]["port"] = None
    doc["spec"]["replicas"] = None
    code, _, err = run_validate(tmp_path, doc, capsys)
    assert code == 0, err


def test_a_catastrophic_pattern_is_answered_at_once(tmp_path: pathlib.Path) -> None:
    """^(a|aa)+$ against 38 a's and a '!' took 8.5 s of CPU with Python's re, doubling with
    each further character; 60 would take days. RE2 answers in microseconds (the figure is in
    bench/hostile.py); a hang shows here as the subprocess timeout."""
    import subprocess
    import sys

    doc = base()
    doc["spec"]["schema"]["input"] = {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "string", "pattern": "^(a|aa)+$"}}}
    doc["spec"]["smokeTests"][0]["body"] = {"instances": "a" * 60 + "!"}
    path = tmp_path / "regex.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "slipway.cli", "validate", "-f", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "spec.smokeTests[0].body.instances: does not satisfy spec.schema.input" in \
        result.stderr and "does not match '^(a|aa)+$'" in result.stderr, result.stderr
