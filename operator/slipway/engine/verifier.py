"""Smoke-test runs off the reconcile threads: side by side, fair between tenants, each bounded.

A reconcile that needs a verdict submits a run and returns at once; the run goes on in one
asyncio loop of its own (a thread), and when it ends the object is reconciled again and finds
the verdict. So a model server that accepts connections and stalls holds no reconcile worker,
runs of different ModelDeployments proceed together instead of queueing behind a fixed pool,
and a new generation cancels the run it made obsolete.

Bounds: a run has the deadline its spec gives (``spec.rollout.verificationDeadlineSeconds``,
enforced by the smoke module) plus a margin enforced here; every request of every run holds one
of ``max_in_flight`` slots, and at most ``per_namespace`` of them belong to one namespace, so a
tenant whose servers stall every connection can take its share and no more.

Verdicts live in memory until the reconcile that records them says so (``forget``); an operator
restarted mid-run finds the Verifying status it wrote and runs the tests again (they only read).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from slipway.clients import smoke
from slipway.engine import logs, metrics
from slipway.logic import conditions

log = logging.getLogger("slipway.verifier")

# Few enough that the operator's own load does not slow the answers it times (a latency budget
# is a verdict on the model), enough that a tenant whose servers stall holds at most a share.
MAX_IN_FLIGHT = 48
PER_NAMESPACE = 24  # half: a tenant whose servers stall leaves the other half to the rest
MARGIN_SECONDS = 30.0  # beyond a run's own deadline, before this module gives up on it

Run = Callable[[Sequence[asyncio.Semaphore]], Awaitable[smoke.Verdict]]


@dataclasses.dataclass(frozen=True)
class Job:
    """One verification: which object, which revision, for which generation, which try."""

    namespace: str
    name: str
    revision: str
    generation: int
    attempt: int  # "could not test" verdicts recorded before it: a retry is a job of its own
    deadline: float
    unit: str = ""  # "": the release check; "pod/UID": one pod behind its readiness gate

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclasses.dataclass
class _Entry:
    job: Job
    future: concurrent.futures.Future[smoke.Verdict]
    verdict: smoke.Verdict | None = None


class Verifier:
    def __init__(self, *, max_in_flight: int = MAX_IN_FLIGHT,
                 per_namespace: int = PER_NAMESPACE) -> None:
        self.max_in_flight = max_in_flight
        self.per_namespace = per_namespace
        self._lock = threading.Lock()
        # by object, then by unit: an object has a release check and one run per gated pod
        self._entries: dict[tuple[str, str], dict[str, _Entry]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._global: asyncio.Semaphore | None = None
        self._namespaces: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def limit(self, *, max_in_flight: int, per_namespace: int) -> None:
        """Set the request slots; before the first run only (the loop makes them then)."""
        if self._loop is not None:
            raise RuntimeError("the verifier already runs: set its limits before it starts")
        self.max_in_flight, self.per_namespace = max_in_flight, per_namespace

    # -- the loop

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                self._global = asyncio.Semaphore(self.max_in_flight)
                ready.set()
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="slipway-verifier", daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop
        return self._loop

    def stop(self) -> None:
        """Cancel every run and end the loop (its thread is joined, the loop closed)."""
        with self._lock:
            entries = [entry for units in self._entries.values() for entry in units.values()]
            self._entries.clear()
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
        for entry in entries:
            entry.future.cancel()
        if loop is None or thread is None:
            return

        async def drain() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        loop.call_soon_threadsafe(lambda: loop.create_task(drain()))
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()

    # -- jobs (called from reconcile threads)

    def _count(self) -> None:
        metrics.VERIFICATIONS.set(sum(len(units) for units in self._entries.values()))

    def _get(self, job: Job) -> _Entry | None:
        entry = self._entries.get(job.key, {}).get(job.unit)
        return entry if entry is not None and entry.job == job else None

    def submit(self, job: Job, run: Run, on_done: Callable[[], None]) -> bool:
        """Start ``job`` unless it is already running or done; a different job of the same
        object and unit is cancelled first. Returns True when it started. ``on_done`` is called
        (from the verifier's thread) once the verdict is there."""
        with self._lock:
            units = self._entries.setdefault(job.key, {})
            entry = units.get(job.unit)
            if entry is not None and entry.job == job:
                return False
            if entry is not None:
                entry.future.cancel()
            loop = self._ensure_loop()
            future = asyncio.run_coroutine_threadsafe(self._run(job, run), loop)
            units[job.unit] = _Entry(job, future)
            self._count()
        future.add_done_callback(lambda done: self._finished(job, done, on_done))
        return True

    def result(self, job: Job) -> smoke.Verdict | None:
        """The verdict of exactly this job, once it is there (kept until ``forget``)."""
        with self._lock:
            entry = self._get(job)
            return entry.verdict if entry is not None else None

    def running(self, job: Job) -> bool:
        with self._lock:
            entry = self._get(job)
            return entry is not None and entry.verdict is None

    def forget(self, job: Job) -> None:
        """The verdict is recorded: drop it."""
        with self._lock:
            if self._get(job) is not None:
                units = self._entries[job.key]
                del units[job.unit]
                if not units:
                    del self._entries[job.key]
            self._count()

    def keep_only(self, namespace: str, name: str, job: Job | None,
                  units: Callable[[str], bool] | None = None) -> None:
        """Cancel and drop this object's runs made obsolete: the release check unless it is
        ``job``, and each pod's run unless ``units`` says to keep it (all of them go when
        ``units`` is None)."""
        dropped: list[_Entry] = []
        with self._lock:
            entries = self._entries.get((namespace, name))
            if not entries:
                return
            for unit, entry in list(entries.items()):
                keep = entry.job == job if unit == "" else (units is not None and units(unit))
                if not keep:
                    dropped.append(entries.pop(unit))
            if not entries:
                del self._entries[(namespace, name)]
            self._count()
        for entry in dropped:
            entry.future.cancel()
            log.info("%s/%s: verification %sof revision %s (generation %s) cancelled: obsolete",
                     namespace, name, f"of {entry.job.unit} " if entry.job.unit else "",
                     entry.job.revision, entry.job.generation,
                     extra=logs.about(namespace, name, revision=entry.job.revision))

    def units(self, namespace: str, name: str) -> list[Job]:
        """The pod runs this object has (running or with a verdict)."""
        with self._lock:
            return [entry.job for unit, entry in (self._entries.get((namespace, name)) or {})
                    .items() if unit]

    # -- inside the loop

    async def _run(self, job: Job, run: Run) -> smoke.Verdict:
        assert self._global is not None
        share, users = self._namespaces.get(job.namespace, (None, 0))
        if share is None:
            share = asyncio.Semaphore(self.per_namespace)
        self._namespaces[job.namespace] = (share, users + 1)
        started = time.monotonic()
        try:
            async with asyncio.timeout(job.deadline + MARGIN_SECONDS):
                verdict = await run([self._global, share])
        except TimeoutError:
            now = conditions.now()
            verdict = smoke.Verdict("Error", f"the smoke tests did not end within "
                                    f"{job.deadline + MARGIN_SECONDS:g} s", [], now, now)
        finally:
            share, users = self._namespaces[job.namespace]
            if users <= 1:
                del self._namespaces[job.namespace]
            else:
                self._namespaces[job.namespace] = (share, users - 1)
        metrics.SMOKE_DURATION.labels(verdict.outcome).observe(time.monotonic() - started)
        return verdict

    def _finished(self, job: Job, future: concurrent.futures.Future[smoke.Verdict],
                  on_done: Callable[[], None]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            now = conditions.now()
            verdict = smoke.Verdict("Error", f"internal error while testing: "
                                    f"{type(error).__name__}: {error}", [], now, now)
        else:
            verdict = future.result()
        with self._lock:
            entry = self._get(job)
            if entry is None:
                return  # cancelled or replaced meanwhile
            entry.verdict = verdict
        try:
            on_done()
        except Exception:  # noqa: BLE001 - the next event reconciles it anyway
            log.exception("%s/%s: could not schedule the reconcile that records the verdict",
                          job.namespace, job.name,
                          extra=logs.about(job.namespace, job.name, revision=job.revision))
