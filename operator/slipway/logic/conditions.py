"""Status conditions as a small pure helper.

Kubernetes convention (and kstatus): each condition has a type, status, reason, message,
``lastTransitionTime`` and ``observedGeneration``. The transition time changes only when the status
changes, so ``kubectl describe`` tells when something became true, not when it was last looked at,
and an unchanged reconcile produces an unchanged status (no write).
"""

from __future__ import annotations

import datetime
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
ROLLED_BACK = "RolledBack"

# Reasons: CamelCase, one per cause an admin would act on differently.
INVALID_SPEC = "InvalidSpec"
CHILD_CONFLICT = "ChildConflict"
APPLY_FAILED = "ApplyFailed"

ORDER = (READY, RECONCILING, STALLED, ROLLED_BACK)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z")


def get(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """Return a new list with ``type_`` set; keeps lastTransitionTime if the status is unchanged."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = get(conditions, type_)
    transition = old["lastTransitionTime"] if old and old.get("status") == value else (at or now())
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    others = [c for c in conditions or [] if c.get("type") != type_]
    merged = others + [new]
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(merged, key=lambda c: (rank.get(c.get("type", ""), len(rank)), c.get("type")))


# Status fields that only report how far a rollout has come: counts, and the wording of the
# conditions' messages. Nothing is decided by them, and a restart recomputes them.
PROGRESS_FIELDS = frozenset({"replicas", "readyReplicas", "verifiedPods", "conditions"})


def _condition_states(status: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
            for c in status.get("conditions") or []]


def progress_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` differs from ``old`` only in progress: counts and condition messages,
    with every condition's type, status, reason and generation as they were (a condition
    that turns, a phase, a verdict, a pod's verification or a rollback target is never
    progress only)."""
    changed = {key for key in set(old) | set(new) if old.get(key) != new.get(key)}
    if not changed or not changed <= PROGRESS_FIELDS:
        return False
    return _condition_states(old) == _condition_states(new)
