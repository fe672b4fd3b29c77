"""Broken variant (a): the entry script needs a package the bundle does not install.

It imports a module absent from requirements.txt, so the server dies at start with a
ModuleNotFoundError traceback and exit code 1 (a CrashLoopBackOff under a Deployment).
"""
from __future__ import annotations

from typing import Any

import slipway_gpu_kernels  # deliberately not installed anywhere: the import fails

import softmax_model


def init() -> None:  # never reached
    slipway_gpu_kernels.warm_up()


def run(payload: Any) -> dict[str, Any]:  # never reached
    raise softmax_model.ModelError("unreachable")
