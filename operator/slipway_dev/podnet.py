"""Network identity of the node agent's pods: one network namespace per pod, or loopback.

Why it exists: Services/EndpointSlices refuse loopback addresses, and several pods of one
Deployment all want port 8080; so in `netns` mode each pod gets its own namespace with a
veth into a host bridge and an address of its own, reachable from the host (and nothing
else: no default route, no forwarding, no NAT). `loopback` mode is the unprivileged
fallback: each pod gets a distinct 127.x.y.z and is told to bind it (SLIPWAY_BIND_HOST).
Every address handed out comes from the node's /24 inside the configured range.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence

log = logging.getLogger("slipway.podnet")


@dataclasses.dataclass(frozen=True)
class PodNet:
    ip: str
    exec_prefix: tuple[str, ...]  # prepended to a pod's argv (ip netns exec NAME)
    bind_host: str  # value of SLIPWAY_BIND_HOST for the pod's processes
    netns: str = ""


# The host's ARP table holds one entry per pod on the bridge. Linux's defaults (128 / 512 /
# 1024) let it grow past 512 only for seconds, and a node full of pods then reports
# "neighbor table overflow": at 1,000 pods (2026-12-03) exactly 512 of them answered their
# probes and the rest never did. Raised at the bridge's start to values common on Kubernetes
# nodes; never lowered.
NEIGH_THRESHOLDS = (4096, 8192, 16384)
NEIGH_SYSCTL = pathlib.Path("/proc/sys/net/ipv4/neigh/default")


def raised_thresholds(current: Sequence[int], wanted: Sequence[int] = NEIGH_THRESHOLDS,
                      ) -> tuple[int, ...] | None:
    """gc_thresh1..3 to write so that each is at least ``wanted`` (None: all already are)."""
    raised = tuple(max(have, want) for have, want in zip(current, wanted, strict=True))
    return None if raised == tuple(current) else raised


def ensure_neighbour_room(root: pathlib.Path = NEIGH_SYSCTL) -> None:
    files = [root / f"gc_thresh{i}" for i in (1, 2, 3)]
    try:
        current = [int(path.read_text().split()[0]) for path in files]
    except (OSError, ValueError, IndexError):
        return  # not Linux's layout: nothing to do
    raised = raised_thresholds(current)
    if raised is None:
        return
    try:
        for path, value in zip(files, raised, strict=True):
            path.write_text(f"{value}\n")
    except OSError as error:
        log.warning("could not raise the ARP table's limits %s to %s (%s): beyond about 500 "
                    "pods, some will not be reachable", current, list(raised), error)
        return
    log.info("ARP table limits raised from %s to %s (one entry per pod)", current, list(raised))


class AddressPool:
    """Pod addresses of one node: the node's /24 (index i) inside the agent's range."""

    def __init__(self, cidr: str, node_index: int) -> None:
        network = ipaddress.IPv4Network(cidr)  # pod networks here are IPv4
        subnets = list(network.subnets(new_prefix=24)) if network.prefixlen < 24 else [network]
        if node_index >= len(subnets):
            raise ValueError(f"{cidr} has no /24 for node #{node_index}")
        self.subnet = subnets[node_index]
        self._free = [str(h) for h in self.subnet.hosts()][1:]  # .1 is kept for the gateway
        self._used: dict[str, str] = {}
        self._lock = threading.Lock()

    def take(self, key: str, preferred: str = "") -> str:
        """An address for key; preferred (the IP a pod already reports, e.g. after an agent
        restart) is honoured when free, since the API refuses to change a pod's IPs."""
        with self._lock:
            if key in self._used:
                return self._used[key]
            if preferred in self._free:
                self._free.remove(preferred)
                self._used[key] = preferred
                return preferred
            if not self._free:
                raise RuntimeError(f"no free pod address left in {self.subnet}")
            ip = self._free.pop(0)
            self._used[key] = ip
            return ip

    def give_back(self, key: str) -> None:
        with self._lock:
            ip = self._used.pop(key, None)
            if ip:
                self._free.append(ip)  # reused last, so a fresh pod rarely inherits an IP


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def netns_usable() -> bool:
    """Root, an `ip` binary and a kernel that lets us create a namespace."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"slwprobe{os.getpid()}"
    if _run(["ip", "netns", "add", probe], check=False).returncode != 0:
        return False
    _run(["ip", "netns", "del", probe], check=False)
    return True


class LoopbackNetwork:
    """Distinct 127.x.y.z per pod; the process must bind it itself."""

    mode = "loopback"

    def __init__(self, cidr: str = "127.213.0.0/16") -> None:
        if not ipaddress.IPv4Network(cidr).subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            raise ValueError("loopback mode needs a range inside 127.0.0.0/8")
        self.cidr = cidr

    def host_ip(self, node_index: int) -> str:
        return "127.0.0.1"

    def pool(self, node_index: int) -> AddressPool:
        return AddressPool(self.cidr, node_index)

    def setup(self, key: str, ip: str) -> PodNet:
        return PodNet(ip=ip, exec_prefix=(), bind_host=ip)

    def teardown(self, key: str) -> None:
        pass

    def close(self) -> None:
        pass


class NetnsNetwork:
    """A Linux bridge on the host and a network namespace + veth pair per pod."""

    mode = "netns"

    def __init__(self, bridge: str = "slw0", cidr: str = "10.213.0.0/16") -> None:
        if len(bridge) > 6:
            raise ValueError("bridge name must be at most 6 characters (veth names derive)")
        self.bridge = bridge
        self.network = ipaddress.ip_network(cidr)
        self.gateway = str(next(self.network.hosts()))
        self._lock_fh = open(f"/run/slipway-nodeagent-{bridge}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another node agent owns bridge {bridge}; use --bridge/--pod-cidr"
            ) from None
        self._check_range_is_free()
        self._remove_leftovers()
        # A fixed address: a bridge without one takes its lowest port's, which changes as pods'
        # veths come and go; every pod's ARP entry for the bridge (cluster IPs, the API server)
        # then points at a port until the kernel probes it again (~5 s of stalled connections).
        _run(["ip", "link", "add", "name", bridge, "address", bridge_mac(bridge), "type",
              "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])
        ensure_neighbour_room()
        log.info("bridge %s %s/%d up", bridge, self.gateway, self.network.prefixlen)

    def _check_range_is_free(self) -> None:
        # Refuse a range that overlaps a route the host already has: pods must not shadow it.
        out = _run(["ip", "-4", "route", "show"]).stdout
        for line in out.splitlines():
            dest, _, rest = line.partition(" ")
            if dest == "default" or f" dev {self.bridge} " in f" {rest} ":
                continue
            try:
                if ipaddress.ip_network(dest, strict=False).overlaps(self.network):
                    raise RuntimeError(f"pod range {self.network} overlaps host route {line!r}")
            except ValueError:
                continue

    def _remove_leftovers(self) -> None:
        """A previous agent that died without cleanup leaves namespaces, veths, bridge, and
        the pods' processes in those namespaces (each in a session of its own, so no signal
        to the agent reached them): they are killed first, or they would go on serving and
        loading the host after their namespace's name is gone."""
        remove_bridge_leftovers(self.bridge)

    def host_ip(self, node_index: int) -> str:
        return self.gateway

    def pool(self, node_index: int) -> AddressPool:
        return AddressPool(str(self.network), node_index)

    def _names(self, key: str) -> tuple[str, str, str]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{self.bridge}-{digest}", f"{self.bridge}h{digest}", f"{self.bridge}p{digest}"

    def setup(self, key: str, ip: str) -> PodNet:
        netns, host_if, peer_if = self._names(key)
        self.teardown(key)  # idempotent: a half-made namespace from a failed try goes first
        prefix = self.network.prefixlen
        steps = [
            ["ip", "netns", "add", netns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if],
            ["ip", "link", "set", peer_if, "netns", netns],
            ["ip", "link", "set", host_if, "master", self.bridge, "up"],
            ["ip", "-n", netns, "link", "set", peer_if, "name", "eth0"],
            ["ip", "-n", netns, "addr", "add", f"{ip}/{prefix}", "dev", "eth0"],
            ["ip", "-n", netns, "link", "set", "eth0", "up"],
            ["ip", "-n", netns, "link", "set", "lo", "up"],
            # deliberately no default route: pods reach the bridge subnet and nothing else
        ]
        try:
            for argv in steps:
                _run(argv)
        except RuntimeError:
            self.teardown(key)
            raise
        return PodNet(
            ip=ip, exec_prefix=("ip", "netns", "exec", netns), bind_host="0.0.0.0", netns=netns
        )

    def teardown(self, key: str) -> None:
        netns, host_if, _ = self._names(key)
        _run(["ip", "link", "del", host_if], check=False)  # deletes the peer too
        _run(["ip", "netns", "del", netns], check=False)

    def close(self) -> None:
        self._remove_leftovers()
        pathlib.Path(self._lock_fh.name).unlink(missing_ok=True)
        self._lock_fh.close()


