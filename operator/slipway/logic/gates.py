"""The readiness gate of every pod Slipway renders: no traffic before that pod passed its tests.

Pure. Each rendered pod template carries the readiness gate ``slipway.dev/verified``, so the
kubelet keeps the pod out of Ready (out of the Service, not available to the Deployment) until
the operator writes that condition True, which it does only after the pod answered every smoke
test sent to it directly. This module reads the pods and says, for each, what is due:

- ``test``: its containers are ready and the gate is not True (a new pod, a scale-up, a pod whose
  container restarted): send it the smoke tests;
- ``close``: the gate is True but a container is no longer the one that was tested (it stopped,
  or started after the gate opened): write the gate False before the kubelet makes the restarted
  container Ready again;
- ``verified``: the gate is True for this generation's tests; ``earlier``: True for an earlier
  generation's (the same pod template, other smoke tests: it keeps serving, and the release check
  sends it the new tests);
- ``failed``: the gate is False because this pod failed this generation's tests (or could not be
  tested, however often tried) and has not restarted since: it stays out of traffic and is not
  tested again until it restarts or the spec changes;
- ``waiting``: not ready to test yet (starting, or being deleted).

The condition's message names the generation whose tests the pod passed and the pod's container
restarts when it passed (``generation 7, restarts 0: …``): that is how a later generation knows
the pod was tested with other tests, and how a restart is seen even when it came and went
between two looks.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Any, Literal

from slipway.logic import conditions, render, targets

GATE = render.GATE
PASSED = "SmokeTestsPassed"
FAILED = "SmokeTestsFailed"
DISAGREE = "PredictionsDisagree"
NOT_RUN = "SmokeTestsNotRun"
RESTARTED = "ContainerRestarted"

State = Literal["test", "close", "verified", "earlier", "failed", "waiting"]

_GENERATION = re.compile(r"^generation ([0-9]{1,18}), restarts ([0-9]{1,9}): ")


def is_gated(pod: dict[str, Any]) -> bool:
    return any(gate.get("conditionType") == GATE
               for gate in (pod.get("spec") or {}).get("readinessGates") or [])


def gate_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    return conditions.get((pod.get("status") or {}).get("conditions"), GATE)


def gate_generation(condition: dict[str, Any] | None) -> int | None:
    """The generation whose smoke tests opened the gate (None: not said)."""
    match = _GENERATION.match(str((condition or {}).get("message") or ""))
    return int(match.group(1)) if match else None


def gate_restarts(condition: dict[str, Any] | None) -> int | None:
    """The pod's container restarts when the gate opened (None: not said)."""
    match = _GENERATION.match(str((condition or {}).get("message") or ""))
    return int(match.group(2)) if match else None


def gate_detail(condition: dict[str, Any] | None) -> str:
    """The gate's message without its "generation N, restarts M: " prefix."""
    message = str((condition or {}).get("message") or "")
    match = _GENERATION.match(message)
    return message[match.end():] if match else message


def restarts(pod: dict[str, Any]) -> int:
    return sum(int(status.get("restartCount") or 0)
               for status in (pod.get("status") or {}).get("containerStatuses") or [])


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _containers_ready(pod: dict[str, Any]) -> bool:
    cond = conditions.get((pod.get("status") or {}).get("conditions"), "ContainersReady")
    return bool(cond and cond.get("status") == "True")


def _restarted_since(pod: dict[str, Any], since: float | None) -> bool:
    """A container is not running, or started after ``since`` (the gate opened before it)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return True
    for status in statuses:
        running = (status.get("state") or {}).get("running")
        if running is None:
            return True
        started = _time(running.get("startedAt"))
        if since is not None and started is not None and started > since:
            return True
    return False


def state(pod: dict[str, Any], generation: int) -> State:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or not (pod.get("status") or {}).get("podIP"):
        return "waiting"
    gate = gate_condition(pod)
    if gate is not None and gate.get("status") == "True":
        recorded = gate_restarts(gate)
        if _restarted_since(pod, _time(gate.get("lastTransitionTime"))) or \
                (recorded is not None and restarts(pod) != recorded):
            return "close"
        return "verified" if gate_generation(gate) == generation else "earlier"
    if gate is not None and gate.get("reason") in (FAILED, DISAGREE, NOT_RUN) \
            and gate_generation(gate) == generation and gate_restarts(gate) == restarts(pod):
        return "failed"
    return "test" if _containers_ready(pod) else "waiting"


@dataclasses.dataclass(frozen=True)
class Census:
    """The pods of one revision, by what is due for each (names sorted)."""

    revision: str
    by_state: dict[str, list[dict[str, Any]]]

    def names(self, which: State) -> list[str]:
        return [pod["metadata"]["name"] for pod in self.by_state.get(which, [])]

    def pods(self, which: State) -> list[dict[str, Any]]:
        return list(self.by_state.get(which, []))

    @property
    def total(self) -> int:
        return sum(len(pods) for pods in self.by_state.values())

    @property
    def open(self) -> int:
        """Pods whose gate is open (True), for this generation's tests or an earlier one's."""
        return len(self.by_state.get("verified", [])) + len(self.by_state.get("earlier", []))


def census(pods: list[dict[str, Any]], meta: render.Meta, revision: str,
           generation: int) -> Census:
    """Gated pods of ``revision`` that are this ModelDeployment's own (see targets.is_our_pod)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(render.LABEL_REVISION) != revision or not is_gated(pod) \
                or not targets.is_our_pod(pod, meta):
            continue
        out.setdefault(state(pod, generation), []).append(pod)
    return Census(revision, out)


def condition(open_: bool, reason: str, message: str,
              previous: dict[str, Any] | None, now: str) -> dict[str, Any]:
    """The gate condition to write; its transition time moves only when its status does."""
    status = "True" if open_ else "False"
    since = previous.get("lastTransitionTime") if previous and \
        previous.get("status") == status and previous.get("lastTransitionTime") else now
    return {"type": GATE, "status": status, "reason": reason, "message": message[:1024],
            "lastProbeTime": None, "lastTransitionTime": since}


def verdict_message(generation: int, pod: dict[str, Any], detail: str) -> str:
    return f"generation {generation}, restarts {restarts(pod)}: {detail}"


def patch_body(uid: str, cond: dict[str, Any]) -> dict[str, Any]:
    """A strategic-merge patch of ``pods/status``: conditions merge by type, so this writes the
    gate's condition alone and leaves the kubelet's (Ready, ContainersReady, …) as they are.
    ``metadata.uid`` makes it a precondition: a pod re-created under the same name is not
    touched."""
    return {"metadata": {"uid": uid}, "status": {"conditions": [cond]}}
