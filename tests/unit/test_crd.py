"""The CRD is generated from the models, structural, bounded, and committed as generated."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from slipway import cli
from slipway.api import crd, models
from tests.conftest import ROOT

CRD_PATH = ROOT / "crds" / "modeldeployments.slipway.dev.yaml"


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        out += walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        out += walk(node["additionalProperties"], f"{path}{{*}}")
    return out


def root_schema() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_what_slipway_crd_generates(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    generated = capsys.readouterr().out
    assert generated == CRD_PATH.read_text(), "run `slipway crd -o crds/modeldeployments.slipway.dev.yaml`"


def test_kubectl_apply_f_crds_reads_only_the_crd() -> None:
    # kubectl apply -f DIR reads the files ending in .yaml, .yml or .json (not recursing);
    # the kustomize file there is named `Kustomization` so that it is not one of them.
    read = sorted(p.name for p in (ROOT / "crds").iterdir()
                  if p.is_file() and p.suffix in {".yaml", ".yml", ".json"})
    assert read == [CRD_PATH.name]
    assert [d["kind"] for d in yaml.safe_load_all(CRD_PATH.read_text()) if d] == [
        "CustomResourceDefinition"]
    assert yaml.safe_load((ROOT / "crds" / "Kustomization").read_text())["resources"] == [
        CRD_PATH.name]


def test_schema_is_structural_with_every_node_typed_and_no_refs() -> None:
    for path, node in walk(root_schema()):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "title" not in node, path
        # Defaults belong to the operator (the user's spec is never rewritten), with one
        # exception: a new object's status says "not observed yet" (see the next test).
        assert "default" not in node or path == ".status", path
        assert "patternProperties" not in node and "propertyNames" not in node, path
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or \
            node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"


def test_a_new_object_reads_as_not_yet_observed() -> None:
    """kstatus calls an object without status Current: a default makes it generation 1,
    observed 0, until the operator writes."""
    assert root_schema()["properties"]["status"]["default"] == {"observedGeneration": 0,
                                                                "phase": "Pending"}


def test_every_string_list_and_map_is_bounded() -> None:
    props = root_schema()["properties"]
    for path, node in walk(props["spec"], "spec") + walk(props["status"], "status"):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_an_unbounded_string_is_refused_by_the_generator() -> None:
    with pytest.raises(crd.UnboundedFieldError, match=".name"):
        crd.to_structural({"type": "object", "properties": {"name": {"type": "string"}}}, {})


def test_optional_fields_are_nullable_and_required_ones_are_listed() -> None:
    spec = root_schema()["properties"]["spec"]
    # schema may come from a protocol preset: CEL requires it for runtime.protocol custom
    assert spec["required"] == ["model", "runtime", "smokeTests"]
    assert any("has(self.schema)" in rule["rule"] for rule in spec["x-kubernetes-validations"])
    assert spec["properties"]["replicas"]["nullable"] is True
    assert spec["properties"]["model"]["properties"]["digest"]["nullable"] is True
    assert "nullable" not in spec["properties"]["model"]


def test_status_declares_every_field_the_operator_writes() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    for field in ("phase", "observedGeneration", "conditions", "currentRevision", "rollbackTarget",
                  "lastSmokeTest", "history"):
        assert field in status
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) >= {"type", "status", "reason", "message", "lastTransitionTime",
                              "observedGeneration"}


def test_crd_has_status_subresource_short_name_and_printer_columns() -> None:
    doc = yaml.safe_load(CRD_PATH.read_text())
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"] == ["md"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Model", "Version", "Phase", "Ready", "Serving"]
    assert columns[-1] == "Age"


def test_cel_rules_cover_the_cross_field_invariants() -> None:
    rules = [rule["rule"] for _, node in walk(root_schema())
             for rule in node.get("x-kubernetes-validations", [])]
    text = "\n".join(rules)
    assert "self.metadata.name" in text
    assert "exists_one(u, u.name == t.name)" in text  # unique smoke-test names
    assert "sha256" in text  # digest format
    assert "self >= 100 && self <= 599" in text  # status codes


def test_group_version_and_names_match_the_models() -> None:
    doc = crd.build_crd()
    assert doc["metadata"]["name"] == f"{models.PLURAL}.{models.GROUP}"
    assert doc["spec"]["names"]["kind"] == models.KIND


def test_every_path_field_carries_the_url_path_rules_as_cel() -> None:
    spec = root_schema()["properties"]["spec"]["properties"]
    fields = {
        "smokeTests[].path": spec["smokeTests"]["items"]["properties"]["path"],
        "runtime.scoringPath": spec["runtime"]["properties"]["scoringPath"],
        **{f"probes.{name}.path": spec["probes"]["properties"][name]["properties"]["path"]
           for name in ("readiness", "liveness", "startup")},
    }
    for name, node in fields.items():
        assert node.get("x-kubernetes-validations") == models.url_path_cel(), name
        assert node["maxLength"] == 1024, name
