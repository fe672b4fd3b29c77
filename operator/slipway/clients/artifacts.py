"""Model artifacts on disk: their digest (``slipway digest PATH``), by the canonical manifest of
``slipway.logic.digest``.

A file is hashed as it is read (any size, constant memory); a directory is walked without
following links, and a link, a device, a FIFO or a socket in it is refused rather than skipped:
the digest says exactly what the server will load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import stat

from slipway.logic import digest


@dataclasses.dataclass(frozen=True)
class Digested:
    digest: str
    manifest: str | None  # a directory's; None for a single file
    files: int


def _sha256(path: pathlib.Path) -> str:
    # O_NOFOLLOW: a file swapped for a link after it was looked at is refused, not followed
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def digest_path(path: str | os.PathLike[str]) -> Digested:
    """The digest of a file or a directory; ManifestError for what a manifest cannot hold,
    OSError for what cannot be read."""
    root = pathlib.Path(path)
    mode = os.lstat(root).st_mode
    if stat.S_ISLNK(mode):
        raise digest.ManifestError(f"{root}: a symbolic link; give the file or folder itself")
    if stat.S_ISREG(mode):
        return Digested(digest.PREFIX + _sha256(root), None, 1)
    if not stat.S_ISDIR(mode):
        raise digest.ManifestError(f"{root}: neither a regular file nor a folder")
    entries = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise):
        for name in sorted(dirs + files):
            full = pathlib.Path(folder) / name
            relative = full.relative_to(root).as_posix()
            digest.check_name(relative)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise digest.ManifestError(f"{relative}: a symbolic link (an artifact holds "
                                           "regular files and folders only)")
            if stat.S_ISREG(mode):
                entries.append((relative, _sha256(full)))
            elif not stat.S_ISDIR(mode):
                raise digest.ManifestError(f"{relative}: neither a regular file nor a folder")
    if not entries:
        # Its manifest would be empty, and its digest that of an empty file
        raise digest.ManifestError(f"{root}: a folder with no files in it")
    text = digest.manifest(entries)
    return Digested(digest.of_manifest(text), text, len(entries))


def _raise(error: OSError) -> None:
    raise error
