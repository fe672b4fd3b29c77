"""Announcements that survive a crash: the outbox in ``status.announcements``.

A decision's Events (and the metric increments that go with them) are written into the same
status write as the decision itself, each with a key. They are then posted as Events whose
names derive from that key, and removed from the outbox. A process killed between the
decision and its announcement leaves them in status; whoever reconciles the object next (the
same process after a restart, or the new leader) posts them. Posting one twice is harmless:
its name is taken, the API server answers 409 and nothing new appears. So every transition's
Events are posted at least once and shown at most once.

Pure: no I/O. The controller keeps the keys delivered by this process and does the writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

FIELD = "announcements"
LIMIT = 32  # entries kept in the outbox; the CRD says so too
MESSAGE_LIMIT = 1024  # what an Event's message is cut to (kopf's limit too)
COMPONENT = "slipway"


@dataclasses.dataclass(frozen=True)
class Announcement:
    key: str
    type: str
    reason: str
    message: str
    # For a RollingBack announcement: the failure's reason (slipway_reverts_total's label).
    cause: str = ""

    def to_status(self) -> dict[str, Any]:
        entry = {"key": self.key, "type": self.type, "reason": self.reason,
                 "message": self.message}
        if self.cause:
            entry["cause"] = self.cause
        return entry


def cut(message: str) -> str:
    if len(message) <= MESSAGE_LIMIT:
        return message
    infix = " … "
    half = (MESSAGE_LIMIT - len(infix)) // 2
    return message[:half] + infix + message[-(MESSAGE_LIMIT - len(infix) - half):]


def key(*parts: object) -> str:
    """A key from what identifies one announcement: the same parts, the same key."""
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()
    return digest[:20]


def make(origin: tuple[object, ...], events: Iterable[Any],
         cause: str = "") -> list[Announcement]:
    """Keyed announcements for ``events`` (anything with type, reason and message) decided at
    ``origin`` (the object's uid, generation and the resourceVersion of the copy decided on);
    ``cause`` goes with a RollingBack."""
    return [Announcement(key(*origin, i, e.type, e.reason, e.message), e.type, e.reason,
                         cut(e.message), cause if e.reason == "RollingBack" else "")
            for i, e in enumerate(events)]


def pending(status: dict[str, Any]) -> list[Announcement]:
    out = []
    for entry in status.get(FIELD) or []:
        if isinstance(entry, dict) and entry.get("key") and entry.get("reason"):
            out.append(Announcement(str(entry["key"]), str(entry.get("type") or "Normal"),
                                    str(entry["reason"]), str(entry.get("message") or ""),
                                    str(entry.get("cause") or "")))
    return out


def with_outbox(status: dict[str, Any], delivered: set[str] | frozenset[str],
                new: Sequence[Announcement] = ()) -> dict[str, Any]:
    """``status`` with its outbox: what is still undelivered, then ``new``; no field when
    nothing is left."""
    keep = [a for a in pending(status) if a.key not in delivered]
    seen = {a.key for a in keep}
    keep += [a for a in new if a.key not in seen and a.key not in delivered]
    out = {k: v for k, v in status.items() if k != FIELD}
    if keep:
        out[FIELD] = [a.to_status() for a in keep[-LIMIT:]]
    return out


def event_name(object_name: str, announcement_key: str) -> str:
    return f"{object_name[:200]}.{announcement_key}"


def event_body(ref: dict[str, Any], announcement: Announcement, now: str,
               instance: str = "") -> dict[str, Any]:
    """A core/v1 Event about ``ref`` (apiVersion, kind, name, namespace, uid), named after the
    announcement's key so that posting it again changes nothing."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name(str(ref["name"]), announcement.key),
                     "namespace": ref["namespace"]},
        "type": announcement.type, "reason": announcement.reason,
        "message": announcement.message, "action": announcement.reason,
        "reportingComponent": COMPONENT, "reportingInstance": instance,
        "source": {"component": COMPONENT},
        "involvedObject": dict(ref),
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": now, "count": 1,
    }
