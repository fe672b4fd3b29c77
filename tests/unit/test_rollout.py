"""Rollout completion follows kubectl's rules: observed generation, deadline, replica counts."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.logic import rollout


def deployment(*, generation: int = 2, observed: int = 2, replicas: int = 2, updated: int = 2,
               total: int = 2, available: int = 2, conditions: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    return {
        "metadata": {"name": "iris", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated,
                   "replicas": total, "availableReplicas": available, "readyReplicas": available,
                   "conditions": conditions or []},
    }


DEADLINE = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "iris-1" has timed out progressing.'}]

CASES = [
    ("complete", deployment(), "Complete", "RolloutComplete"),
    ("generation-not-observed", deployment(generation=3, observed=2), "Progressing",
     "Progressing"),
    ("deadline-exceeded-is-final", deployment(updated=1, available=1, conditions=DEADLINE),
     "Failed", "ProgressDeadlineExceeded"),
    ("deadline-checked-after-observed-generation",
     deployment(generation=3, observed=2, conditions=DEADLINE), "Progressing", "Progressing"),
    ("too-few-updated", deployment(updated=1), "Progressing", "Progressing"),
    ("old-replicas-terminating", deployment(total=3), "Progressing", "Progressing"),
    ("updated-not-available", deployment(available=1), "Progressing", "Progressing"),
    ("zero-replicas-is-complete", deployment(replicas=0, updated=0, total=0, available=0),
     "Complete", "RolloutComplete"),
    ("no-status-yet", {"metadata": {"name": "iris", "generation": 1}, "spec": {}}, "Progressing",
     "Progressing"),
]


@pytest.mark.parametrize(("body", "state", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_deployment_rollout_status(body: dict[str, Any], state: str, reason: str) -> None:
    result = rollout.deployment_rollout_status(body)
    assert (result.state, result.reason) == (state, reason)
    assert result.message


def test_deadline_message_keeps_the_controllers_words() -> None:
    result = rollout.deployment_rollout_status(deployment(updated=1, conditions=DEADLINE))
    assert "timed out progressing" in result.message
