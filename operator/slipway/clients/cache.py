"""The informer cache: the last state of every object the operator watches, held in memory.

A reconcile reads its ModelDeployment, Deployment, Service and pods from here, not from the API
server: the watches (kopf's, filtered server-side to Slipway's own objects) put every event in,
and Slipway's own writes put their answers in at once ("write-through"), so that the next
reconcile does not see the world from before its own write. Where correctness needs the API
server's own word, the controller reads afresh and says so (see ``controller`` and the README:
before creating or adopting a child, before a verdict is recorded, the Service's endpoints
when a run of smoke tests starts, and the rollback target's ControllerRevision the first time).

Why not kopf's ``@kopf.index``: its indexes are handed to kopf handlers as arguments, while
Slipway reconciles on its own threads; and an index keeps, as this store would without
``sweep``, an object deleted while a watch was down (a re-list after "410 Gone" sends no
DELETED for it). This store drops what a re-list did not bring back.

Bodies are kept as compact JSON (a parsed copy per read), which keeps the memory per object
near its size on the wire and makes every read a copy that no caller can corrupt; the
``managedFields`` and kubectl's last-applied annotation are dropped on the way in.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

from slipway.logic import render

DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
# Listing events this far apart belong to different listings (a re-list after a broken watch).
LISTING_GAP_SECONDS = 2.0

MODEL_DEPLOYMENT = "ModelDeployment"
DEPLOYMENT = "Deployment"
SERVICE = "Service"
POD = "Pod"
CONTROLLER_REVISION = "ControllerRevision"
KINDS = (MODEL_DEPLOYMENT, DEPLOYMENT, SERVICE, POD, CONTROLLER_REVISION)


@dataclasses.dataclass
class _Item:
    text: str
    uid: str
    version: str
    owner: str | None
    seen: float


def _newer(held: str, incoming: str) -> bool:
    """Whether ``incoming`` is not older than ``held``. Resource versions are opaque to
    clients, but every API server backed by etcd hands out increasing integers; when either
    is not one, the incoming copy wins (the watch delivers in order)."""
    if held.isdigit() and incoming.isdigit():
        return int(incoming) >= int(held)
    return True


def _trimmed(body: dict[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and any(key in annotations for key in DROPPED_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items()
                               if k not in DROPPED_ANNOTATIONS}
    return {**body, "metadata": meta}


class Store:
    """Objects by kind, then (namespace, name); each kind also indexed by the owner label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[tuple[str, str], _Item]] = {kind: {} for kind in KINDS}
        self._owned: dict[str, dict[tuple[str, str], set[str]]] = {kind: {} for kind in KINDS}
        self._listing_started: dict[str, float] = {}
        self._listing_last: dict[str, float] = {}

    # -- writes: watch events and the answers to our own writes

    def put(self, kind: str, body: dict[str, Any] | None, *, listed: bool = False) -> bool:
        """Keep ``body`` unless an equal or newer copy is held; True when it was kept.
        ``listed``: it came from a (re-)listing, which ``sweep`` completes."""
        if not body:
            return False
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "", meta.get("name")
        if not name:
            return False
        now = time.monotonic()
        version = str(meta.get("resourceVersion") or "")
        uid = str(meta.get("uid") or "")
        owner = (meta.get("labels") or {}).get(render.LABEL_OWNER)
        key = (namespace, name)
        with self._lock:
            if listed:
                self._mark_listing(kind, now)
            items = self._items[kind]
            held = items.get(key)
            if held is not None and held.uid == uid and version and held.version and \
                    (version == held.version or not _newer(held.version, version)):
                # The same copy again (the watch echoing our own write), or an older one (a
                # late event): nothing to keep, but still proof that the object exists.
                held.seen = now
                return False
            text = json.dumps(_trimmed(body), separators=(",", ":"))
            if held is not None and held.owner != owner:
                self._unindex(kind, key, held.owner)
            items[key] = _Item(text, uid, version, owner, now)
            if owner is not None:
                self._owned[kind].setdefault((namespace, owner), set()).add(name)
        return True

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Forget it (``uid``: only if the copy held is of that object, not its successor)."""
        key = (namespace, name)
        with self._lock:
            held = self._items[kind].get(key)
            if held is None or (uid and held.uid and held.uid != uid):
                return
            del self._items[kind][key]
            self._unindex(kind, key, held.owner)

    def _unindex(self, kind: str, key: tuple[str, str], owner: str | None) -> None:
        if owner is None:
            return
        names = self._owned[kind].get((key[0], owner))
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._owned[kind][(key[0], owner)]

    # -- listings

    def _mark_listing(self, kind: str, now: float) -> None:
        if now - self._listing_last.get(kind, -1e9) > LISTING_GAP_SECONDS:
            self._listing_started[kind] = now
        self._listing_last[kind] = now

    def sweep(self, kind: str) -> list[tuple[str, str, str | None]]:
        """After a listing of ``kind`` is over: drop what it did not bring back (deleted while
        the watch was down: no DELETED event will come). Returns what was dropped, as
        (namespace, name, owner label)."""
        gone: list[tuple[str, str, str | None]] = []
        with self._lock:
            started = self._listing_started.get(kind)
            if started is None:
                return gone
            for key in [key for key, item in self._items[kind].items() if item.seen < started]:
                held = self._items[kind].pop(key)
                self._unindex(kind, key, held.owner)
                gone.append((key[0], key[1], held.owner))
            return gone

    # -- reads (each returns a copy of its own)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            held = self._items[kind].get((namespace, name))
            text = held.text if held is not None else None
        return json.loads(text) if text is not None else None

    def owned(self, kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The objects of ``kind`` in ``namespace`` whose owner label is ``owner``, by name."""
        with self._lock:
            items = self._items[kind]
            texts = [items[(namespace, name)].text
                     for name in sorted(self._owned[kind].get((namespace, owner), ()))]
        return [json.loads(text) for text in texts]

    def version(self, kind: str, namespace: str, name: str) -> str | None:
        with self._lock:
            held = self._items[kind].get((namespace, name))
            return held.version if held is not None else None

    def counts(self) -> dict[str, tuple[int, int]]:
        """Objects and bytes held, by kind."""
        with self._lock:
            return {kind: (len(items), sum(len(item.text) for item in items.values()))
                    for kind, items in self._items.items()}

    def clear(self) -> None:
        with self._lock:
            for kind in KINDS:
                self._items[kind].clear()
                self._owned[kind].clear()
            self._listing_started.clear()
            self._listing_last.clear()


STORE = Store()
