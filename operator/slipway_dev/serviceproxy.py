"""Cluster IPs that answer: a small kube-proxy for the local cluster (userspace mode).

Why it exists: without it a Service's cluster IP is only allocated, never routed, so nothing
that dials it (the operator's direct-route smoke tests, a pod) reaches the pods behind it. Like
kube-proxy, it follows Services and their EndpointSlices, all of them, selector-made or written
by hand, and sends a connection to a cluster IP and port on to one ready endpoint (round robin).
Each cluster IP is an address of the agent's own bridge, so connections to it stay on this
machine; endpoints outside the pod network are never dialled. A Service without a ready endpoint
has no listener, so a connection to it is refused, as kube-proxy rejects it.

It runs inside the node agent, in network-namespace mode only (it needs the bridge).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from slipway_dev import kubeapi, podnet

log = logging.getLogger("slipway.serviceproxy")


@dataclasses.dataclass(frozen=True)
class Port:
    name: str
    port: int


@dataclasses.dataclass
class Service:
    cluster_ip: str
    ports: list[Port]


class ServiceProxy:
    def __init__(self, api: kubeapi.KubeApi, bridge: str, service_cidr: str,
                 pod_cidr: str, api_server: tuple[str, int] | None = None) -> None:
        """``api_server``: where the ``default/kubernetes`` Service goes (the API server on
        this machine's loopback, as its own endpoint says), instead of its EndpointSlice: the
        one Service whose endpoint is outside the pod network, and the proxy's own setting,
        not something a Service or EndpointSlice written by a user can point anywhere."""
        self.api = api
        self.api_server = api_server
        self.bridge = bridge
        self.service_net = ipaddress.ip_network(service_cidr)
        self.pod_net = ipaddress.ip_network(pod_cidr)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.services: dict[tuple[str, str], Service] = {}
        # (namespace, slice name) -> (service name, {port name: port}, [ready addresses])
        self.slices: dict[tuple[str, str], tuple[str, dict[str, int], list[str]]] = {}
        self.addresses: set[str] = set()
        self.listeners: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.turn = 0
        # One apply at a time, each from the tables as they are when it starts: two applies
        # interleaved at their awaits would each act on its own snapshot, and an older one
        # could remove the address a newer one had just added (a Service whose endpoint
        # became ready in between then answered "no route to host" for good).
        self._dirty = False
        self._applying = False
        self.loop = asyncio.new_event_loop()
        self.threads: list[threading.Thread] = []

    # -- lifecycle

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("svcproxy-loop", self.loop.run_forever),
            ("svcproxy-services", lambda: self._watch("/api/v1/services", self._on_service)),
            ("svcproxy-slices", lambda: self._watch(
                "/apis/discovery.k8s.io/v1/endpointslices", self._on_slice)),
        ]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("service proxy for %s on bridge %s", self.service_net, self.bridge)

    def stop(self) -> None:
        self.stopping.set()

        async def close_all() -> None:
            for server in self.listeners.values():
                server.close()
            self.listeners.clear()
            self.loop.stop()

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(close_all()))
        for address in list(self.addresses):
            podnet._run(["ip", "addr", "del", f"{address}/32", "dev", self.bridge], check=False)

    # -- watching

    def _watch(self, path: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.api.get(path)
                seen = []
                for item in listing.get("items") or []:
                    handle("ADDED", item)
                    seen.append(item)
                self._forget_missing(path, seen)
                rv = listing["metadata"]["resourceVersion"]
                for event in self.api.watch(path, resourceVersion=rv,
                                            allowWatchBookmarks="true"):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise kubeapi.ApiError(int(obj.get("code") or 500), str(obj))
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        handle(event["type"], obj)
                    if self.stopping.is_set():
                        return
            except Exception as exc:  # relist after any break, as an informer does
                if self.stopping.is_set():
                    return
                if not (isinstance(exc, kubeapi.ApiError) and exc.status == 410):
                    log.warning("watch %s: %s; relisting", path, exc)
                self.stopping.wait(1.0)

    def _forget_missing(self, path: str, items: list[dict[str, Any]]) -> None:
        keys = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}
        with self.lock:
            table: dict[Any, Any] = self.services if path.endswith("services") else self.slices
            for key in [k for k in table if k not in keys]:
                del table[key]
        self._sync()

    def _on_service(self, kind: str, obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        ip = spec.get("clusterIP") or ""
        with self.lock:
            self.services.pop(key, None)
            if kind != "DELETED" and spec.get("type", "ClusterIP") != "ExternalName" \
                    and ip not in ("", "None") and self._in(ip, self.service_net):
                ports = [Port(str(p.get("name") or ""), int(p["port"]))
                         for p in spec.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]
                self.services[key] = Service(ip, ports)
        self._sync()

    def _on_slice(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        with self.lock:
            self.slices.pop(key, None)
            if kind != "DELETED" and service:
                ports = {str(p.get("name") or ""): int(p["port"])
                         for p in obj.get("ports") or [] if p.get("port")}
                ready = [str(address) for endpoint in obj.get("endpoints") or []
                         if (endpoint.get("conditions") or {}).get("ready") is not False
                         for address in endpoint.get("addresses") or []]
                self.slices[key] = (service, ports, ready)
        self._sync()

    @staticmethod
    def _in(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        try:
            return ipaddress.ip_address(address) in network
        except ValueError:
            return False

    # -- routing

    def endpoints(self, namespace: str, service: str, port_name: str) -> list[tuple[str, int]]:
        """Ready endpoints of one Service port, inside the pod network only (the API server's
        own Service excepted, see ``api_server``)."""
        if (namespace, service) == ("default", "kubernetes") and self.api_server is not None:
            return [self.api_server]
        with self.lock:
            out = []
            for (ns, _), (owner, ports, ready) in self.slices.items():
                if ns != namespace or owner != service or port_name not in ports:
                    continue
                out += [(ip, ports[port_name]) for ip in ready if self._in(ip, self.pod_net)]
            return sorted(set(out))

    def _wanted(self) -> dict[tuple[str, int], tuple[str, str, str]]:
        with self.lock:
            services = dict(self.services)
        wanted = {}
        for (namespace, name), service in services.items():
            for port in service.ports:
                if self.endpoints(namespace, name, port.name):
                    wanted[(service.cluster_ip, port.port)] = (namespace, name, port.name)
        return wanted

    def _sync(self) -> None:
        if not self.stopping.is_set():
            self.loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        """On the loop: note that the tables changed; start the applier unless it runs (it
        goes round again, so a burst of changes costs one or two applies, not one each)."""
        self._dirty = True
        if not self._applying:
            self._applying = True
            self.loop.create_task(self._apply_while_dirty())

    async def _apply_while_dirty(self) -> None:
        try:
            while self._dirty and not self.stopping.is_set():
                self._dirty = False
                try:
                    await self._apply()
                except Exception:  # noqa: BLE001 - the next change tries again
                    log.exception("service proxy: applying the routes failed")
        finally:
            self._applying = False

    def settled(self) -> bool:
        """No change waits to be applied (for tests)."""
        return not self._dirty and not self._applying

    async def _apply(self) -> None:
        wanted = self._wanted()
        for key in [k for k in self.listeners if k not in wanted]:
            self.listeners.pop(key).close()
            log.info("service proxy: %s:%d closed (no ready endpoint)", *key)
        for ip in {ip for ip, _ in wanted} - self.addresses:
            await asyncio.to_thread(podnet._run, ["ip", "addr", "add", f"{ip}/32", "dev",
                                                  self.bridge], False)
            self.addresses.add(ip)
        for (ip, port), route in wanted.items():
            if (ip, port) in self.listeners:
                continue
            try:
                self.listeners[(ip, port)] = await asyncio.start_server(
                    functools.partial(self._relay, route=route), ip, port, reuse_address=True)
                log.info("service proxy: %s:%d listening for %s/%s", ip, port, *route[:2])
            except OSError as exc:
                log.warning("cannot listen on %s:%d: %s", ip, port, exc)
        for ip in self.addresses - {ip for ip, _ in wanted}:
            await asyncio.to_thread(podnet._run, ["ip", "addr", "del", f"{ip}/32", "dev",
                                                  self.bridge], False)
            self.addresses.discard(ip)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     route: tuple[str, str, str]) -> None:
        choices = self.endpoints(*route)
        if not choices:
            writer.close()
            return
        self.turn += 1
        ip, port = choices[self.turn % len(choices)]
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()
            except (OSError, RuntimeError):
                sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                side.close()
