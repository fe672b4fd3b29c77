"""Leader election's decisions (slipway.logic.leader): client-go's rules, on our own clock."""

from __future__ import annotations

import datetime

import pytest

from slipway.logic import leader

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def lease(holder: str = "a", seconds: int = 15, version: str = "7", transitions: int = 2,
          acquired: str = "2026-12-03T11:00:00.000000Z",
          renewed: str = "2026-12-03T11:59:58.000000Z") -> dict[str, object]:
    return {"metadata": {"name": "slipway-operator", "namespace": "ns",
                         "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
                     "acquireTime": acquired, "renewTime": renewed,
                     "leaseTransitions": transitions}}


def test_read_gives_the_record_and_none_for_no_lease() -> None:
    held = leader.read(lease())
    assert held == leader.Held(holder="a", lease_seconds=15,
                               acquired="2026-12-03T11:00:00.000000Z",
                               renewed="2026-12-03T11:59:58.000000Z", transitions=2,
                               version="7")
    assert leader.read(None) is None
    # A Lease written by hand with nonsense in it reads as no holder, no duration.
    odd = leader.read({"metadata": {}, "spec": {"leaseDurationSeconds": "x",
                                                "leaseTransitions": -3}})
    assert odd is not None and (odd.holder, odd.lease_seconds, odd.transitions) == ("", 0, 0)


@pytest.mark.parametrize(("held", "unchanged_for", "expected"), [
    (None, 0.0, leader.CREATE),
    (lease(holder="me"), 0.0, leader.RENEW),
    (lease(holder="me"), 100.0, leader.RENEW),
    (lease(holder=""), 0.0, leader.TAKE),  # released on a clean stop: at once
    (lease(holder="other"), 14.9, leader.WAIT),
    (lease(holder="other"), 15.0, leader.TAKE),
    (lease(holder="other", seconds=40), 20.0, leader.WAIT),  # the Lease's own duration counts
    (lease(holder="other", seconds=0), 14.0, leader.WAIT),  # none given: client-go's default
    (lease(holder="other", seconds=0), 15.0, leader.TAKE),
])
def test_decide(held: dict[str, object] | None, unchanged_for: float, expected: str) -> None:
    assert leader.decide(leader.read(held), "me", unchanged_for) == expected


def test_the_wait_is_on_our_clock_and_starts_again_on_every_change_of_the_record() -> None:
    """The holder's renewTime is never compared with our wall clock: a standby counts how long
    it has seen the same record, and a renewal (a new resourceVersion) starts the count again."""
    seen = leader.Observed()
    first = leader.read(lease(holder="other", version="7"))
    assert seen.see(first, 100.0) == 0.0
    assert seen.see(first, 110.0) == 10.0
    renewed = leader.read(lease(holder="other", version="8", renewed="2026-12-03T11:59:59Z"))
    assert seen.see(renewed, 111.0) == 0.0
    assert seen.see(renewed, 126.0) == 15.0
    assert leader.decide(renewed, "me", seen.see(renewed, 126.0)) == leader.TAKE
    # A renewTime far in the past on the holder's clock does not make it expire early.
    stale_clock = leader.read(lease(holder="other", version="9",
                                    renewed="2001-01-01T00:00:00.000000Z"))
    assert leader.decide(stale_clock, "me", seen.see(stale_clock, 127.0)) == leader.WAIT


def test_the_body_of_each_action() -> None:
    timing = leader.Timing(lease_seconds=15)
    created = leader.body("ns", "l", "me", timing, leader.CREATE, None, NOW)
    assert created["metadata"] == {"name": "l", "namespace": "ns"}  # no precondition
    assert created["spec"] == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                               "acquireTime": "2026-12-03T12:00:00.123456Z",
                               "renewTime": "2026-12-03T12:00:00.123456Z",
                               "leaseTransitions": 0}
    mine = leader.read(lease(holder="me"))
    renewed = leader.body("ns", "l", "me", timing, leader.RENEW, mine, NOW)
    assert renewed["metadata"]["resourceVersion"] == "7"  # a replace that fails if anyone wrote
    assert renewed["spec"]["acquireTime"] == "2026-12-03T11:00:00.000000Z"  # kept
    assert renewed["spec"]["renewTime"] == "2026-12-03T12:00:00.123456Z"
    assert renewed["spec"]["leaseTransitions"] == 2
    taken = leader.body("ns", "l", "me", timing, leader.TAKE, leader.read(lease("other")), NOW)
    assert taken["metadata"]["resourceVersion"] == "7"
    assert taken["spec"]["acquireTime"] == "2026-12-03T12:00:00.123456Z"
    assert taken["spec"]["leaseTransitions"] == 3  # one more holder change
    after_release = leader.body("ns", "l", "me", timing, leader.TAKE,
                                leader.read(lease(holder="")), NOW)
    assert after_release["spec"]["leaseTransitions"] == 2  # released: counted by no one


def test_released_gives_the_lease_up_with_a_precondition() -> None:
    mine = leader.read(lease(holder="me"))
    assert mine is not None
    body = leader.released("ns", "l", mine, NOW)
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["spec"]["holderIdentity"] == ""
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["spec"]["leaseTransitions"] == 2


def test_micro_time_is_utc_with_microseconds() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert leader.micro_time(NOW.astimezone(plus_two)) == "2026-12-03T12:00:00.123456Z"


def test_timing_problems() -> None:
    assert leader.Timing().problems() == []
    assert leader.Timing(lease_seconds=6, renew_deadline=4, retry_period=1).problems() == []
    assert "longer than the renew deadline" in " ".join(
        leader.Timing(lease_seconds=10, renew_deadline=10).problems())
    assert "1.2 x the retry period" in " ".join(
        leader.Timing(renew_deadline=2.4, retry_period=2).problems())
    assert leader.Timing(lease_seconds=1, renew_deadline=0.5, retry_period=0.1).problems()
    assert leader.Timing(retry_period=0).problems()
