"""Protocol presets: what `runtime.protocol: v2 | v1` fills in, what the spec's own fields win
over, and `slipway render` showing the result (golden files)."""

from __future__ import annotations

import copy
import io
import os
from typing import Any

import pytest
import yaml

from slipway import cli
from slipway.api import models, presets
from tests.conftest import GOLDEN

V2_BODY = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32",
                       "data": [5.1, 3.5, 1.4, 0.2]}]}


def doc(protocol: str, **spec: Any) -> dict[str, Any]:
    body = V2_BODY if protocol == "v2" else {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    value_path = "$.outputs[0].data[0]" if protocol == "v2" else "$.predictions[0]"
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "models"},
            "spec": {"model": {"name": "iris-sklearn", "version": "1.0.0",
                               "uri": "file:///mnt/models/iris"},
                     "runtime": {"image": "docker.io/seldonio/mlserver:1.7.1-sklearn",
                                 "protocol": protocol},
                     "smokeTests": [{"name": "setosa", "body": body, "expect": {
                         "values": [{"path": value_path, "equals": 0}]}}],
                     **spec}}


OVERRIDES = doc(
    "v2",
    probes={"readiness": {"path": "/v2/health/ready"}, "liveness": {"periodSeconds": 30}},
    schema={"input": {"type": "object"}, "output": {"type": "object",
                                                     "required": ["outputs"]}})
OVERRIDES["spec"]["runtime"]["scoringPath"] = "/v2/models/iris-sklearn/versions/1/infer"

CASES = {"v2": doc("v2"), "v1": doc("v1"), "v2-overrides": OVERRIDES}


def render(document: dict[str, Any]) -> str:
    out, err = io.StringIO(), io.StringIO()
    args = cli.build_parser().parse_args(["render", "-f", "-"])
    code = cli._check(args, io.StringIO(yaml.safe_dump(document)), out, err, emit=True)
    assert code == 0, err.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("case", sorted(CASES))
def test_slipway_render_shows_what_a_preset_made_of_the_spec(case: str) -> None:
    text = render(CASES[case]).replace("<stdin>", "FILE")
    golden = GOLDEN / "presets" / f"{case}.rendered.yaml"
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "set SLIPWAY_UPDATE_GOLDEN=1 to accept the new output"


def parse(document: dict[str, Any]) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.model_validate(document["spec"])


def test_v2_fills_in_the_probes_scoring_path_and_a_tensor_contract() -> None:
    spec = parse(doc("v2"))
    assert spec.runtime.scoring_path == "/v2/models/iris-sklearn/infer"
    assert spec.probes.readiness.path == "/v2/models/iris-sklearn/ready"  # the model's own
    assert (spec.probes.liveness.path, spec.probes.startup.path) == ("/v2/health/live",) * 2
    assert spec.probes.startup.failure_threshold == 120  # a slow load still gets 10 minutes
    assert spec.schema_.input == presets.V2_SCHEMA["input"]
    assert spec.schema_.output == presets.V2_SCHEMA["output"]


def test_v1_fills_in_kserves_v1_paths_and_contract() -> None:
    spec = parse(doc("v1"))
    assert spec.runtime.scoring_path == "/v1/models/iris-sklearn:predict"
    assert spec.probes.readiness.path == "/v1/models/iris-sklearn"
    assert spec.probes.liveness.path == "/"
    assert spec.schema_.output == presets.V1_SCHEMA["output"]


def test_what_the_spec_sets_wins_and_a_probe_without_a_path_keeps_the_presets() -> None:
    spec = parse(OVERRIDES)
    assert spec.runtime.scoring_path == "/v2/models/iris-sklearn/versions/1/infer"
    assert spec.probes.readiness.path == "/v2/health/ready"
    assert spec.probes.liveness.path == "/v2/health/live"
    assert spec.probes.liveness.period_seconds == 30
    assert spec.probes.liveness.timeout_seconds == 2  # the rest of the preset's timings
    assert spec.schema_.output == {"type": "object", "required": ["outputs"]}


def test_the_users_document_is_never_changed() -> None:
    original = doc("v2")
    kept = copy.deepcopy(original)
    parse(original)
    assert original == kept


def test_a_custom_protocol_still_needs_a_schema() -> None:
    bare = doc("custom")
    with pytest.raises(ValueError, match="schema: required"):
        parse(bare)
    del bare["spec"]["runtime"]["protocol"]
    with pytest.raises(ValueError, match="schema: required"):
        parse(bare)


def test_a_smoke_request_that_is_not_a_v2_inference_request_is_refused(
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    bad = doc("v2")
    del bad["spec"]["smokeTests"][0]["body"]["inputs"][0]["datatype"]
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.smokeTests[0].body.inputs[0]" in err and "datatype" in err


def test_a_v2_answer_is_checked_against_the_presets_output_contract() -> None:
    from slipway.api import jsonschemas

    output = jsonschemas.compiled(presets.V2_SCHEMA["output"])
    good = {"model_name": "iris-sklearn", "model_version": None, "id": "1", "parameters": {},
            "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64",
                         "data": [0]}]}
    assert output.first_problem(good, jsonschemas.Budget(5.0)) is None
    assert output.first_problem({"model_name": "iris-sklearn", "outputs": []},
                                jsonschemas.Budget(5.0)) is not None
    assert output.first_problem({"outputs": good["outputs"]}, jsonschemas.Budget(5.0)) is not None
