"""``spec.model.digest`` of a file or a folder: the canonical manifest, and ``slipway digest``.

The digests are checked against coreutils' ``sha256sum`` run by hand the way the format's
documentation says, on trees with nested folders, empty files and non-ASCII names.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from slipway.clients import artifacts
from slipway.logic import digest

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def tree(root: pathlib.Path) -> pathlib.Path:
    (root / "weights" / "layers").mkdir(parents=True)
    (root / "weights" / "layers" / "0.bin").write_bytes(bytes(range(256)) * 64)
    (root / "weights" / "empty.bin").write_bytes(b"")
    (root / "Ω données").mkdir()
    (root / "Ω données" / "étiquettes é.txt").write_text("setosa\nversicolor\nvirginica\n")
    (root / "README").write_text("iris\n")
    (root / "b").write_text("lower after upper in bytes\n")
    (root / "-x").write_text("a name sha256sum must not read as an option\n")
    (root / "unused-empty-folder").mkdir()
    return root


def by_hand(root: pathlib.Path) -> str:
    """The documented shell recipe, with coreutils."""
    script = ("find . -type f | sed 's|^\\./||' | LC_ALL=C sort | tr '\\n' '\\0' "
              "| xargs -0 sha256sum -- | sha256sum")
    done = subprocess.run(["sh", "-c", script], cwd=root, capture_output=True, text=True,
                          check=True, env={**os.environ, "LC_ALL": "C"})
    return "sha256:" + done.stdout.split()[0]


def test_a_folder_digest_is_the_sha256sum_of_its_manifest(tmp_path: pathlib.Path) -> None:
    root = tree(tmp_path / "model")
    found = artifacts.digest_path(root)
    assert found.digest == by_hand(root)
    assert found.files == 6
    assert found.manifest is not None
    lines = found.manifest.splitlines()
    # sorted by UTF-8 bytes: upper case before lower case before non-ASCII
    assert [line.split("  ", 1)[1] for line in lines] == [
        "-x", "README", "b", "weights/empty.bin", "weights/layers/0.bin",
        "Ω données/étiquettes é.txt"]
    assert lines[3] == f"{EMPTY}  weights/empty.bin"


def test_a_file_digest_is_its_sha256(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x00weights\xff" * 1000)
    done = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert artifacts.digest_path(path) == artifacts.Digested(
        "sha256:" + done.stdout.split()[0], None, 1)


def test_what_changes_the_digest_and_what_does_not(tmp_path: pathlib.Path) -> None:
    root = tree(tmp_path / "model")
    before = artifacts.digest_path(root).digest
    (root / "another-empty-folder").mkdir()  # folders are not in the manifest
    assert artifacts.digest_path(root).digest == before
    data = bytearray((root / "weights" / "layers" / "0.bin").read_bytes())
    data[1000] ^= 1  # one bit of one byte
    (root / "weights" / "layers" / "0.bin").write_bytes(bytes(data))
    changed = artifacts.digest_path(root).digest
    assert changed != before
    (root / "README").rename(root / "README.md")  # a name is part of it
    assert artifacts.digest_path(root).digest not in (before, changed)


@pytest.mark.parametrize("kind", ["link", "fifo", "newline", "carriage-return", "backslash",
                                  "not-utf8", "no-file"])
def test_what_a_manifest_cannot_hold_is_refused(tmp_path: pathlib.Path, kind: str) -> None:
    root = tree(tmp_path / "model")
    if kind == "link":
        (root / "link").symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(root / "pipe")
    elif kind == "newline":
        (root / "two\nlines").write_text("x")
    elif kind == "backslash":
        (root / "back\\slash").write_text("x")
    elif kind == "carriage-return":
        (root / "car\rriage").write_text("x")
    elif kind == "no-file":
        root = tmp_path / "empty-model"
        (root / "only" / "folders").mkdir(parents=True)
    else:
        with open(os.path.join(os.fsencode(root), b"latin-\xe9"), "wb") as handle:
            handle.write(b"x")
    with pytest.raises(digest.ManifestError):
        artifacts.digest_path(root)


def test_the_manifest_refuses_paths_that_leave_the_tree() -> None:
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(digest.ManifestError):
            digest.manifest([(bad, EMPTY)])
    with pytest.raises(digest.ManifestError, match="twice"):
        digest.manifest([("a", EMPTY), ("a", EMPTY)])
    with pytest.raises(digest.ManifestError, match="lowercase hex"):
        digest.manifest([("a", EMPTY.upper())])


def test_slipway_digest_prints_the_digest_and_the_manifest(tmp_path: pathlib.Path) -> None:
    root = tree(tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "slipway.cli", "digest", "--manifest",
                           str(root)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    *manifest_lines, last = done.stdout.splitlines()
    assert last == by_hand(root) and len(manifest_lines) == 6
    assert digest.DIGEST.fullmatch(last)
    (root / "link").symlink_to("README")
    refused = subprocess.run([sys.executable, "-m", "slipway.cli", "digest", str(root)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "symbolic link" in refused.stderr
    missing = subprocess.run([sys.executable, "-m", "slipway.cli", "digest",
                              str(tmp_path / "nope")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode == 1 and "No such file" in missing.stderr
