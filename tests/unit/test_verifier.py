"""The verifier runs smoke tests off the reconcile threads: one job per object, cancellable,
fair between namespaces, bounded in time; and the handlers keep one timer per object."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from slipway.clients import smoke
from slipway.engine import verifier


def job(name: str = "iris", namespace: str = "ml", revision: str = "r1", attempt: int = 0,
        deadline: float = 10.0) -> verifier.Job:
    return verifier.Job(namespace, name, revision, 3, attempt, deadline)


def verdict(outcome: smoke.Outcome = "Passed", message: str = "ok") -> smoke.Verdict:
    return smoke.Verdict(outcome, message, [], "t0", "t1")


@pytest.fixture
def verifications() -> Iterator[verifier.Verifier]:
    made = verifier.Verifier(max_in_flight=8, per_namespace=1)
    yield made
    made.stop()


def cancellable(started: threading.Event, cancelled: threading.Event) -> verifier.Run:
    """A run that says when it starts and when it is cancelled, and otherwise takes 30 s."""
    async def run(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return verdict("Failed")
    return run


def wait_for(event: threading.Event) -> None:
    assert event.wait(5), "timed out"


def test_a_job_runs_once_and_its_verdict_waits_until_recorded(
        verifications: verifier.Verifier) -> None:
    runs: list[int] = []
    done = threading.Event()

    async def run(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
        runs.append(len(limiters))
        return verdict()

    assert verifications.submit(job(), run, done.set)
    wait_for(done)
    assert not verifications.submit(job(), run, done.set)  # the same job: not run again
    assert verifications.result(job()) == verdict() and not verifications.running(job())
    assert verifications.result(job(attempt=1)) is None  # a retry is a job of its own
    verifications.forget(job())
    assert verifications.result(job()) is None
    assert runs == [2]  # the global and the namespace limiter


def test_a_new_job_of_the_same_object_cancels_the_obsolete_one(
        verifications: verifier.Verifier) -> None:
    started, cancelled, done = threading.Event(), threading.Event(), threading.Event()
    slow = cancellable(started, cancelled)

    async def quick(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
        return verdict()

    verifications.submit(job(revision="r1"), slow, lambda: None)
    wait_for(started)
    verifications.submit(job(revision="r2"), quick, done.set)
    wait_for(cancelled)
    wait_for(done)
    assert verifications.result(job(revision="r1")) is None
    assert verifications.result(job(revision="r2")) == verdict()


def test_keep_only_cancels_what_became_obsolete(verifications: verifier.Verifier) -> None:
    started, cancelled = threading.Event(), threading.Event()
    slow = cancellable(started, cancelled)

    verifications.submit(job(), slow, lambda: None)
    wait_for(started)
    verifications.keep_only("ml", "iris", job())  # still wanted: kept
    assert verifications.running(job())
    verifications.keep_only("ml", "iris", None)
    wait_for(cancelled)
    assert not verifications.running(job())


def test_pod_runs_live_beside_the_release_check_and_go_when_their_pod_does(
        verifications: verifier.Verifier) -> None:
    started = {unit: threading.Event() for unit in ("", "pod/a", "pod/b")}
    cancelled = {unit: threading.Event() for unit in started}
    jobs = {unit: verifier.Job("ml", "iris", "r1", 3, 0, 10.0, unit=unit) for unit in started}
    for unit, one in jobs.items():
        assert verifications.submit(one, cancellable(started[unit], cancelled[unit]),
                                    lambda: None)
        wait_for(started[unit])
    assert sorted(j.unit for j in verifications.units("ml", "iris")) == ["pod/a", "pod/b"]
    # pod b is gone: its run goes, pod a's and the release check stay
    verifications.keep_only("ml", "iris", jobs[""], units=lambda unit: unit == "pod/a")
    wait_for(cancelled["pod/b"])
    assert verifications.running(jobs[""]) and verifications.running(jobs["pod/a"])
    assert not verifications.running(jobs["pod/b"])
    # the object is deleted: everything goes
    verifications.keep_only("ml", "iris", None)
    wait_for(cancelled[""])
    wait_for(cancelled["pod/a"])
    assert verifications.units("ml", "iris") == []


def test_one_namespace_holds_its_share_and_others_go_on(verifications: verifier.Verifier
                                                        ) -> None:
    """per_namespace=1: two stalled objects of one tenant do not hold up a third elsewhere."""
    release = threading.Event()
    holding = threading.Event()
    order: list[str] = []
    finished = {name: threading.Event() for name in ("a", "b", "c")}

    def runner(name: str):  # type: ignore[no-untyped-def]
        async def run(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
            async with smoke._limited(limiters):
                order.append(name)
                if name == "a":
                    holding.set()
                    while not release.is_set():
                        await asyncio.sleep(0.01)
            return verdict()
        return run

    verifications.submit(job("a", "tenant-1"), runner("a"), finished["a"].set)
    wait_for(holding)
    verifications.submit(job("b", "tenant-1"), runner("b"), finished["b"].set)
    verifications.submit(job("c", "tenant-2"), runner("c"), finished["c"].set)
    wait_for(finished["c"])  # the other tenant is not held up
    assert order == ["a", "c"] and not finished["b"].is_set()  # b waits for a's share
    release.set()
    wait_for(finished["b"])
    assert order == ["a", "c", "b"]


def test_a_run_that_never_ends_is_given_up_after_its_deadline(
        verifications: verifier.Verifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier, "MARGIN_SECONDS", 0.1)
    done = threading.Event()

    async def forever(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    started = time.monotonic()
    verifications.submit(job(deadline=0.2), forever, done.set)
    wait_for(done)
    assert time.monotonic() - started < 3
    result = verifications.result(job(deadline=0.2))
    assert result is not None and result.outcome == "Error"
    assert result.message == "the smoke tests did not end within 0.3 s"


def test_an_exception_in_a_run_is_an_error_verdict(verifications: verifier.Verifier) -> None:
    done = threading.Event()

    async def broken(limiters: Sequence[asyncio.Semaphore]) -> smoke.Verdict:
        raise RuntimeError("boom")

    verifications.submit(job(), broken, done.set)
    wait_for(done)
    result = verifications.result(job())
    assert result is not None and result.outcome == "Error"
    assert result.message == "internal error while testing: RuntimeError: boom"


# --------------------------------------------------------------------------------------------
# One timer per object, the earliest wins


def test_the_earliest_timer_of_an_object_wins_and_fires_once() -> None:
    from slipway.engine import handlers

    fired: list[tuple[str, str, float]] = []
    done = threading.Event()

    def run(namespace: str, name: str) -> None:
        fired.append((namespace, name, time.monotonic()))
        done.set()

    timers = handlers.Timers(run)
    started = time.monotonic()
    assert timers.schedule("ml", "iris", 5.0)
    assert timers.schedule("ml", "iris", 0.2)  # earlier: replaces the first
    assert not timers.schedule("ml", "iris", 3.0)  # later than the pending one: ignored
    assert timers.pending() == 1
    wait_for(done)
    time.sleep(0.3)
    assert [(ns, name) for ns, name, _ in fired] == [("ml", "iris")]
    assert fired[0][2] - started < 1.0
    assert timers.pending() == 0
    assert timers.schedule("ml", "iris", 60.0)  # once fired, a new one may be set
    assert timers.schedule("ml", "other", 60.0) and timers.pending() == 2


def test_the_child_watches_are_filtered_by_the_api_server() -> None:
    import kopf

    from slipway.engine import handlers

    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    selectors = {(key.group, key.version, key.any_name): value
                 for key, value in settings.watching.label_selectors.items()}
    assert selectors == {resource: "app.kubernetes.io/managed-by=slipway"
                         for resource in handlers.CHILD_RESOURCES}


def test_kopf_keeps_nothing_on_the_objects_and_copies_nothing_per_event() -> None:
    import kopf

    from slipway.engine import handlers

    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    body = kopf.Body({"metadata": {"name": "iris", "annotations": {"a": "b"}},
                      "spec": {"replicas": 2}})
    patch = kopf.Patch()
    diffbase = settings.persistence.diffbase_storage
    progress = settings.persistence.progress_storage
    assert diffbase.build(body=body) == {} and diffbase.fetch(body=body) is None
    diffbase.store(body=body, patch=patch, essence=diffbase.build(body=body))
    progress.touch(body=body, patch=patch, value="x")
    progress.store(key=kopf.HandlerId("h"), record={"started": "now"}, body=body, patch=patch)
    assert progress.fetch(key=kopf.HandlerId("h"), body=body) is None
    assert not patch, f"kopf would write {dict(patch)} to the object"


def until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def one_busy_worker() -> tuple[Any, list[str], threading.Event]:
    """Timers with one worker, held by the look at "busy" until the event is set; ``ran``
    lists the looks in the order they ran."""
    from slipway.engine import handlers

    release = threading.Event()
    ran: list[str] = []

    def run(namespace: str, name: str) -> None:
        ran.append(name)
        if name == "busy":
            release.wait(10)

    timers = handlers.Timers(run, workers=1)
    timers.schedule("ml", "busy", 0)  # holds the only worker
    until(lambda: ran == ["busy"])
    return timers, ran, release


def test_a_due_look_waits_for_a_worker_once_per_object() -> None:
    timers, ran, release = one_busy_worker()
    for _ in range(5):  # events of one object while it waits for the worker
        timers.schedule("ml", "iris", 0)
        time.sleep(0.05)
    timers.schedule("ml", "other", 0)
    until(lambda: timers.queued() == 2)
    time.sleep(0.2)
    assert timers.queued() == 2 and timers.pending() == 0
    release.set()
    until(lambda: len(ran) == 3)
    time.sleep(0.2)
    assert ran == ["busy", "iris", "other"]  # each once, in the order they fell due


def test_a_new_spec_goes_before_other_waiting_looks_but_cannot_starve_them() -> None:
    timers, ran, release = one_busy_worker()
    timers.schedule("ml", "pod-change", 0)
    timers.schedule("ml", "promoted", 0)
    until(lambda: timers.queued() == 2)
    for i in range(6):
        timers.schedule("ml", f"new-{i}", 0, urgent=True)
    timers.schedule("ml", "promoted", 0, urgent=True)  # already waiting: it moves up
    until(lambda: timers.queued() == 8)
    release.set()
    until(lambda: len(ran) == 9)
    time.sleep(0.2)
    assert timers.URGENT_IN_A_ROW == 4
    # Four urgent ones, then the oldest other one, then the urgent ones left, then the rest.
    assert ran == ["busy", "new-0", "new-1", "new-2", "new-3", "pod-change", "new-4", "new-5",
                   "promoted"], ran
    assert len(set(ran)) == len(ran)  # the promoted look ran once
