"""The README's field reference is generated from the models and covers every field."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import typing
from typing import Any

import pydantic
import pytest

from slipway.api import docs, models

REFERENCE = docs.render_field_reference()


def split_row(line: str) -> list[str]:
    """The cells of a Markdown table row (escaped pipes stay inside their cell)."""
    inner = line.strip()[1:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def parse(reference: str) -> dict[str, dict[str, list[str]]]:
    """Every path of every section heading -> {field name: [type, default, validation, desc]}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in reference.splitlines():
        if line.startswith("### "):
            current = {}
            for path in re.findall(r"`([^`]+)`", line):
                assert path not in sections, f"{path} has two sections"
                sections[path] = current
        elif line.startswith("| `"):
            cells = split_row(line)
            assert len(cells) == 5, line
            current[cells[0].strip("`")] = cells[1:]
    return sections


SECTIONS = parse(REFERENCE)


def nested(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested(arg)
        if found is not None:
            return found
    return None


def model_paths() -> list[tuple[str, type[pydantic.BaseModel]]]:
    """Every object path of the API, depth-first in field order, found independently of docs."""
    out: list[tuple[str, type[pydantic.BaseModel]]] = []

    def visit(model: type[pydantic.BaseModel], path: str) -> None:
        out.append((path, model))
        schema = model.model_json_schema(by_alias=True)["properties"]
        for name, info in model.model_fields.items():
            child = nested(info.annotation)
            if child is None:
                continue
            alias = info.alias or name
            node = schema[alias]
            branches = node.get("anyOf", [node])
            is_list = any(branch.get("type") == "array" for branch in branches)
            visit(child, f"{path}.{alias}{'[]' if is_list else ''}")

    visit(models.ModelDeploymentSpec, "spec")
    visit(models.ModelDeploymentStatus, "status")
    return out


def row(path: str, name: str) -> list[str]:
    return SECTIONS[path][name]


# --------------------------------------------------------------------------------------------
# Coverage and order


def test_every_field_of_every_object_is_in_its_section_in_field_order() -> None:
    paths = model_paths()
    assert len(paths) > 20
    for path, model in paths:
        assert path in SECTIONS, f"no section for {path}"
        aliases = [info.alias or name for name, info in model.model_fields.items()]
        assert list(SECTIONS[path]) == aliases, path
    assert set(SECTIONS) == {path for path, _ in paths}


def test_sections_are_depth_first_spec_then_status() -> None:
    headings = [line for line in REFERENCE.splitlines() if line.startswith("### ")]
    first_paths = [re.findall(r"`([^`]+)`", heading)[0] for heading in headings]
    expected: list[str] = []
    seen: set[type[pydantic.BaseModel]] = set()
    for path, model in model_paths():
        if model not in seen:
            seen.add(model)
            expected.append(path)
    assert first_paths == expected
    assert first_paths[:4] == ["spec", "spec.model", "spec.runtime", "spec.runtime.env[]"]
    assert first_paths.index("status") > first_paths.index("spec.rollback")
    assert "status.conditions[]" in first_paths


def test_a_model_used_at_several_paths_has_one_section_naming_them_all() -> None:
    heading = next(line for line in REFERENCE.splitlines() if "`spec.probes.readiness`" in line)
    assert heading == (
        "### `spec.probes.readiness`, `spec.probes.liveness`, `spec.probes.startup`"
    )
    assert SECTIONS["spec.probes.liveness"] is SECTIONS["spec.probes.readiness"]


def test_descriptions_and_docstrings_appear() -> None:
    assert "A model release: artifact, runtime, contract" in REFERENCE
    assert "Container resources; extended resources such as `nvidia.com/gpu` are allowed." in (
        REFERENCE
    )
    for path, model in model_paths():
        for name, info in model.model_fields.items():
            if info.description:
                text = " ".join(info.description.split()).replace("<", "&lt;")
                assert text in row(path, info.alias or name)[3], (path, name)


# --------------------------------------------------------------------------------------------
# Types, defaults, required markers, validation


def test_types() -> None:
    assert row("spec", "replicas")[0] == "integer"
    assert row("spec.runtime", "command")[0] == "list of string"
    assert row("spec.runtime", "env")[0] == "list of [object](#specruntimeenv)"
    assert row("spec.runtime.resources", "limits")[0] == "map of string to int or string"
    assert row("spec.rollout", "maxSurge")[0] == "int or string"
    assert row("spec.smokeTests[]", "body")[0] == "any JSON"
    assert row("spec.schema", "input")[0] == "object (any JSON)"
    assert row("spec.rollback", "automatic")[0] == "boolean"


def test_enum_values_of_method_and_phase() -> None:
    method_type, method_default, _, _ = row("spec.smokeTests[]", "method")
    for verb in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        assert f"`{verb}`" in method_type
    assert method_default == "`POST`"
    for phase in typing.get_args(models.Phase):
        assert f"`{phase}`" in row("status", "phase")[0]


def test_required_markers_and_defaults() -> None:
    for name in ("model", "runtime", "schema", "smokeTests"):
        assert row("spec", name)[1] == "**required**", name
    assert row("spec", "replicas")[1] == "none"
    assert row("spec.runtime", "port")[1] == "`8080`"
    assert row("spec.runtime", "scoringPath")[1] == "`/score`"
    assert row("spec.runtime", "env")[1] == "`[]`"
    assert row("spec.rollout", "maxSurge")[1] == "`25%`"
    assert row("spec.rollback", "automatic")[1] == "`true`"
    assert row("status.conditions[]", "message")[1] == '`""`'
    assert row("spec", "probes")[1] == "[see below](#specprobes)"


def test_probe_defaults_come_from_the_default_factories() -> None:
    readiness = row("spec.probes", "readiness")[1]
    assert readiness == "`{path: /readyz, periodSeconds: 5, timeoutSeconds: 2}`"
    assert "failureThreshold: 120" in row("spec.probes", "startup")[1]
    assert "path: /healthz" in row("spec.probes", "liveness")[1]
    # The Probe object's own defaults apply to fields a user leaves out of a probe.
    assert row("spec.probes.readiness", "periodSeconds")[1] == "`10`"


def test_validation_bounds_patterns_and_cel_messages() -> None:
    assert "1 to 65535" in row("spec.runtime", "port")[2]
    assert "max length 63" in row("spec.model", "name")[2]
    name_pattern = "pattern `^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`"
    assert name_pattern in row("spec.model", "name")[2]
    assert "…`" in row("spec.runtime", "image")[2], "a long pattern is shortened"
    smoke = row("spec", "smokeTests")[2]
    assert "1 to 32 items" in smoke and "CEL: smoke test names must be unique" in smoke
    assert "CEL: env variable names must be unique" in row("spec.runtime", "env")[2]
    assert "keys: max length 317" in row("spec.placement", "podLabels")[2]
    assert "each item: max length 4096" in row("spec.runtime", "command")[2]
    # Object rules aimed at one field sit in its row; the others introduce the section.
    assert "CEL: liveness.successThreshold must be 1" in row("spec.probes", "liveness")[2]
    assert "Rules: maxSurge and maxUnavailable cannot both be 0." in REFERENCE


def test_pipes_in_cells_are_escaped_and_links_resolve() -> None:
    headers = row("spec.smokeTests[]", "headers")[2]
    assert r"`\|~" in headers, "the | of the header-name pattern is escaped"
    anchors = set()
    for line in REFERENCE.splitlines():
        if line.startswith("### "):
            text = line[4:].replace("`", "").lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    targets = set(re.findall(r"\]\(#([^)]+)\)", REFERENCE))
    assert targets and targets <= anchors


def test_output_is_deterministic_and_ends_with_one_newline() -> None:
    assert docs.render_field_reference() == REFERENCE
    assert REFERENCE.endswith("|\n") and not REFERENCE.endswith("\n\n")


def test_docs_imports_no_kubernetes_client() -> None:
    code = (
        "import sys, slipway.api.docs\n"
        "bad = [m for m in ('kubernetes', 'kopf', 'httpx', 'yaml') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_code_lines_are_at_most_100_characters() -> None:
    for number, line in enumerate(pathlib.Path(docs.__file__).read_text().splitlines(), 1):
        assert len(line) <= 100, f"docs.py:{number}"


# --------------------------------------------------------------------------------------------
# update_readme


STALE = (
    "# Title\n\nIntro.\n\n"
    f"{docs.BEGIN_MARKER}\nold reference | stale\n{docs.END_MARKER}\n\n## After\n\nTail.\n"
)


def test_update_readme_replaces_only_the_block_and_is_idempotent(tmp_path: pathlib.Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(STALE)
    assert docs.update_readme(readme) is True
    text = readme.read_text()
    before, rest = text.split(docs.BEGIN_MARKER + "\n")
    block, after = rest.split(docs.END_MARKER)
    assert before == "# Title\n\nIntro.\n\n"
    assert after == "\n\n## After\n\nTail.\n"
    assert block == "\n" + REFERENCE + "\n"
    assert "old reference" not in text
    assert docs.update_readme(readme) is False
    assert docs.update_readme(readme, check=True) is False
    assert readme.read_text() == text


def test_check_reports_drift_without_writing(tmp_path: pathlib.Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(STALE)
    assert docs.update_readme(readme, check=True) is True
    assert readme.read_text() == STALE


@pytest.mark.parametrize(
    "text",
    [
        "# No markers\n",
        f"{docs.BEGIN_MARKER}\nno end\n",
        f"no begin\n{docs.END_MARKER}\n",
        f"{docs.END_MARKER}\n{docs.BEGIN_MARKER}\n",
        f"{docs.BEGIN_MARKER}\n{docs.END_MARKER}\n{docs.BEGIN_MARKER}\n{docs.END_MARKER}\n",
    ],
    ids=["none", "no-end", "no-begin", "reversed", "twice"],
)
def test_missing_or_broken_markers_raise(tmp_path: pathlib.Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ValueError, match="BEGIN FIELD REFERENCE"):
        docs.update_readme(readme)
    with pytest.raises(ValueError, match="END FIELD REFERENCE"):
        docs.update_readme(readme, check=True)
    assert readme.read_text() == text