def kill_namespace_processes(netns: str) -> int:
    """SIGKILL every process in network namespace ``netns``; how many there were."""
    return _kill(namespace_pids([netns]).get(netns, []))


def namespace_pids(names: list[str]) -> dict[str, list[int]]:
    """The processes in each named network namespace, from one pass over /proc (what
    ``ip netns pids`` does for one name, for a thousand at once)."""
    by_inode: dict[tuple[int, int], str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{name}")
            by_inode[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in names}
    if not by_inode:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # gone, or a kernel thread
            continue
        holder = by_inode.get((st.st_dev, st.st_ino))
        if holder is not None:
            found[holder].append(int(entry.name))
    return found


def _kill(pids: list[int]) -> int:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def remove_bridge_leftovers(bridge: str) -> int:
    """Kill the processes in ``bridge``'s pod namespaces, delete the namespaces, the veths and
    the bridge; how many processes were killed (a warning names the count). For a node agent
    that died without cleanup, or was killed while it cleaned up a thousand pods: deleting
    goes through one ``ip -batch`` process, not two commands per pod."""
    names = [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines()
             if line.strip() and line.split()[0].startswith(f"{bridge}-")]
    killed = sum(_kill(pids) for pids in namespace_pids(names).values())
    if killed:
        log.warning("killed %d leftover pod process(es) in %s's namespaces", killed, bridge)
    links = []
    for line in _run(["ip", "-o", "link", "show"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{bridge}h") or name == bridge:
            links.append(name)
    commands = [f"netns del {name}" for name in names] + [f"link del {name}" for name in links]
    if commands:
        # -force: go on past a line that fails (a veth gone with its namespace just before)
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(commands) + "\n",
                       capture_output=True, text=True, check=False)
    if names:
        log.info("removed %d leftover namespace(s) and %d link(s) of %s", len(names),
                 len(links), bridge)
    return killed


def bridge_mac(bridge: str) -> str:
    """A stable, locally administered unicast MAC address for the bridge named ``bridge``."""
    digest = hashlib.sha256(f"slipway-bridge:{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def make_network(mode: str, bridge: str, cidr: str | None) -> LoopbackNetwork | NetnsNetwork:
    if mode == "auto":
        mode = "netns" if netns_usable() else "loopback"
    if mode == "netns":
        return NetnsNetwork(bridge, cidr or "10.213.0.0/16")
    if mode == "loopback":
        return LoopbackNetwork(cidr or "127.213.0.0/16")
    raise ValueError(f"unknown network mode {mode!r}")
