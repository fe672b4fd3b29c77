"""Container probes with kubelet semantics, for the node agent.

Why it exists: the operator's rollout logic depends on readiness and liveness behaving as
on a real node (thresholds, initial delays, the startup probe gating the others). The state
machine (ProbeTracker) is pure and driven by an injected clock so it can be unit-tested;
run_probe() does the actual I/O (HTTP GET, TCP connect, exec).
"""
from __future__ import annotations

import dataclasses
import http.client
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """A container probe as in the pod spec, defaults applied like the API server does."""

    kind: str  # "liveness" | "readiness" | "startup"
    handler: str  # "httpGet" | "tcpSocket" | "exec" | "grpc"
    config: Mapping[str, Any]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_pod(cls, kind: str, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
        if not probe:
            return None
        handler = next((h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe), "")
        if not handler:
            return None
        success = int(probe.get("successThreshold") or 1)
        return cls(
            kind=kind,
            handler=handler,
            config=probe[handler] or {},
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            # liveness and startup probes must use successThreshold 1 (API validation)
            success_threshold=success if kind == "readiness" else 1,
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


class ProbeTracker:
    """Consecutive-result counting for one probe of one container run.

    result is the probe's current verdict: readiness starts False, liveness True (a
    container is presumed alive), startup False until it has succeeded once.
    """

    def __init__(self, spec: ProbeSpec, started_at: float) -> None:
        self.spec = spec
        self.started_at = started_at
        self.result = spec.kind == "liveness"
        self.successes = 0
        self.failures = 0
        self.next_due = started_at + spec.initial_delay
        self.last_message = ""

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, success: bool, now: float, message: str = "") -> bool:
        """Feed one probe outcome; returns True when result flipped."""
        self.next_due = now + self.spec.period
        self.last_message = message
        before = self.result
        if success:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.spec.failure_threshold:
                self.result = False
        return self.result != before

    @property
    def failed(self) -> bool:
        """For liveness/startup: the threshold of consecutive failures has been reached."""
        return self.failures >= self.spec.failure_threshold


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe port is a number or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for p in container.get("ports") or []:
        if p.get("name") == text:
            return int(p["containerPort"])
    raise ValueError(f"port name {text!r} not found in the container's ports")


def run_probe(
    spec: ProbeSpec,
    pod_ip: str,
    container: Mapping[str, Any],
    exec_prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Execute one probe; returns (success, message). Never raises."""
    try:
        if spec.handler == "httpGet":
            return _http_get(spec, pod_ip, container)
        if spec.handler == "tcpSocket":
            port = resolve_port(spec.config.get("port"), container)
            host = spec.config.get("host") or pod_ip
            with socket.create_connection((host, port), timeout=spec.timeout):
                return True, ""
        if spec.handler == "exec":
            argv = [*exec_prefix, *(spec.config.get("command") or [])]
            proc = subprocess.run(
                argv, capture_output=True, timeout=spec.timeout, env=dict(env or {})
            )
            out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-200:]
            return proc.returncode == 0, out
        return False, f"{spec.handler} probes are not supported by the slipway node agent"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {spec.timeout:g}s"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"{spec.kind} probe failed: {exc}"


def _http_get(spec: ProbeSpec, pod_ip: str, container: Mapping[str, Any]) -> tuple[bool, str]:
    cfg = spec.config
    if str(cfg.get("scheme") or "HTTP").upper() != "HTTP":
        return False, "only scheme HTTP is supported"
    port = resolve_port(cfg.get("port"), container)
    host = cfg.get("host") or pod_ip
    conn = http.client.HTTPConnection(host, port, timeout=spec.timeout)
    try:
        headers = {"User-Agent": "kube-probe/slipway", "Accept": "*/*"}
        for h in cfg.get("httpHeaders") or []:
            headers[h["name"]] = h["value"]
        path = cfg.get("path") or "/"
        conn.request("GET", path if path.startswith("/") else "/" + path, headers=headers)
        resp = conn.getresponse()
        resp.read(1024)
        # kubelet: 200 <= code < 400 is success (redirects are not followed off-host)
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status}"
    finally:
        conn.close()
