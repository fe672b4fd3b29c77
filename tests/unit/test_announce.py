"""The outbox: announcements recorded with a decision, posted under names that make a second
post harmless, and removed once posted."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.rest import ApiException

from slipway.clients import kube
from slipway.logic import announce, lifecycle

WARN = lifecycle.Event("Warning", "SmokeTestFailed", "1 of 2 smoke tests failed")
BACK = lifecycle.Event("Warning", "RollingBack", "rolling back to abc")


def test_the_same_decision_on_the_same_copy_gets_the_same_keys_and_another_does_not() -> None:
    first = announce.make(("uid-1", 3, "41"), [WARN, BACK], cause="SmokeTestFailed")
    again = announce.make(("uid-1", 3, "41"), [WARN, BACK], cause="SmokeTestFailed")
    assert [a.key for a in first] == [a.key for a in again]
    assert len({a.key for a in first}) == 2
    later = announce.make(("uid-1", 3, "42"), [WARN, BACK])
    other = announce.make(("uid-2", 3, "41"), [WARN, BACK])
    assert not {a.key for a in first} & {a.key for a in later + other}
    # The cause goes with the RollingBack only (it labels slipway_reverts_total)
    assert [a.cause for a in first] == ["", "SmokeTestFailed"]


def test_the_outbox_keeps_what_is_undelivered_in_order_then_the_new_ones() -> None:
    old = announce.make(("u", 1, "1"), [WARN, BACK])
    status = announce.with_outbox({"phase": "RollingBack"}, set(), old)
    assert [e["reason"] for e in status["announcements"]] == ["SmokeTestFailed", "RollingBack"]
    assert [a.key for a in announce.pending(status)] == [a.key for a in old]
    # The first was posted, a new decision comes: the second stays ahead of the new one
    new = announce.make(("u", 1, "2"), [lifecycle.Event("Normal", "RolledBack", "back")])
    status = announce.with_outbox(status, {old[0].key}, new)
    assert [e["reason"] for e in status["announcements"]] == ["RollingBack", "RolledBack"]
    # Everything posted: no field at all (a merge patch removes it)
    done = announce.with_outbox(status, {old[1].key, new[0].key})
    assert done == {"phase": "RollingBack"}
    # A key already delivered is not put in again; nor is one already waiting
    again = announce.with_outbox(announce.with_outbox({}, set(), new), set(), new)
    assert len(again["announcements"]) == 1
    assert announce.with_outbox({}, {new[0].key}, new) == {}


def test_the_outbox_is_bounded_and_survives_junk_in_status() -> None:
    many = announce.make(("u", 1, "1"), [lifecycle.Event("Normal", "Progressing", str(i))
                                         for i in range(100)])
    status = announce.with_outbox({}, set(), many)
    assert len(status["announcements"]) == announce.LIMIT
    assert status["announcements"][-1]["message"] == "99"  # the newest are kept
    junk = {"announcements": ["text", {"key": "k"}, {"reason": "R"}, None,
                              {"key": "k2", "reason": "Verified"}]}
    assert [(a.key, a.type, a.reason) for a in announce.pending(junk)] == \
        [("k2", "Normal", "Verified")]


def test_a_long_message_is_cut_in_the_middle_to_the_events_limit() -> None:
    long = "a" * 3000 + "END"
    item = announce.make(("u", 1, "1"), [lifecycle.Event("Warning", "X", long)])[0]
    assert len(item.message) == announce.MESSAGE_LIMIT
    assert item.message.startswith("aaa") and item.message.endswith("END") and " … " in \
        item.message
    assert announce.cut("short") == "short"


def test_the_event_is_named_after_its_key_and_says_who_posted_it() -> None:
    item = announce.make(("u", 1, "1"), [BACK], cause="CrashLoop")[0]
    ref = {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment", "name": "iris",
           "namespace": "ml", "uid": "u"}
    body = announce.event_body(ref, item, "2026-12-03T10:00:00.000001Z", "pod-a")
    assert body["metadata"] == {"name": f"iris.{item.key}", "namespace": "ml"}
    assert (body["type"], body["reason"], body["message"]) == \
        ("Warning", "RollingBack", "rolling back to abc")
    assert body["involvedObject"] == ref and body["source"] == {"component": "slipway"}
    assert body["reportingInstance"] == "pod-a" and body["count"] == 1
    # A long object name still gives a valid Event name (at most 253 characters)
    assert len(announce.event_name("x" * 253, item.key)) <= 253


def test_only_a_409_that_says_already_exists_counts_as_posted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def answer(reason: str) -> ApiException:
        error = ApiException(status=409, reason="Conflict")
        error.body = json.dumps({"kind": "Status", "code": 409, "reason": reason})
        return error

    body = {"metadata": {"namespace": "ns", "name": "iris.abc"}}
    for reason, posted in (("AlreadyExists", False), ("Conflict", None), ("", None)):
        def refuse(*_: object, reason: str = reason, **__: object) -> None:
            raise answer(reason)
        monkeypatch.setattr(kube, "request", refuse)
        if posted is None:  # not known to be there: an error, the outbox keeps it
            with pytest.raises(ApiException):
                kube.create_event(body)
        else:
            assert kube.create_event(body) is posted
