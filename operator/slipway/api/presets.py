"""Serving-protocol presets: what ``spec.runtime.protocol: v2 | v1`` fills in.

- ``v2``, the Open Inference Protocol (MLServer, KServe's Python server, Triton, TorchServe):
  readiness is the model's own ready endpoint ``/v2/models/{name}/ready``, liveness and the
  startup probe ``/v2/health/live``, the scoring path ``/v2/models/{name}/infer``, and the
  contract (``spec.schema``) an inference request and response with named tensors;
- ``v1``, KServe's V1 protocol: readiness ``/v1/models/{name}``, liveness and startup ``/``,
  scoring ``/v1/models/{name}:predict``, ``{"instances": [...]}`` in and
  ``{"predictions": [...]}`` out;
- ``custom`` (the default): nothing, today's behaviour.

``{name}`` is ``spec.model.name``: the server must serve the model under that name. Anything
the spec sets itself wins: a probe written out (or only its ``path`` left out, to keep the
preset's path with timings of one's own), ``runtime.scoringPath``, ``spec.schema``. Pure: raw
spec in, raw spec out (a copy), before the models check anything.
"""

from __future__ import annotations

import copy
from typing import Any

PROTOCOLS = ("custom", "v2", "v1")

# The Open Inference Protocol's tensor datatypes.
V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                "FP16", "FP32", "FP64", "BYTES"]

_V2_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": V2_DATATYPES},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}

V2_SCHEMA: dict[str, Any] = {
    "input": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1,
                       "items": {**_V2_TENSOR, "required": ["name", "shape", "datatype", "data"]}},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}},
        },
    },
    "output": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": ["string", "null"]},
            "id": {"type": ["string", "null"]},
            "parameters": {"type": ["object", "null"]},
            "outputs": {"type": "array", "minItems": 1, "items": _V2_TENSOR},
        },
    },
}

V1_SCHEMA: dict[str, Any] = {
    "input": {
        "type": "object",
        "anyOf": [{"required": ["instances"]}, {"required": ["inputs"]}],
        "properties": {"instances": {"type": "array", "minItems": 1},
                       "inputs": {"type": "array", "minItems": 1}},
    },
    "output": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array"}},
    },
}

# The same timings as the custom defaults (models.Probes): only the paths differ.
_TIMINGS = {
    "readiness": {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
    "liveness": {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
    "startup": {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 120},
}


def paths(protocol: str, name: str) -> dict[str, str]:
    """The preset's paths for a model name: scoring, readiness, liveness, startup."""
    if protocol == "v2":
        return {"scoringPath": f"/v2/models/{name}/infer",
                "readiness": f"/v2/models/{name}/ready",
                "liveness": "/v2/health/live", "startup": "/v2/health/live"}
    if protocol == "v1":
        return {"scoringPath": f"/v1/models/{name}:predict",
                "readiness": f"/v1/models/{name}", "liveness": "/", "startup": "/"}
    return {}


def schema(protocol: str) -> dict[str, Any] | None:
    return copy.deepcopy({"v2": V2_SCHEMA, "v1": V1_SCHEMA}.get(protocol))


def apply(raw: Any) -> Any:
    """The raw spec with the preset of its ``runtime.protocol`` filled in where it sets
    nothing itself; anything malformed is left as it is for the models to report."""
    if not isinstance(raw, dict):
        return raw
    runtime, model = raw.get("runtime"), raw.get("model")
    if not isinstance(runtime, dict) or not isinstance(model, dict):
        return raw
    protocol = runtime.get("protocol")
    name = model.get("name")
    if protocol not in ("v2", "v1") or not isinstance(name, str):
        return raw
    out = copy.copy(raw)
    wanted = paths(protocol, name)
    out["runtime"] = {**runtime}
    if out["runtime"].get("scoringPath") is None:
        out["runtime"]["scoringPath"] = wanted["scoringPath"]
    probes = raw.get("probes")
    if probes is None or isinstance(probes, dict):
        filled = dict(probes or {})
        for kind in ("readiness", "liveness", "startup"):
            probe = filled.get(kind)
            if probe is None:
                filled[kind] = {"path": wanted[kind], **_TIMINGS[kind]}
            elif isinstance(probe, dict) and probe.get("path") is None:
                set_ = {key: value for key, value in probe.items() if value is not None}
                filled[kind] = {**_TIMINGS[kind], **set_, "path": wanted[kind]}
        out["probes"] = filled
    if out.get("schema") is None:
        out["schema"] = schema(protocol)
    return out
