"""What ``spec.model.digest`` means for a file and for a directory: the canonical manifest.

A single file's digest is the sha256 of its bytes. A directory's is the sha256 of its
**manifest**: one line per regular file below it, sorted by relative path, each line

    <sha256 of the file, 64 lowercase hex><two spaces><relative path>\\n

(the format of ``sha256sum``), the relative path with ``/`` between its parts, in UTF-8, and
the lines sorted by those UTF-8 bytes. Empty directories are not in it (an object store has
none); an empty file is (its sha256 is that of no bytes). A name that is not UTF-8 or holds a
newline, a carriage return or a backslash, a symbolic link, anything but regular files and
directories, and a directory with no file are refused: each would let two different trees share
one manifest, or reach outside the tree.

So ``sha256sum`` reproduces it by hand::

    cd model && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | tr '\\n' '\\0' \\
        | xargs -0 sha256sum -- | sha256sum

Pure: the entries come in, the text and digests go out. ``slipway digest PATH`` and the
artifact fetcher walk the files (``slipway.clients.artifacts``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

PREFIX = "sha256:"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A tree that has no canonical manifest (a name or a kind of file it cannot hold)."""


def check_name(relative: str) -> None:
    """Refuse a relative path the manifest cannot hold unambiguously."""
    if not relative or relative.startswith("/") or "\\" in relative or "\n" in relative \
            or "\r" in relative:
        raise ManifestError(f"{relative!r}: a path in an artifact may hold no newline, carriage "
                            "return or backslash, and must be relative")
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ManifestError(f"{relative!r}: empty, '.' or '..' path segment")
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{relative!r}: a file name in an artifact must be UTF-8") from None


def manifest(entries: Iterable[tuple[str, str]]) -> str:
    """The manifest of (relative path, sha256 hex) pairs, in canonical order."""
    rows = []
    seen = set()
    for relative, sha in entries:
        check_name(relative)
        if not _HEX.fullmatch(sha):
            raise ManifestError(f"{relative!r}: {sha!r} is not a sha256 in lowercase hex")
        if relative in seen:
            raise ManifestError(f"{relative!r} twice")
        seen.add(relative)
        rows.append((relative.encode("utf-8"), f"{sha}  {relative}\n"))
    return "".join(line for _, line in sorted(rows))


def of_manifest(text: str) -> str:
    return PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def of_bytes(data: bytes) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()
