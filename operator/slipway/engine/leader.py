"""The leader elector: one thread that holds, renews or waits for the operator's Lease.

Only the leader reconciles; a standby keeps its watches and its cache warm (kopf watches as
usual), so that it acts within a retry period of taking over. The decisions are
``slipway.logic.leader``'s (client-go's rules); this module does the I/O on its own thread and
answers ``leading()`` for the write fence (``kube.FENCE``), which closes on the monotonic clock
``renew_deadline`` after the last renewal that was *sent* and succeeded, whatever the thread is
doing meanwhile (a renewal hanging on a partitioned API server included).

Why not the Kubernetes client's ``kubernetes.leaderelection``: its requests have no timeout (a
renewal hanging on a half-open connection holds the loop forever, while the leader goes on
acting), it measures expiry on the wall clock, and it exposes no "do I still hold it" check
that writes could be fenced with. Why not kopf's peering: it uses a KopfPeering resource of
its own, not a Lease, and peers of equal priority all pause.

Losing the Lease does not end the process: the fence closes at once and the elector goes on
trying, so that an API outage longer than the renew deadline ends in the same process leading
again, not a restart.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from kubernetes.client.rest import ApiException

from slipway.clients import kube
from slipway.engine import metrics
from slipway.logic import leader

log = logging.getLogger("slipway.leader")


def default_identity() -> str:
    """The pod's name in the cluster (POD_NAME, from the downward API: a container restarted
    in the same pod renews its own Lease at once, which is safe, as the kubelet stops the old
    container first); elsewhere the host name and a random suffix, as client-go does, so that
    two ``slipway run`` on one machine are two candidates."""
    pod = os.environ.get("POD_NAME", "").strip()
    if pod:
        return pod
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


class Elector:
    def __init__(self, *, namespace: str, name: str, identity: str, timing: leader.Timing,
                 on_started: Callable[[], None]) -> None:
        """``on_started``: called on the elector's thread each time this process starts
        leading (the fence is open by then)."""
        self.namespace, self.name, self.identity, self.timing = namespace, name, identity, timing
        self._on_started = on_started
        self._clock = time.monotonic
        self._lock = threading.Lock()
        self._valid_until = 0.0  # on self._clock: the fence is open until then
        self._leading = False  # as the loop last saw it (on_started called, not lost since)
        self._held: leader.Held | None = None  # the Lease as last read or written
        self._observed = leader.Observed()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem = ""
        self.holder = ""  # who holds the Lease, as last seen

    # -- what the rest of the operator asks

    def leading(self) -> bool:
        """True while this process may act: it holds the Lease and renewed it less than the
        renew deadline ago. The write fence."""
        with self._lock:
            return self._clock() < self._valid_until

    def role(self) -> str:
        return "leader" if self.leading() else "standby"

    # -- the loop

    def start(self) -> None:
        """Start the loop on a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="slipway-leader", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """End the loop; if this process leads, give the Lease up (``release``) so that the
        next candidate takes over at once rather than after the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + 10)
        was_leading = self.leading()
        with self._lock:
            self._valid_until = 0.0
        if was_leading:
            self._lost("stopping")
        held = self._held
        if release and was_leading and held is not None and held.holder == self.identity:
            try:
                kube.write_lease(leader.released(self.namespace, self.name, held,
                                                 datetime.datetime.now(datetime.timezone.utc)),
                                 timeout=self.timing.retry_period)
                log.info("leader Lease %s/%s released", self.namespace, self.name)
            except ApiException as error:
                self._not_released(error)
            except kube.TRANSPORT_ERRORS as error:
                self._not_released(error)

    def _not_released(self, error: BaseException) -> None:
        log.warning("could not release the leader Lease %s/%s (%s); the next leader takes "
                    "over once it expires", self.namespace, self.name, _short(error))

    def _loop(self) -> None:
        log.info("leader election: %s is a candidate for Lease %s/%s (%d s lease, renew "
                 "deadline %g s, retry %g s)", self.identity, self.namespace, self.name,
                 self.timing.lease_seconds, self.timing.renew_deadline, self.timing.retry_period)
        while not self._stop.is_set():
            self.try_once()
            period = self.timing.retry_period
            if not self.leading():
                period *= 1 + random.random() * (leader.JITTER - 1)  # noqa: S311 - not secret
            self._stop.wait(period)

    def try_once(self) -> bool:
        """One attempt to acquire or renew; True when this process holds the Lease after it."""
        sent = self._clock()
        # No attempt may outlast the time the fence has left (nor, standing by, a retry period
        # or two): a renewal that answers after the deadline proves nothing.
        timeout = max(min(self.timing.renew_deadline / 2, 5.0), 0.5)
        held: leader.Held | None
        try:
            mine = self._held if self._leading else None
            if mine is not None and mine.holder == self.identity:
                # Renewing what this process wrote last: no read first (one round trip, not
                # two, on a loaded API server); if anyone wrote since, the replace gets 409.
                held, action = mine, leader.RENEW
            else:
                held = leader.read(kube.read_lease(self.namespace, self.name,
                                                   timeout=timeout))
                action = leader.decide(held, self.identity, self._observed.see(held, sent))
            self._held = held
            self.holder = held.holder if held is not None else ""
            if action == leader.WAIT:
                metrics.LEADER_ATTEMPTS.labels("held-by-another").inc()
                self._problem("")
                if self._leading:  # someone else holds it: this process does not
                    self._lost(f"the Lease is held by {self.holder}")
                return False
            now = datetime.datetime.now(datetime.timezone.utc)
            answer = kube.write_lease(
                leader.body(self.namespace, self.name, self.identity, self.timing, action,
                            held, now), timeout=timeout)
        except ApiException as error:
            if error.status == 409:
                metrics.LEADER_ATTEMPTS.labels("conflict").inc()  # someone wrote first
                self._held = None  # read it again next time
            else:
                metrics.LEADER_ATTEMPTS.labels("error").inc()
                self._problem(f"Lease {self.namespace}/{self.name}: {_short(error)}"
                              + _hint(error, self.namespace))
            self._check_lost()
            return False
        except kube.TRANSPORT_ERRORS as error:
            metrics.LEADER_ATTEMPTS.labels("error").inc()
            self._problem(f"Lease {self.namespace}/{self.name}: {_short(error)}")
            self._check_lost()
            return False
        written = leader.read(answer)
        self._held = written
        self._observed.see(written, self._clock())
        self.holder = self.identity
        metrics.LEADER_ATTEMPTS.labels(action).inc()
        self._problem("")
        now_mono = self._clock()
        if now_mono - sent >= self.timing.renew_deadline:
            self._check_lost()  # answered too late to count
            return False
        with self._lock:
            lapsed = self._leading and self._valid_until <= now_mono
        if lapsed:
            # The fence closed meanwhile (looks were parked while it was): a new start, so
            # that on_started takes them up.
            self._lost("renewed only after the renew deadline had passed")
        with self._lock:
            self._valid_until = sent + self.timing.renew_deadline
            started = not self._leading
            self._leading = True
        if started:
            log.info("leader election: %s now leads (Lease %s/%s, %s)", self.identity,
                     self.namespace, self.name, action)
            metrics.LEADER.set(1)
            metrics.LEADER_CHANGES.labels("started").inc()
            self._on_started()
        return True

    def _check_lost(self) -> None:
        with self._lock:
            lost = self._leading and self._clock() >= self._valid_until
            if lost:
                self._leading = False
        if lost:
            self._lost(f"not renewed for {self.timing.renew_deadline:g} s"
                       + (f" (now held by {self.holder})" if self.holder
                          and self.holder != self.identity else ""))

    def _lost(self, why: str) -> None:
        with self._lock:
            self._leading = False
            self._valid_until = 0.0
        log.warning("leader election: %s stopped leading: %s; standing by", self.identity, why)
        metrics.LEADER.set(0)
        metrics.LEADER_CHANGES.labels("stopped").inc()

    def _problem(self, text: str) -> None:
        """Log a failure once, not every retry period; and its end."""
        if text and text != self._last_problem:
            log.warning("leader election: %s (retrying every %g s)", text,
                        self.timing.retry_period)
        elif not text and self._last_problem:
            log.info("leader election: the Lease answers again")
        self._last_problem = text


def _hint(error: ApiException, namespace: str) -> str:
    """What to do about an answer that will not change by itself."""
    if error.status == 404:
        return (f"; does namespace {namespace} exist? Install manifests/ "
                "(kubectl apply -k manifests/), or give --lease-namespace, or run with "
                "--no-leader-elect; standing by until then")
    if error.status == 403:
        return ("; the operator may not use this Lease: grant the Role "
                "slipway-operator-leader-election of manifests/base (or its rules) in "
                f"namespace {namespace}; standing by until then")
    return ""


def _short(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {str(error)[:200]}"
