"""ModelDeployments read from files: the documents of ``slipway validate``/``render``/``smoke``
and ``kubectl slipway diff``, with where each came from, parsed with the operator's own
validation (one line per error, naming the document)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import yaml

from slipway.api import models, validation


class Document:
    """One YAML document of an input file, with where it came from."""

    def __init__(self, source: str, index: int, body: Any) -> None:
        self.source = source
        self.index = index
        self.body = body

    @property
    def name(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("metadata"), dict):
            return str(self.body["metadata"].get("name") or "?")
        return "?"

    @property
    def label(self) -> str:
        return f"{self.source}: {models.KIND}/{self.name} (document {self.index + 1})"

    def parse(self, err: TextIO) -> models.ModelDeploymentSpec | None:
        """The spec, or None with one line per error on ``err``."""
        try:
            return validation.parse_document(self.body)
        except validation.SpecError as error:
            for field_error in error.errors:
                print(f"{self.label}: {field_error}", file=err)
            return None


def read_all(sources: Sequence[str], stdin: TextIO) -> Iterator[Document | str]:
    """Yield documents, or an error line for a file that cannot be read or parsed."""
    for source in sources:
        try:
            text = stdin.read() if source == "-" else pathlib.Path(source).read_text()
        except OSError as error:
            yield f"{source}: cannot read: {error.strerror or error}"
            continue
        name = "<stdin>" if source == "-" else source
        try:
            bodies = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            yield f"{name}:{where}: not valid YAML: {problem}"
            continue
        for index, body in enumerate(bodies):
            if body is not None:
                yield Document(name, index, body)


def is_ours(body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    api_version = str(body.get("apiVersion", ""))
    return api_version.split("/")[0] == models.GROUP or body.get("kind") == models.KIND


def pick_release(filename: str, name: str | None, stdin: TextIO, err: TextIO
                 ) -> tuple[Document, models.ModelDeploymentSpec] | int:
    """The one ModelDeployment of ``filename`` (``name`` picks among several), parsed and
    valid; else an exit code (1, or 2 for several and no name), with the reason on ``err``."""
    found: list[Document] = []
    for item in read_all([filename], stdin):
        if isinstance(item, str):
            print(item, file=err)
            return 1
        if is_ours(item.body):
            found.append(item)
    names = [d.name for d in found]
    if name is not None:
        found = [d for d in found if d.name == name]
        if not found:
            print(f"no {models.KIND} named {name!r} in {filename} "
                  f"(found: {', '.join(names) or 'none'})", file=err)
            return 1
    if not found:
        print(f"no {models.KIND} found in {filename}", file=err)
        return 1
    if len(found) > 1:
        print(f"{filename} holds {len(found)} {models.KIND}s ({', '.join(names)}); "
              "pick one with --name", file=err)
        return 2
    (document,) = found
    spec = document.parse(err)
    return 1 if spec is None else (document, spec)
