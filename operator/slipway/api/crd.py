"""Generate the ModelDeployment CRD from the pydantic models.

The API server only enforces what the CRD's structural schema says, and prunes every field the
schema does not declare. Deriving the schema from the same models the operator parses with keeps
the two from drifting: ``slipway crd`` writes ``crds/modeldeployments.slipway.dev.yaml`` and a test
fails when the committed file differs.

Pydantic emits JSON Schema (``$ref``, ``anyOf`` with ``null``); Kubernetes wants a structural
OpenAPI v3 subset (everything inlined, ``nullable``, no ``title``/``default``/``propertyNames``).
This module converts one into the other and refuses a string, list or map without a bound, since
unbounded ones blow the CEL cost budget.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from slipway.api import models

HEADER = "# Generated from operator/slipway/api/models.py by `slipway crd`. Do not edit by hand.\n"

# Keys of JSON Schema that structural OpenAPI v3 either forbids or that we keep out of the CRD:
# defaults are applied by the operator (pydantic) and documented, so the CRD has one source.
_DROP = {"title", "default", "propertyNames", "examples", "$defs"}

NAME_RULE = models.cel(
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "metadata.name must be a DNS-1035 label (at most 63 characters: lowercase letters, digits "
    "and '-', starting with a letter), because it names the Deployment and the Service",
)


class UnboundedFieldError(ValueError):
    """A string, list or map in the schema has no upper bound."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        merged = _resolve(all_of[0], defs)
        return {**merged, **{k: v for k, v in node.items() if k != "allOf"}}
    return node


def to_structural(node: dict[str, Any], defs: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Convert one pydantic JSON Schema node (and its children) into structural OpenAPI v3."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}

    any_of = node.get("anyOf")
    if any_of is not None:
        branches = [b for b in any_of if b.get("type") != "null"]
        nullable = len(branches) != len(any_of)
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if node.get("x-kubernetes-int-or-string") or _is_int_or_string(branches):
            out = {"x-kubernetes-int-or-string": True}
            for key in ("description", "x-kubernetes-validations"):
                if key in outer:
                    out[key] = outer[key]
        elif len(branches) == 1:
            merged = {**_resolve(branches[0], defs), **outer}
            out = to_structural(merged, defs, path)
        else:
            raise ValueError(f"{path or '.'}: unions other than X | None are not supported")
        if nullable:
            out["nullable"] = True
        return _ordered(out)

    if node.get("x-kubernetes-preserve-unknown-fields") or node == {} or (
        set(node) <= {"description", "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields"}
    ):
        out = {k: v for k, v in node.items() if k in ("description", "x-kubernetes-validations")}
        if node.get("type") == "object":
            out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
        return _ordered(out)

    for key, value in node.items():
        if key in _DROP or key in ("properties", "items", "additionalProperties", "required",
                                   "patternProperties"):
            continue
        out[key] = value

    kind = node.get("type")
    if kind == "object":
        if "properties" in node:
            out["properties"] = {
                name: to_structural(child, defs, f"{path}.{name}")
                for name, child in node["properties"].items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        # Pydantic puts constrained map keys in patternProperties, which CRDs forbid; the key
        # rule stays with the models (validate and the operator still check it).
        pattern_props = node.get("patternProperties")
        if pattern_props and not isinstance(extra, dict):
            (extra,) = pattern_props.values()
        if isinstance(extra, dict):
            out["additionalProperties"] = to_structural(extra, defs, f"{path}[*]")
            if "maxProperties" not in out:
                raise UnboundedFieldError(f"{path}: a map needs maxProperties")
        elif extra is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = to_structural(node["items"], defs, f"{path}[*]")
        if "maxItems" not in out:
            raise UnboundedFieldError(f"{path}: a list needs maxItems")
    elif kind == "string":
        if "maxLength" not in out and "enum" not in out:
            raise UnboundedFieldError(f"{path}: a string needs maxLength")
    return _ordered(out)


_ORDER = [
    "description", "type", "format", "nullable", "enum", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "minItems", "maxItems", "maxProperties", "required", "properties",
    "additionalProperties", "items", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
]


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    rank = {key: index for index, key in enumerate(_ORDER)}
    return {key: node[key] for key in sorted(node, key=lambda k: (rank.get(k, len(rank)), k))}


def _is_int_or_string(branches: list[dict[str, Any]]) -> bool:
    return sorted(b.get("type", "") for b in branches) == ["integer", "string"]


def _schema_of(model: type[models.Base]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return to_structural(raw, raw.get("$defs", {}))


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.model.version"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string",
         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Serving", "type": "string", "jsonPath": ".status.currentRevision",
         "description": "Revision whose pods serve traffic"},
        {"name": "Verified", "type": "string", "jsonPath": ".status.verifiedPods",
         "description": "Pods of the serving revision that passed their own smoke tests, of "
                        "all its pods"},
        {"name": "Reason", "type": "string", "priority": 1,
         "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a plain dict, deterministic."""
    spec_schema = _schema_of(models.ModelDeploymentSpec)
    # A new object reads as not yet observed (generation 1, observed 0) until the operator
    # writes its first status: without it, kstatus (Flux) calls an object with no status
    # Current, before anything was rolled out. The API server applies the default whenever it
    # reads the object, and the status subresource keeps writes to it from anyone else.
    status_schema = {**_schema_of(models.ModelDeploymentStatus),
                     "default": {"observedGeneration": 0, "phase": "Pending"}}
    root = {
        "description": "A model release: artifact, runtime, request/response contract, probes, "
        "smoke tests, and the verified revision to roll back to.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [NAME_RULE],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/name": "slipway", "app.kubernetes.io/part-of": "slipway"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["slipway"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def render_crd_yaml() -> str:
    return HEADER + dump_yaml(build_crd())
