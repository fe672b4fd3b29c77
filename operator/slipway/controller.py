"""One reconcile of a ModelDeployment: parse, render, apply the children, compute the status.

Kept apart from kopf so that the handlers stay thin and the decisions stay readable: this module
returns what should be written (a status patch) and said (Events); the handlers post them.
A spec that will not get better (invalid, or a child name taken by someone else) ends in a
condition and one Warning event, never in a retry loop; an API hiccup is raised for a retry.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any

from kubernetes.client.rest import ApiException

from slipway import conditions, kube, render, rollout, validation

_locks: collections.defaultdict[tuple[str, str], threading.Lock] = collections.defaultdict(
    threading.Lock)


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[Event] = dataclasses.field(default_factory=list)
    retry_after: float | None = None
    retry_reason: str = ""


class Retry(Exception):
    """A transient failure: the API was not reachable or answered 5xx/409/429."""


def lock_for(namespace: str, name: str) -> threading.Lock:
    return _locks[(namespace, name)]


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning ``old`` into ``new``, or None when nothing changed."""
    patch = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


def _failed_status(old: dict[str, Any], generation: int | None, reason: str, message: str,
                   phase: str) -> dict[str, Any]:
    status = dict(old)
    conds = old.get("conditions") or []
    conds = conditions.set_condition(conds, conditions.READY, False, reason, message,
                                     generation=generation)
    conds = conditions.set_condition(conds, conditions.RECONCILING, False, reason,
                                     "nothing to do until the spec changes", generation=generation)
    conds = conditions.set_condition(conds, conditions.STALLED, True, reason, message,
                                     generation=generation)
    status.update({"phase": phase, "observedGeneration": generation, "conditions": conds})
    return status


def _stall_event(old: dict[str, Any], generation: int | None, reason: str,
                 message: str) -> list[Event]:
    """One Warning per generation and cause: a resync must not flood the Events."""
    stalled = conditions.get(old.get("conditions"), conditions.STALLED)
    if stalled and stalled.get("status") == "True" and stalled.get("reason") == reason and \
            stalled.get("observedGeneration") == generation and stalled.get("message") == message:
        return []
    return [Event("Warning", reason, message)]


def rollout_status(old: dict[str, Any], generation: int | None, revision: str,
                   state: rollout.RolloutStatus) -> dict[str, Any]:
    """Status of the first loop: Progressing until the Deployment is rolled out, then Ready."""
    status = dict(old)
    conds = old.get("conditions") or []
    conds = conditions.set_condition(conds, conditions.STALLED, False, state.reason,
                                     "", generation=generation) \
        if state.state != "Failed" else conds
    if state.state == "Complete":
        phase = "Ready"
        conds = conditions.set_condition(conds, conditions.READY, True, state.reason,
                                         state.message, generation=generation)
        conds = conditions.set_condition(conds, conditions.RECONCILING, False, state.reason,
                                         state.message, generation=generation)
    elif state.state == "Failed":
        phase = "Failed"
        conds = conditions.set_condition(conds, conditions.READY, False, state.reason,
                                         state.message, generation=generation)
        conds = conditions.set_condition(conds, conditions.RECONCILING, False, state.reason,
                                         state.message, generation=generation)
        conds = conditions.set_condition(conds, conditions.STALLED, True, state.reason,
                                         state.message, generation=generation)
    else:
        phase = "Progressing"
        conds = conditions.set_condition(conds, conditions.READY, False, state.reason,
                                         state.message, generation=generation)
        conds = conditions.set_condition(conds, conditions.RECONCILING, True, state.reason,
                                         state.message, generation=generation)
    status.update({
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conds,
        "desiredRevision": revision,
        "currentRevision": revision if state.state == "Complete" else old.get("currentRevision"),
        "readyReplicas": state.ready_replicas,
        "replicas": state.replicas,
    })
    return {k: v for k, v in status.items() if v is not None}


def _is_transient(error: ApiException) -> bool:
    return error.status in (0, 409, 429) or (error.status or 0) >= 500


def reconcile(body: dict[str, Any]) -> Outcome:
    """Bring the children of one ModelDeployment in line with its spec."""
    meta = render.Meta.from_body(body)
    old = dict(body.get("status") or {})
    generation = meta.generation
    try:
        spec = validation.parse_spec(body.get("spec"))
    except validation.SpecError as error:
        message = "invalid spec: " + "; ".join(str(e) for e in error.errors)
        return Outcome(
            _failed_status(old, generation, conditions.INVALID_SPEC, message[:4000], "Invalid"),
            _stall_event(old, generation, conditions.INVALID_SPEC, message[:1000]),
        )

    rendered = render.render(spec, meta)
    events: list[Event] = []
    try:
        deployment = kube.apply_deployment(rendered.deployment)
        service = kube.apply_service(rendered.service)
    except kube.ChildConflict as error:
        message = str(error)
        return Outcome(
            _failed_status(old, generation, conditions.CHILD_CONFLICT, message, "Failed"),
            _stall_event(old, generation, conditions.CHILD_CONFLICT, message),
        )
    except ApiException as error:
        if _is_transient(error):
            raise Retry(f"API error {error.status}: {error.reason}") from error
        # 4xx for a rendered object: the API server rejects what this spec renders to.
        message = f"the API server rejected a child: {error.status} {error.reason}: " \
                  f"{(error.body or '')[:800]}"
        return Outcome(
            _failed_status(old, generation, conditions.APPLY_FAILED, message, "Failed"),
            _stall_event(old, generation, conditions.APPLY_FAILED, message),
        )
    for result in (deployment, service):
        if result.action != "unchanged":
            events.append(Event("Normal", result.action.capitalize(),
                                f"{result.action} {result.kind} {result.name} "
                                f"(revision {rendered.revision})"))
    state = rollout.deployment_rollout_status(deployment.live)
    status = rollout_status(old, generation, rendered.revision, state)
    if state.state == "Complete" and old.get("phase") != "Ready":
        events.append(Event("Normal", state.reason, state.message))
    if state.state == "Failed" and old.get("phase") != "Failed":
        events.append(Event("Warning", state.reason, state.message))
    return Outcome(status, events)
