"""The node agent's image table: image references mapped to local commands.

Why it exists: there is no container runtime in the development sandbox, so the kubelet
stand-in "pulls" an image by looking it up in a YAML table (examples/images.yaml documents
the format) and "runs" it as a local process. Everything here is pure (no process, no API)
so the Kubernetes command/args override rules and $(VAR) expansion can be unit-tested.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import yaml


class ImageTableError(ValueError):
    """The table file is malformed."""


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One resolved image: placeholders already substituted."""

    ref: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # ordered (name, value) pairs
    working_dir: str = ""

    @property
    def image_id(self) -> str:
        """A stable digest of the entry, shown as containerStatuses[].imageID."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"slipway-local://{self.ref}@sha256:{hashlib.sha256(blob).hexdigest()}"


def _substitute(value: Any, placeholders: Mapping[str, str], where: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ImageTableError(f"{where}: expected a string, got {value!r}")
    text = str(value)
    try:
        # str.format_map with a plain dict: unknown placeholders are an error worth reporting
        return text.format_map(dict(placeholders))
    except (KeyError, IndexError, ValueError) as exc:
        raise ImageTableError(f"{where}: bad placeholder in {text!r}: {exc}") from None


def _argv(raw: Any, placeholders: Mapping[str, str], where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ImageTableError(f"{where}: expected a list of strings")
    return tuple(_substitute(v, placeholders, f"{where}[{i}]") for i, v in enumerate(raw))


def parse_table(
    doc: Any, placeholders: Mapping[str, str], default_workdir: str = ""
) -> dict[str, ImageEntry]:
    """Turn the YAML document into entries; raises ImageTableError with the offending key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise ImageTableError("the image table needs a top-level 'images' mapping")
    entries: dict[str, ImageEntry] = {}
    for ref, spec in doc["images"].items():
        where = f"images[{ref!r}]"
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ImageTableError(f"{where}: expected a mapping")
        unknown = set(spec) - {"entrypoint", "cmd", "env", "workingDir"}
        if unknown:
            raise ImageTableError(f"{where}: unknown field(s) {sorted(unknown)}")
        env = spec.get("env") or {}
        if not isinstance(env, dict):
            raise ImageTableError(f"{where}.env: expected a mapping")
        entries[str(ref)] = ImageEntry(
            ref=str(ref),
            entrypoint=_argv(spec.get("entrypoint"), placeholders, f"{where}.entrypoint"),
            cmd=_argv(spec.get("cmd"), placeholders, f"{where}.cmd"),
            env=tuple(
                (str(k), _substitute(v, placeholders, f"{where}.env.{k}")) for k, v in env.items()
            ),
            working_dir=_substitute(
                spec.get("workingDir") or default_workdir, placeholders, f"{where}.workingDir"
            ),
        )
    return entries


class ImageTable:
    """The table file, re-read when it changes so a failed "pull" can succeed on retry."""

    def __init__(self, path: str | os.PathLike[str], python: str = sys.executable) -> None:
        self.path = pathlib.Path(path).resolve()
        self.python = python
        self._mtime = -1.0
        self._entries: dict[str, ImageEntry] = {}
        self.reload_if_changed()

    def placeholders(self) -> dict[str, str]:
        examples = str(self.path.parent)
        from slipway_dev import tools  # the cache's layout; nothing is installed here

        return {
            "examples": examples,
            "bundle": os.path.join(examples, "bundle"),
            "python": self.python,
            "mlserver": str(tools.mlserver_home() / "bin"),
        }

    def reload_if_changed(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        with open(self.path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
        self._entries = parse_table(doc, self.placeholders(), str(self.path.parent))
        self._mtime = mtime

    def lookup(self, ref: str) -> ImageEntry | None:
        return lookup(self._entries, ref)


def lookup(entries: Mapping[str, ImageEntry], ref: str) -> ImageEntry | None:
    """Exact match, or a reference without tag/digest matching the key with ':latest'."""
    if ref in entries:
        return entries[ref]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        return entries.get(f"{ref}:latest")
    return None


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined vars replaced, undefined kept, $$ -> $."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_RE.sub(repl, text)


def resolve_argv(
    entry: ImageEntry,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    env: Mapping[str, str],
) -> list[str]:
    """The process argv per Kubernetes rules: command replaces entrypoint (and drops the
    image's cmd), args replace cmd; $(VAR) references in command/args are expanded."""
    if command:
        argv = [*(expand(c, env) for c in command), *(expand(a, env) for a in args or ())]
    elif args:
        argv = [*entry.entrypoint, *(expand(a, env) for a in args)]
    else:
        argv = [*entry.entrypoint, *entry.cmd]
    if not argv:
        raise ImageTableError(f"image {entry.ref} has no entrypoint/cmd and the pod gives none")
    return argv
