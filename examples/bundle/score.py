"""Entry script of the reference model, in the AzureML style: init() loads, run() scores.

Why it exists: Slipway deploys bundles shaped like AzureML/"score.py" deployments, so the
reference model follows that contract; server.py is the generic HTTP host around it.
"""
from __future__ import annotations

import os
from typing import Any

import softmax_model

_model: softmax_model.SoftmaxModel | None = None
_n_features = 0


def init() -> None:
    """Load the weights once, before the server reports ready."""
    global _model, _n_features
    path = os.environ.get("MODEL_PATH") or os.path.join(
        softmax_model.BUNDLE_DIR, "model", "model.json"
    )
    if os.path.isdir(path):  # a fetched folder (an s3:// prefix): its model.json
        path = os.path.join(path, "model.json")
    _model = softmax_model.load_model(path)
    _n_features = softmax_model.schema_feature_count()


def run(payload: Any) -> dict[str, Any]:
    """Score a parsed request body; raises InvalidInput (400) or ModelError (500)."""
    if _model is None:
        raise softmax_model.ModelError("init() has not loaded a model")
    rows = softmax_model.validate_request(payload, _n_features)
    return {
        "predictions": _model.predict(rows),
        "model": softmax_model.model_identity(_model),
    }
