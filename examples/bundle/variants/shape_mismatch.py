"""Broken variant (c): the packaged model takes 3 features, the input schema promises 4.

Requests that satisfy the schema reach a model that cannot score them: 500 with a
"feature count mismatch" message (the deployment's fault, not the caller's).
"""
from __future__ import annotations

import os
from typing import Any

import softmax_model

_model: softmax_model.SoftmaxModel | None = None


def init() -> None:
    global _model
    here = os.path.dirname(os.path.abspath(__file__))
    _model = softmax_model.load_model(os.path.join(here, "model-3-features.json"))


def run(payload: Any) -> dict[str, Any]:
    if _model is None:
        raise softmax_model.ModelError("init() has not loaded a model")
    rows = softmax_model.validate_request(payload, softmax_model.schema_feature_count())
    return {"predictions": _model.predict(rows), "model": softmax_model.model_identity(_model)}
