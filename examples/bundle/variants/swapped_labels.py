"""Broken variant (e): a model trained on shifted labels: versicolor and virginica swapped.

Healthy, ready, 200 answers that satisfy the output schema, and the right label for setosa:
only a comparison with the revision that serves now (or an expectation that pins those very
labels) catches it.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

# The reference entry script, under a name of its own ("score" is this variant, as loaded).
_SPEC = importlib.util.spec_from_file_location(
    "reference_score", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "score.py"))
assert _SPEC is not None and _SPEC.loader is not None
score = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(score)

SWAP = {"versicolor": "virginica", "virginica": "versicolor"}


def init() -> None:
    score.init()


def run(payload: Any) -> dict[str, Any]:
    answer = score.run(payload)
    for prediction in answer["predictions"]:
        prediction["label"] = SWAP.get(prediction["label"], prediction["label"])
    return answer
