"""Pure-Python multinomial logistic regression, shared by score.py and its broken variants.

Why it exists: the reference model has to be a *real* model (weights in a file, real maths)
while running with nothing but the standard library, so scoring needs no numpy.
Errors carry an ``http_status`` so server.py can map them without knowing this module:
400 for requests that break the published input schema, 500 for faults of the deployment.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

BUNDLE_DIR = os.path.dirname(os.path.abspath(__file__))
INPUT_SCHEMA_PATH = os.path.join(BUNDLE_DIR, "schemas", "input.schema.json")


class InvalidInput(ValueError):
    """The request does not match the bundle's input schema: the client's fault."""

    http_status = 400


class ModelError(RuntimeError):
    """The deployment cannot score a valid request (missing model, shape mismatch...)."""

    http_status = 500


class SoftmaxModel:
    """Weights of a softmax regression: one coefficient row and intercept per class."""

    def __init__(self, spec: dict[str, Any], path: str) -> None:
        self.path = path
        self.name: str = spec.get("name", "model")
        self.version: str = str(spec.get("version", "0"))
        self.features: list[str] = list(spec["features"])
        self.classes: list[str] = list(spec["classes"])
        self.coefficients: list[list[float]] = [list(map(float, r)) for r in spec["coefficients"]]
        self.intercepts: list[float] = list(map(float, spec["intercepts"]))
        # A corrupt weight file should fail at init(), not on the first request.
        if len(self.coefficients) != len(self.classes) or len(self.intercepts) != len(
            self.classes
        ):
            raise ModelError(f"{path}: one coefficient row and intercept per class expected")
        if any(len(row) != len(self.features) for row in self.coefficients):
            raise ModelError(f"{path}: every coefficient row needs {len(self.features)} values")

    @property
    def n_features(self) -> int:
        return len(self.features)

    def predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            if len(row) != self.n_features:
                raise ModelError(
                    f"feature count mismatch: model {self.path} expects {self.n_features} "
                    f"features per instance ({', '.join(self.features)}), got {len(row)}"
                )
            logits = [
                sum(w * x for w, x in zip(coef, row)) + b
                for coef, b in zip(self.coefficients, self.intercepts)
            ]
            top = max(logits)  # subtract the max so exp() cannot overflow
            exps = [math.exp(z - top) for z in logits]
            total = sum(exps)
            best = max(range(len(exps)), key=exps.__getitem__)
            out.append({"label": self.classes[best], "probability": round(exps[best] / total, 6)})
        return out


def load_model(path: str) -> SoftmaxModel:
    """Read a model file; a missing or unreadable file is a ModelError naming the path."""
    try:
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from None
    try:
        return SoftmaxModel(spec, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"malformed model file {path}: {exc!r}") from None


def schema_feature_count(schema_path: str = INPUT_SCHEMA_PATH) -> int:
    """The number of features the published input schema promises (items.minItems)."""
    with open(schema_path, encoding="utf-8") as fh:
        schema = json.load(fh)
    return int(schema["properties"]["instances"]["items"]["minItems"])


def validate_request(payload: Any, n_features: int, max_instances: int = 1000) -> list[list[float]]:
    """Check a request against the input schema by hand (stdlib only) and return the rows."""
    if not isinstance(payload, dict):
        raise InvalidInput("request body must be a JSON object with an 'instances' array")
    extra = sorted(set(payload) - {"instances"})
    if extra:
        raise InvalidInput(f"unexpected field(s): {', '.join(extra)}")
    rows = payload.get("instances")
    if not isinstance(rows, list):
        raise InvalidInput("'instances' is required and must be an array of arrays")
    if not 1 <= len(rows) <= max_instances:
        raise InvalidInput(f"'instances' must hold 1 to {max_instances} items, got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_features:
            raise InvalidInput(f"instances[{i}] must be an array of {n_features} numbers")
        for j, value in enumerate(row):
            # bool is an int subclass in Python but not a JSON Schema number
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"instances[{i}][{j}] must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidInput(f"instances[{i}][{j}] must be finite")
    return [[float(v) for v in row] for row in rows]


def model_identity(model: SoftmaxModel | None) -> dict[str, str]:
    """Name and version to echo: the operator's env wins over what the model file says."""
    ident = {
        "name": os.environ.get("MODEL_NAME") or (model.name if model else "unknown"),
        "version": os.environ.get("MODEL_VERSION") or (model.version if model else "unknown"),
    }
    if os.environ.get("MODEL_URI"):
        ident["uri"] = os.environ["MODEL_URI"]
    return ident
