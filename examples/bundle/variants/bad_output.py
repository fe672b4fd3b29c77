"""Broken variant (d): right labels, broken contract: every probability is sent as a string.

It starts, is healthy and ready, and answers 200 with the right labels, so a smoke test that
only checks the status and the labels passes; the published output schema (``probability``
is a number) is what catches it.
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


def init() -> None:
    score.init()


def run(payload: Any) -> dict[str, Any]:
    answer = score.run(payload)
    for prediction in answer["predictions"]:
        prediction["probability"] = f"{prediction['probability']:.3f}"
    return answer
