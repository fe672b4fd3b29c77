"""`slipway render` prints what the operator would apply, like `helm template`."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from slipway import cli
from tests.conftest import EXAMPLES


def test_render_prints_a_deployment_and_a_service_per_model_deployment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(["render", "-f", str(EXAMPLES / "minimal.yaml"), "-f",
                     str(EXAMPLES / "complete.yaml"), "-n", "staging"])
    out = capsys.readouterr().out
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Deployment", "iris"), ("Service", "iris"),
        ("Deployment", "fraud-scorer"), ("Service", "fraud-scorer")]
    assert {d["metadata"]["namespace"] for d in docs} == {"staging"}
    assert "# Source: " in out and "revision " in out


def test_render_refuses_an_invalid_document(tmp_path: pytest.TempPathFactory,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"  # type: ignore[operator]
    path.write_text((EXAMPLES / "minimal.yaml").read_text().replace("port", "prt")
                    .replace('version: "1.0.0"', "version: ''"))
    assert cli.main(["render", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "spec.model.version" in captured.err


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["deploy"])
    assert exit_info.value.code == 2


def test_the_readme_field_reference_is_what_slipway_docs_generates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import ROOT

    code = cli.main(["docs", "--check", str(ROOT / "README.md")])
    assert code == 0, "run `slipway docs` to regenerate the README's field reference"


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "inf"])
def test_run_stops_at_once_on_a_bad_tuning_variable(value: str) -> None:
    # `slipway run` loads the handlers, which read their settings, before kopf starts: no
    # cluster is needed to see the refusal.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env["SLIPWAY_CONFLICT_RECHECK_SECONDS"] = value
    env["KUBECONFIG"] = "/nonexistent"
    result = subprocess.run([sys.executable, "-m", "slipway.cli", "run", "--liveness", ""],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"SLIPWAY_CONFLICT_RECHECK_SECONDS='{value}' must be a number above 0" \
        in result.stderr


@pytest.mark.parametrize(("variables", "message"), [
    ({"SLIPWAY_LEASE_SECONDS": "ten"}, "SLIPWAY_LEASE_SECONDS='ten' must be a number above 0"),
    ({"SLIPWAY_LEASE_SECONDS": "7.5"}, "SLIPWAY_LEASE_SECONDS must be whole seconds"),
    ({"SLIPWAY_LEASE_SECONDS": "nan"}, "SLIPWAY_LEASE_SECONDS='nan' must be a number above 0"),
    ({"SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS": "inf"},
     "SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS='inf' must be a number above 0"),
    ({"SLIPWAY_LEASE_RETRY_SECONDS": "0"}, "SLIPWAY_LEASE_RETRY_SECONDS='0' must be a number above 0"),
    ({"SLIPWAY_LEASE_SECONDS": "8"},
     "unsafe leader election timing: the lease (8 s) must be longer than the renew deadline"),
    ({"SLIPWAY_LEASE_RETRY_SECONDS": "9"},
     "the renew deadline (10 s) must be longer than 1.2 x the retry period (9 s)"),
])
def test_run_stops_at_once_on_unsafe_leader_election_timing(variables: dict[str, str],
                                                            message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env.update(variables, KUBECONFIG="/nonexistent")
    result = subprocess.run([sys.executable, "-m", "slipway.cli", "run", "--liveness", ""],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr


def test_the_lease_namespace_is_the_given_one_then_the_pods_own_then_slipway_system(
        monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    from slipway.engine import operator_main

    monkeypatch.setattr(operator_main, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "none"))
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert operator_main.lease_namespace(None) == "slipway-system"
    assert operator_main.lease_namespace("ops") == "ops"
    (tmp_path / "ns").write_text("from-the-token\n")
    monkeypatch.setattr(operator_main, "SERVICE_ACCOUNT_NAMESPACE", str(tmp_path / "ns"))
    assert operator_main.lease_namespace(None) == "from-the-token"
    monkeypatch.setenv("POD_NAMESPACE", "from-the-downward-api")
    assert operator_main.lease_namespace(None) == "from-the-downward-api"


@pytest.mark.parametrize(("args", "message"), [
    (["--lease-namespace", "Ops_Team"], "lease namespace 'Ops_Team' is not a valid namespace"),
    (["--lease-name", "slipway/operator"], "lease name 'slipway/operator' is not a valid object"),
])
def test_run_refuses_lease_names_the_api_server_would_refuse(args: list[str],
                                                             message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    env["KUBECONFIG"] = "/nonexistent"
    result = subprocess.run([sys.executable, "-m", "slipway.cli", "run", "--liveness", "", *args],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr


def test_the_liveness_endpoint_defaults_to_loopback_outside_a_pod_and_yields_a_taken_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    from slipway import cli

    assert cli.default_liveness({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == \
        "http://0.0.0.0:8080/healthz"
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(cli.LOCAL_LIVENESS)
        except OSError:
            pytest.skip("127.0.0.1:8080 is in use on this machine")
        holder.listen()
        # A second operator on this machine: no endpoint, said on stderr, not a crash
        assert cli.default_liveness({}) == ""
        assert "127.0.0.1:8080 is taken" in capsys.readouterr().err
    assert cli.default_liveness({}) == "http://127.0.0.1:8080/healthz"
