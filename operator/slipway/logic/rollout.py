"""Rollout decisions, pure: is a Deployment's rollout complete, still going, or failed?

Follows kubectl's ``rollout status`` rules (and Flagger's ``isDeploymentReady``): the controller
must have observed the current generation first; ``ProgressDeadlineExceeded`` is final; then the
updated, total and available replica counts decide.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

State = Literal["Progressing", "Complete", "Failed"]


@dataclasses.dataclass(frozen=True)
class RolloutStatus:
    state: State
    reason: str
    message: str
    ready_replicas: int = 0
    replicas: int = 0


def deployment_rollout_status(deployment: dict[str, Any]) -> RolloutStatus:
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = meta.get("name", "?")
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0) or 0
    total = status.get("replicas", 0) or 0
    available = status.get("availableReplicas", 0) or 0
    ready = status.get("readyReplicas", 0) or 0

    def out(state: State, reason: str, message: str) -> RolloutStatus:
        return RolloutStatus(state, reason, message, ready_replicas=ready, replicas=desired)

    if (meta.get("generation") or 0) > (status.get("observedGeneration") or 0):
        return out("Progressing", "Progressing",
                   f"waiting for the Deployment {name} spec update to be observed")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and \
                condition.get("reason") == "ProgressDeadlineExceeded":
            return out("Failed", "ProgressDeadlineExceeded",
                       f"Deployment {name} exceeded its progress deadline: "
                       f"{condition.get('message', '')}".rstrip(": "))
    if updated < desired:
        return out("Progressing", "Progressing",
                   f"{updated} of {desired} updated replicas are available"
                   if updated else f"waiting for {desired} new replicas to be created")
    if total > updated:
        return out("Progressing", "Progressing",
                   f"{total - updated} old replicas are pending termination")
    if available < updated:
        return out("Progressing", "Progressing",
                   f"{available} of {updated} updated replicas are available")
    return out("Complete", "RolloutComplete",
               f"Deployment {name}: {available} of {desired} replicas available")
