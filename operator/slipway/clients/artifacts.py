"""Model artifacts: their digest (``slipway digest PATH``), by the canonical manifest of
``slipway.logic.digest``, and their fetch (``slipway fetch``: http(s):// with httpx, s3:// with
boto3), checked against ``spec.model.digest`` before anything serves them.

A file is hashed as it is read (any size, constant memory); a directory is walked without
following links, and a link, a device, a FIFO or a socket in it is refused rather than skipped:
the digest says exactly what the server will load.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import stat
import urllib.parse

from slipway.api import models
from slipway.logic import artifact, digest


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


# --------------------------------------------------------------------------------------------
# Fetching an artifact and checking it against its digest (``slipway fetch``)

# The reasons a fetch fails with: the first word of the termination message.
DIGEST_MISMATCH = artifact.DIGEST_MISMATCH
FETCH_FAILED = artifact.FETCH_FAILED
ARTIFACT = artifact.ARTIFACT
RECORD = artifact.RECORD
CHUNK = 1 << 20


class FetchError(Exception):
    """An artifact that could not be fetched or is not the one its digest names; ``reason``
    is FETCH_FAILED or DIGEST_MISMATCH, the message never holds credentials."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


shown = artifact.shown


def _http(uri: str, into: pathlib.Path, timeout: float) -> pathlib.Path:
    import httpx  # only here: the operator never downloads artifacts itself

    name = artifact.file_name(uri)
    digest.check_name(name)
    target = into / name
    try:
        # Connection failures are tried twice more at once (a pod network that comes up a
        # moment late); an answer that is not 200 is final.
        with httpx.Client(transport=httpx.HTTPTransport(retries=2), timeout=timeout,
                          follow_redirects=True, trust_env=False) as client, \
                client.stream("GET", uri) as answer:
            if answer.status_code != 200:
                raise FetchError(FETCH_FAILED, f"{shown(uri)}: HTTP {answer.status_code}")
            with open(target, "xb") as out:
                for chunk in answer.iter_bytes(CHUNK):
                    out.write(chunk)
    except httpx.HTTPError as error:
        raise FetchError(FETCH_FAILED, f"{shown(uri)}: {type(error).__name__}: "
                         f"{_without(str(error), uri)}") from None
    return target


def _s3(uri: str, into: pathlib.Path) -> pathlib.Path | None:
    """One object (``s3://bucket/key``), or every object under a prefix (``s3://bucket/prefix/``,
    a folder), with boto3: credentials, region and endpoint from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    AWS_ENDPOINT_URL), as the pod's Secret reference sets them. The file's path, or None for a
    folder."""
    import boto3
    import botocore.config
    import botocore.exceptions

    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise FetchError(FETCH_FAILED, f"{shown(uri)}: no bucket")
    # A few quick retries: an endpoint that does not answer fails the release in seconds
    client = boto3.client("s3", config=botocore.config.Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30))
    try:
        if not artifact.is_folder(uri):
            name = artifact.file_name(uri)
            digest.check_name(name)
            try:
                client.download_file(bucket, key, str(into / name))
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    raise FetchError(FETCH_FAILED, f"{shown(uri)}: no such object (a folder's "
                                     "URI ends with /)") from None
                raise
            return into / name
        count = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents") or []:
                relative = item["Key"][len(key):]
                if relative.endswith("/"):
                    continue  # a folder marker some tools write
                digest.check_name(relative)
                (into / relative).parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(into / relative))
                count += 1
        if count == 0:
            raise FetchError(FETCH_FAILED, f"{shown(uri)}: no object under this prefix")
        return None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise FetchError(FETCH_FAILED, f"{shown(uri)}: {type(error).__name__}: "
                         f"{_without(str(error), uri)}") from None


def _without(text: str, uri: str) -> str:
    """An error's text without the URI's secrets (a library may quote the whole URL)."""
    parts = urllib.parse.urlsplit(uri)
    for secret in (parts.password, parts.username, parts.query):
        if secret:
            text = text.replace(secret, "…")
    return text


def fetch(uri: str, dest: str | os.PathLike[str], expected: str | None, *,
          timeout: float = 60.0) -> Digested:
    """Fetch ``uri`` into ``dest``/artifact, check ``expected`` (None: not checked, the user's
    explicit choice), and write ``dest``/verified.json. FetchError otherwise, with nothing
    left at ``dest``/artifact."""
    if not artifact.fetched(uri):
        raise FetchError(FETCH_FAILED, f"{shown(uri)}: Slipway fetches "
                         f"{models.FETCHED_SCHEMES_SHOWN} only")
    if expected is not None and not digest.DIGEST.fullmatch(expected):
        raise FetchError(FETCH_FAILED, f"{expected!r} is not sha256: and 64 lowercase hex")
    root = pathlib.Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        try:
            single = _s3(uri, partial) if scheme == "s3" else _http(uri, partial, timeout)
        except digest.ManifestError as error:
            raise FetchError(FETCH_FAILED, f"{shown(uri)}: {error}") from None
        except OSError as error:
            raise FetchError(FETCH_FAILED, f"{shown(uri)}: {error.strerror or error}") from None
        # One object is checked as a file, a prefix as a folder (its manifest)
        found = digest_path(single if single is not None else partial)
        if expected is not None and found.digest != expected:
            raise FetchError(DIGEST_MISMATCH, f"{shown(uri)}: expected {expected}, got "
                             f"{found.digest}")
        final = root / ARTIFACT
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        record = {"uri": shown(uri), "digest": found.digest, "verified": expected is not None,
                  "files": found.files,
                  "path": str(final / single.name) if single is not None else str(final),
                  "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return found
    finally:
        shutil.rmtree(partial, ignore_errors=True)
