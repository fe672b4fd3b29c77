"""Conditions keep their transition time while unchanged and carry the observed generation."""

from __future__ import annotations

from slipway.logic import conditions


def test_transition_time_is_kept_when_status_does_not_change() -> None:
    first = conditions.set_condition([], "Ready", False, "Progressing", "rolling out",
                                     generation=1, at="2026-01-01T00:00:00Z")
    second = conditions.set_condition(first, "Ready", False, "Progressing", "2 of 3",
                                      generation=2, at="2026-01-01T00:05:00Z")
    (ready,) = second
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["message"] == "2 of 3"
    assert ready["observedGeneration"] == 2


def test_transition_time_moves_when_status_changes() -> None:
    first = conditions.set_condition([], "Ready", False, "Progressing", "", generation=1,
                                     at="2026-01-01T00:00:00Z")
    second = conditions.set_condition(first, "Ready", True, "Verified", "", generation=1,
                                      at="2026-01-01T00:05:00Z")
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert second[0]["status"] == "True"


def test_conditions_are_kept_in_a_stable_order() -> None:
    conds = conditions.set_condition([], "Stalled", False, "X", "", generation=1)
    conds = conditions.set_condition(conds, "Custom", True, "X", "", generation=1)
    conds = conditions.set_condition(conds, "Ready", True, "X", "", generation=1)
    assert [c["type"] for c in conds] == ["Ready", "Stalled", "Custom"]


def test_get_finds_a_condition_by_type() -> None:
    conds = conditions.set_condition([], "Ready", True, "X", "", generation=1)
    assert conditions.get(conds, "Ready")["reason"] == "X"  # type: ignore[index]
    assert conditions.get(conds, "Stalled") is None


def test_now_is_rfc3339_utc() -> None:
    assert conditions.now().endswith("Z") and "T" in conditions.now()


def test_only_counts_and_message_wording_are_progress() -> None:
    def status(phase: str, ready: int, message: str, reason: str = "Progressing",
               cond: str = "False", **extra: object) -> dict[str, object]:
        return {"phase": phase, "readyReplicas": ready, "verifiedPods": f"0/{ready + 1}",
                "conditions": [{"type": "Ready", "status": cond, "reason": reason,
                                "message": message, "observedGeneration": 2,
                                "lastTransitionTime": "2026-12-02T00:00:00Z"}], **extra}

    old = status("Progressing", 0, "rolling out revision abc")
    assert conditions.progress_only(old, status("Progressing", 1, "0 of 1 updated replicas"))
    assert not conditions.progress_only(old, old)  # nothing to write at all
    assert not conditions.progress_only(old, status("Verifying", 1, "x"))  # a phase
    assert not conditions.progress_only(old, status("Progressing", 1, "x", reason="Verifying"))
    assert not conditions.progress_only(old, status("Progressing", 0, "x", cond="True"))
    assert not conditions.progress_only(  # a pod's verification is a decision
        old, status("Progressing", 0, "x", podVerification={"pods": [{"pod": "p"}]}))
    turned = status("Progressing", 0, "rolling out revision abc")
    turned["conditions"][0]["observedGeneration"] = 3  # type: ignore[index]
    assert not conditions.progress_only(old, turned)
