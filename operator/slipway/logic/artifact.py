"""Where a fetched artifact lands, known before anything is fetched.

``slipway fetch`` (the init container) writes ``DEST/artifact`` and ``DEST/verified.json``; the
renderer mounts DEST at ``/mnt/models`` and tells the model server where its artifact is
(``MODEL_PATH``). Both sides take the layout from here, so they cannot disagree:

- ``http(s)://host/path/model.joblib`` is one file: ``/mnt/models/artifact/model.joblib``
  (a URL whose path has no last segment is saved as ``model``);
- ``s3://bucket/key`` is one object, saved under the key's last segment the same way;
- ``s3://bucket/prefix/`` (ending in ``/``) or ``s3://bucket`` is a folder: every object under
  the prefix, at its path below the prefix: ``MODEL_PATH`` is ``/mnt/models/artifact``.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

from slipway.api import models

ARTIFACT = "artifact"  # under the destination: the file, or the folder of an s3 prefix
RECORD = "verified.json"  # under the destination: what was fetched and checked
DEFAULT_NAME = "model"
FETCH_CONTAINER = "fetch-model"  # the rendered init container that runs `slipway fetch`
# Why a fetch failed: the first word of its termination message, and the release's reason.
DIGEST_MISMATCH = "ArtifactDigestMismatch"
FETCH_FAILED = "ArtifactFetchFailed"


def fetched(uri: str) -> bool:
    """Whether Slipway fetches ``uri`` (http://, https://, s3://) before the server starts."""
    return re.match(models.FETCHED_URI, uri) is not None


def scheme(uri: str) -> str:
    return urllib.parse.urlsplit(uri).scheme.lower()


def is_folder(uri: str) -> bool:
    """An s3 prefix (the key empty or ending in /): a folder of objects. http(s) is one file."""
    if scheme(uri) != "s3":
        return False
    key = urllib.parse.urlsplit(uri).path.lstrip("/")
    return key == "" or key.endswith("/")


def file_name(uri: str) -> str:
    """The name a single-file artifact is saved under: its path's last segment, as written."""
    path = urllib.parse.urlsplit(uri).path
    name = posixpath.basename(path)
    return name if name not in ("", ".", "..") else DEFAULT_NAME


def model_path(uri: str, mount: str = models.MODEL_MOUNT) -> str:
    """``MODEL_PATH`` for the model server: the file, or the folder of an s3 prefix."""
    folder = f"{mount}/{ARTIFACT}"
    return folder if is_folder(uri) else f"{folder}/{file_name(uri)}"


def shown(uri: str) -> str:
    """A URI as messages, annotations and logs may show it: no user, password, query (a
    presigned URL's signature) or fragment."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
