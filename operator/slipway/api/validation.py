"""Turn raw ModelDeployment documents into a parsed spec or a list of field errors.

One function decides what a valid ModelDeployment is, for ``slipway validate`` (offline, before a
merge), for the operator (which reports an ``InvalidSpec`` condition instead of retrying), and for
the tests. Every error names the field path the way kubectl does (``spec.smokeTests[1].path``), so
a user finds the line to fix.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pydantic

from slipway.api import jsonschemas, models

NAME_PATTERN = re.compile(models.DNS_1035_LABEL)


@dataclasses.dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A ModelDeployment that will not get better by retrying."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "(root)"


def _pydantic_errors(error: pydantic.ValidationError, prefix: str) -> list[FieldError]:
    out = []
    for item in error.errors(include_url=False):
        # Pydantic adds the branch tried ("function-after[...]") for some validators; drop it.
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and "[" in p))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        out.append(FieldError(field_path(prefix, loc), message))
    return out


# CPU seconds for checking every smoke-test body of a spec against spec.schema.input.
SPEC_CHECK_SECONDS = 1.0


def semantic_errors(spec: models.ModelDeploymentSpec) -> list[FieldError]:
    """Rules that span fields: smoke-test bodies against the input contract.

    A test that expects success from the scoring path must send a valid request; a test that
    expects a 4xx may send a malformed one on purpose (a negative test).
    """
    errors: list[FieldError] = []
    schema = jsonschemas.compiled(spec.schema_.input)  # checked when the spec was parsed
    budget = jsonschemas.Budget(SPEC_CHECK_SECONDS)
    for index, test in enumerate(spec.smoke_tests):
        if not spec.targets_scoring(test) or test.expect.status >= 400:
            continue
        where = f"spec.smokeTests[{index}].body"
        if test.body is None:
            errors.append(FieldError(
                where, "a request to the scoring path needs a body that satisfies spec.schema.input"))
            continue
        try:
            problems = schema.problems(test.body, budget)
        except jsonschemas.BudgetExceeded:
            errors.append(FieldError(
                where, f"could not be checked against spec.schema.input within "
                f"{SPEC_CHECK_SECONDS:g} s of CPU (for all bodies); simplify the schema"))
            break
        for problem in problems:
            errors.append(FieldError(field_path(where, problem.path),
                                     f"does not satisfy spec.schema.input: {problem.message}"))
    for index, test in enumerate(spec.smoke_tests):
        if test.method in ("GET", "HEAD") and test.body is not None:
            errors.append(FieldError(f"spec.smokeTests[{index}].body",
                                     f"a {test.method} request cannot carry a body"))
    return errors


def parse_spec(raw: Any) -> models.ModelDeploymentSpec:
    """Parse and check a ``spec``; raise SpecError with every problem found."""
    if not isinstance(raw, dict):
        raise SpecError([FieldError("spec", "must be an object")])
    too_big = jsonschemas.json_value_problem(raw, max_bytes=models.MAX_SPEC_BYTES,
                                             max_depth=64)
    if too_big is not None:
        raise SpecError([FieldError("spec", too_big)])
    try:
        spec = models.ModelDeploymentSpec.model_validate(raw)
    except pydantic.ValidationError as error:
        raise SpecError(_pydantic_errors(error, "spec")) from None
    errors = semantic_errors(spec)
    if errors:
        raise SpecError(errors)
    return spec


def check_metadata(doc: dict[str, Any]) -> list[FieldError]:
    errors = []
    if doc.get("apiVersion") != models.API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {models.API_VERSION}, "
                                 f"got {doc.get('apiVersion')!r}"))
    if doc.get("kind") != models.KIND:
        errors.append(FieldError("kind", f"must be {models.KIND}, got {doc.get('kind')!r}"))
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "required field is missing"))
    elif len(name) > 63 or not NAME_PATTERN.match(name):
        errors.append(FieldError(
            "metadata.name", "must be a DNS-1035 label (at most 63 characters: lowercase letters, "
            "digits and '-', starting with a letter), because it names the Deployment and Service"))
    return errors


def parse_document(doc: Any) -> models.ModelDeploymentSpec:
    """Check a whole ModelDeployment document (as ``kubectl apply`` would send it)."""
    if not isinstance(doc, dict):
        raise SpecError([FieldError("(root)", "a ModelDeployment must be a YAML mapping")])
    errors = check_metadata(doc)
    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as error:
        errors.extend(error.errors)
        raise SpecError(errors) from None
    if errors:
        raise SpecError(errors)
    return spec
