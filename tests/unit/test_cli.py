"""`slipway render` prints what the operator would apply, like `helm template`."""

from __future__ import annotations

import os
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
