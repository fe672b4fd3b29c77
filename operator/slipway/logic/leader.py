"""Leader election on a ``coordination.k8s.io`` Lease: the decisions, without any I/O.

The rules are client-go's (``k8s.io/client-go/tools/leaderelection``), with every duration
measured on this process's monotonic clock and never by comparing another machine's
timestamps with ours:

- a Lease held by someone else is taken over only once its record has not changed for its
  ``leaseDurationSeconds``, as this process observed it (the holder's ``renewTime`` is read
  but never compared with our wall clock: two machines' clocks differ);
- a released Lease (no holder) is taken at once;
- our own Lease is renewed, keeping its ``acquireTime``;
- a write is a full replace carrying the ``resourceVersion`` that was read, so of two
  candidates that both try to take an expired Lease, the API server lets exactly one win
  (the other gets 409 Conflict);
- the leader counts itself leader only until ``renew_deadline`` after it *sent* its last
  successful renewal. That is shorter than the lease, and a standby's wait starts only when it
  *sees* that renewal, so the leader stops acting before anyone may take over.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

CREATE = "create"  # no Lease yet
RENEW = "renew"  # ours: renew it
TAKE = "take"  # released, or its holder stopped renewing: take it over
WAIT = "wait"  # someone else holds it, and renews it

JITTER = 1.2  # client-go's JitterFactor: a standby retries after retry_period * [1, 1.2)


@dataclasses.dataclass(frozen=True)
class Timing:
    """client-go's defaults: a 15 s lease, renewed every 2 s, given up after 10 s without a
    successful renewal."""

    lease_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """What makes these timings unsafe (client-go's own checks), as sentences."""
        found = []
        if self.lease_seconds < 2:
            found.append(f"the lease ({self.lease_seconds} s) must be at least 2 s")
        if not self.lease_seconds > self.renew_deadline:
            found.append(f"the lease ({self.lease_seconds} s) must be longer than the renew "
                         f"deadline ({self.renew_deadline:g} s)")
        if not self.renew_deadline > JITTER * self.retry_period:
            found.append(f"the renew deadline ({self.renew_deadline:g} s) must be longer than "
                         f"{JITTER:g} x the retry period ({self.retry_period:g} s)")
        if not self.retry_period > 0:
            found.append("the retry period must be above 0")
        return found


@dataclasses.dataclass(frozen=True)
class Held:
    """What a Lease says."""

    holder: str
    lease_seconds: int
    acquired: str | None
    renewed: str | None
    transitions: int
    version: str  # its resourceVersion: changes with every write

    def tag(self) -> tuple[str, str, str | None]:
        """What changes when anyone writes it: a standby's wait starts again on a change."""
        return (self.version, self.holder, self.renewed)


def read(lease: dict[str, Any] | None) -> Held | None:
    """The record of a Lease as the API server answered it (None: there is none)."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    try:
        seconds = int(spec.get("leaseDurationSeconds") or 0)
        transitions = int(spec.get("leaseTransitions") or 0)
    except (TypeError, ValueError):
        seconds, transitions = 0, 0
    return Held(holder=str(spec.get("holderIdentity") or ""), lease_seconds=max(seconds, 0),
                acquired=spec.get("acquireTime"), renewed=spec.get("renewTime"),
                transitions=max(transitions, 0), version=str(meta.get("resourceVersion") or ""))


def decide(held: Held | None, identity: str, unchanged_for: float) -> str:
    """What to do with the Lease: ``unchanged_for`` is how long this process has seen the
    same record (on its own clock)."""
    if held is None:
        return CREATE
    if held.holder == identity:
        return RENEW
    if not held.holder:
        return TAKE
    # A record without a duration is taken after the default; client-go does the same with
    # its own configured duration.
    lease = held.lease_seconds or Timing.lease_seconds
    return TAKE if unchanged_for >= lease else WAIT


def micro_time(now: datetime.datetime) -> str:
    """A MicroTime as the API server writes it: RFC 3339, UTC, microseconds."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body(namespace: str, name: str, identity: str, timing: Timing, action: str,
         held: Held | None, now: datetime.datetime) -> dict[str, Any]:
    """The Lease to create (CREATE) or to replace the one read (RENEW, TAKE) with; a replace
    carries the resourceVersion that was read, so it fails if anyone wrote in between."""
    stamp = micro_time(now)
    acquired = held.acquired if (action == RENEW and held is not None and held.acquired) \
        else stamp
    transitions = held.transitions if held is not None else 0
    if action == TAKE and held is not None and held.holder:
        transitions += 1
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if action != CREATE and held is not None:
        metadata["resourceVersion"] = held.version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": timing.lease_seconds,
                     "acquireTime": acquired, "renewTime": stamp,
                     "leaseTransitions": transitions}}


def released(namespace: str, name: str, held: Held, now: datetime.datetime) -> dict[str, Any]:
    """Our Lease given up on a clean stop (client-go's ReleaseOnCancel): no holder, so the next
    candidate takes it at once instead of waiting out the lease."""
    stamp = micro_time(now)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": held.version},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": stamp,
                     "renewTime": stamp, "leaseTransitions": held.transitions}}


class Observed:
    """How long the same record has been seen, on the caller's monotonic clock."""

    def __init__(self) -> None:
        self._tag: tuple[str, str, str | None] | None = None
        self._since = 0.0

    def see(self, held: Held | None, now: float) -> float:
        tag = held.tag() if held is not None else None
        if tag != self._tag:
            self._tag, self._since = tag, now
        return now - self._since
