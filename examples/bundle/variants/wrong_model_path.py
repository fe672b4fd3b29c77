"""Broken variant (b): the entry script looks for the model where it is not.

A hard-coded "models/" (plural) instead of the bundle's "model/" and MODEL_PATH ignored:
init() only records the path (lazy loading), so the server starts and reports healthy and
ready, and every /score answers 500 with a message naming the missing path.
"""
from __future__ import annotations

import os
from typing import Any

import softmax_model

_path = ""
_model: softmax_model.SoftmaxModel | None = None


def init() -> None:
    global _path
    _path = os.path.join(softmax_model.BUNDLE_DIR, "models", "model.json")


def run(payload: Any) -> dict[str, Any]:
    global _model
    if _model is None:
        _model = softmax_model.load_model(_path)  # raises ModelError naming _path
    rows = softmax_model.validate_request(payload, softmax_model.schema_feature_count())
    return {"predictions": _model.predict(rows), "model": softmax_model.model_identity(_model)}
