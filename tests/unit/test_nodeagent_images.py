"""Image table parsing and the Kubernetes command/args override rules of the node agent."""
from __future__ import annotations

import pathlib

import pytest

import slipway_dev.images as images

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

ENTRY = images.ImageEntry(
    ref="img:1", entrypoint=("python3", "/srv/server.py"), cmd=("--port", "8080")
)


def test_no_command_no_args_runs_entrypoint_plus_cmd() -> None:
    assert images.resolve_argv(ENTRY, None, None, {}) == [
        "python3", "/srv/server.py", "--port", "8080",
    ]


def test_args_replace_the_image_cmd_but_keep_the_entrypoint() -> None:
    assert images.resolve_argv(ENTRY, None, ["--port", "9000"], {}) == [
        "python3", "/srv/server.py", "--port", "9000",
    ]


def test_command_replaces_entrypoint_and_drops_the_image_cmd() -> None:
    assert images.resolve_argv(ENTRY, ["sleep"], None, {}) == ["sleep"]
    assert images.resolve_argv(ENTRY, ["sleep"], ["5"], {}) == ["sleep", "5"]


def test_dollar_paren_references_expand_from_the_container_env() -> None:
    env = {"PORT": "9000"}
    argv = images.resolve_argv(ENTRY, None, ["--port=$(PORT)", "$(MISSING)", "$$(PORT)"], env)
    assert argv[2:] == ["--port=9000", "$(MISSING)", "$(PORT)"]


def test_an_image_with_nothing_to_run_and_no_command_is_an_error() -> None:
    with pytest.raises(images.ImageTableError):
        images.resolve_argv(images.ImageEntry(ref="x"), None, None, {})


def test_placeholders_resolve_relative_to_the_table() -> None:
    table = images.ImageTable(EXAMPLES / "images.yaml", python="/py/bin/python3")
    entry = table.lookup("registry.example.com/slipway/reference-model:1.0.0")
    assert entry is not None
    assert entry.entrypoint == ("/py/bin/python3", f"{EXAMPLES}/bundle/server.py")
    assert dict(entry.env)["MODEL_PATH"] == f"{EXAMPLES}/bundle/model/model.json"
    assert entry.image_id.startswith("slipway-local://registry.example.com/")


def test_every_example_image_resolves_to_existing_files() -> None:
    table = images.ImageTable(EXAMPLES / "images.yaml")
    for ref in ("1.0.0", "1.0.0-missing-dep", "1.0.0-wrong-model-path", "1.0.0-shape-mismatch"):
        entry = table.lookup(f"registry.example.com/slipway/reference-model:{ref}")
        assert entry is not None, ref
        assert pathlib.Path(entry.entrypoint[1]).is_file()
        for name, value in entry.env:
            if name in ("SCORE_SCRIPT", "MODEL_PATH"):
                assert pathlib.Path(value).is_file(), value


def test_untagged_reference_matches_latest_and_unknown_is_none() -> None:
    entries = {"busybox:latest": images.ImageEntry(ref="busybox:latest", cmd=("sh",))}
    assert images.lookup(entries, "busybox") is entries["busybox:latest"]
    assert images.lookup(entries, "busybox:1.0") is None
    assert images.lookup(entries, "nope") is None


def test_malformed_tables_are_reported_with_the_image_key() -> None:
    with pytest.raises(images.ImageTableError, match="img:1"):
        images.parse_table({"images": {"img:1": {"entrypoint": "not-a-list"}}}, {})
    with pytest.raises(images.ImageTableError, match="unknown field"):
        images.parse_table({"images": {"img:1": {"command": ["x"]}}}, {})
    with pytest.raises(images.ImageTableError):
        images.parse_table({"nope": {}}, {})
