"""The Slipway node agent: a kubelet stand-in that runs pods as local processes.

Why it exists: the development sandbox and CI have a real control plane (apiserver,
controller-manager, scheduler) but no kubelet or container runtime, and Slipway's smoke
tests must talk to a model server that really runs. The agent registers Nodes, keeps their
Leases fresh, and for every pod bound to them starts the containers' commands (looked up in
an image table, see examples/images.yaml), gives each pod its own address (network
namespace or 127.x.y.z), runs probes and reports status like a kubelet would.

    PYTHONPATH=operator python -m slipway_dev.nodeagent --kubeconfig KC --nodes node-1 \\
        --images examples/images.yaml --state-dir /tmp/slipway-agent --network auto

The kubelet rules live in podlogic.py / probes.py / images.py (pure, unit-tested); this
module does the I/O: API calls, processes, signals, log files.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import pathlib
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Callable

import slipway_dev.images as images
import slipway_dev.kubeapi as kubeapi
import slipway_dev.podlogic as podlogic
import slipway_dev.podnet as podnet
import slipway_dev.probes as probes
import slipway_dev.serviceproxy as serviceproxy

log = logging.getLogger("slipway.nodeagent")

LEASE_NS = "kube-node-lease"
TICK = 0.5  # seconds between a pod worker's checks (process exits, due probes)


@dataclasses.dataclass
class Settings:
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    lease_seconds: int = 40
    renew_interval: float = 10.0
    node_status_interval: float = 40.0
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    gpus: int = 0
    delete_nodes_on_exit: bool = False
    kubelet_version: str = "v1.36.3-slipway"


def micro_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _exit_code(returncode: int) -> int:
    # Popen reports death by signal N as -N; container runtimes report 128+N.
    return 128 - returncode if returncode < 0 else returncode


# --- one container ---------------------------------------------------------------------


def workdir_of(spec: Mapping[str, Any], entry: Any) -> str:
    return str(spec.get("workingDir") or getattr(entry, "working_dir", "") or "")


TERMINATION_PATH = "/dev/termination-log"  # the API's default terminationMessagePath
MESSAGE_BYTES = 4096  # the kubelet's cap on a termination message read from the file
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # and on one taken from the log's tail


def own_paths(*more: str) -> list[str]:
    """The folders this machine's "images" run from: the interpreter, the repository (the image
    table's commands) and the container's working folder."""
    found = [sys.prefix, sys.base_prefix, str(pathlib.Path(__file__).resolve().parents[2]),
             *[m for m in more if m]]
    return [path for path in dict.fromkeys(found) if path.rstrip("/")]  # never "/" itself


def _hides_own_files(target: str, *own: str) -> bool:
    """True when a mount at ``target`` would cover one of ``own`` (default: own_paths())."""
    top = target.rstrip("/") or "/"
    return any(path == top or path.startswith(top + "/") or top == "/"
               for path in (own or own_paths()))


def termination_message(term_file: pathlib.Path | None, log_file: pathlib.Path | None,
                        policy: str, exit_code: int) -> str:
    """The kubelet's rule: the file's text (at most 4096 bytes); with FallbackToLogsOnError,
    an empty file and a failure, the log's last 80 lines (at most 2048 bytes)."""
    text = b""
    if term_file is not None:
        try:
            with open(term_file, "rb") as handle:
                text = handle.read(MESSAGE_BYTES)
        except OSError:
            text = b""
    if not text.strip() and policy == "FallbackToLogsOnError" and exit_code != 0 and \
            log_file is not None:
        try:
            with open(log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 64 * 1024))
                tail = handle.read()
        except OSError:
            tail = b""
        lines = tail.splitlines(keepends=True)[-LOG_TAIL_LINES:]
        text = b"".join(lines)[-LOG_TAIL_BYTES:]
    return text.decode("utf-8", "replace")


class Container:
    """The process lifecycle of one container of a pod: pull, start, probe, restart."""

    def __init__(self, worker: PodWorker, spec: Mapping[str, Any], init: bool) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.status = podlogic.ContainerStatus(name=self.name, image=spec.get("image", ""))
        if init:
            self.status.reason = "PodInitializing"
        self.entry: images.ImageEntry | None = None
        self.pull_failures = 0
        self.next_pull = 0.0
        self.pull_failed_at = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_mono = 0.0
        self.crashes = 0
        self.next_start = 0.0
        self.has_run = False
        self.kill_deadline: float | None = None
        self.term_at: float | None = None  # SIGTERM once a preStop sleep is over
        self.kill_reason = ""
        self.trackers: dict[str, probes.ProbeTracker] = {}
        self.env: dict[str, str] = {}
        self.term_file: pathlib.Path | None = None
        self.log_file: pathlib.Path | None = None

    # -- helpers
    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def succeeded(self) -> bool:
        return self.status.state == "terminated" and self.status.exit_code == 0

    def _probe_spec(self, kind: str) -> probes.ProbeSpec | None:
        if self.init:
            return None
        return probes.ProbeSpec.from_pod(kind, self.spec.get(f"{kind}Probe"))

    def _set_waiting(self, reason: str, message: str = "") -> None:
        self.status.state, self.status.reason, self.status.message = "waiting", reason, message
        self.status.ready = False

    # -- the step function, called every tick by the pod worker
    def step(self, now: float) -> None:
        if self.proc is not None:
            self._check_process(now)
        if self.proc is None:
            self._maybe_start(now)
        if self.proc is not None and self.kill_deadline is None:
            self._run_probes(now)

    def _pull(self, now: float) -> bool:
        if self.entry is not None:
            return True
        if now < self.next_pull:
            # ErrImagePull stays visible for a moment, then the back-off reason, as on a node
            if self.status.reason == "ErrImagePull" and now >= self.pull_failed_at + 1.0:
                self._set_waiting(
                    "ImagePullBackOff", f'Back-off pulling image "{self.status.image}"'
                )
            return False
        table = self.worker.agent.table
        try:
            table.reload_if_changed()
        except (OSError, images.ImageTableError) as exc:
            log.warning("image table %s unreadable: %s", table.path, exc)
        entry = table.lookup(self.status.image)
        if entry is None:
            self.pull_failures += 1
            self.pull_failed_at = now
            self.next_pull = now + self._pull_delay()
            self._set_waiting(
                "ErrImagePull",
                f'image "{self.status.image}" not found in the node agent\'s image table '
                f"{table.path}",
            )
            self.worker.event("Warning", "Failed", f"Failed to pull image {self.status.image!r}")
            return False
        self.entry = entry
        self.status.image_id = entry.image_id
        return True

    def _pull_delay(self) -> float:
        # image pulls back off from the first failure on: base, 2*base, ...
        s = self.worker.agent.settings
        return podlogic.backoff_delay(self.pull_failures + 1, s.backoff_base, s.backoff_cap)

    def _maybe_start(self, now: float) -> None:
        if self.status.state == "terminated":
            return  # not to be restarted (policy) or an init container that finished
        if now < self.next_start:
            return
        if not self._pull(now):
            return
        assert self.entry is not None
        worker = self.worker
        net = worker.net
        assert net is not None
        try:
            self.env = podlogic.resolve_env(
                worker.pod, self.spec, self.entry.env, worker.agent.configmap,
                worker.agent.secret, net.ip, worker.host_ip,
            )
            argv = images.resolve_argv(
                self.entry, self.spec.get("command"), self.spec.get("args"), self.env
            )
            # Volumes need a mount namespace of the container's own: network-namespace mode
            # (root) only; in loopback mode a container sees the host's folders, as before.
            mounts = podlogic.container_mounts(self.spec, worker.volumes()) \
                if net.exec_prefix else []
        except (podlogic.EnvError, images.ImageTableError) as exc:
            self._set_waiting("CreateContainerConfigError", str(exc))
            self.next_start = now + 2.0
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"),
            "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
            "HOSTNAME": worker.name,
            "SLIPWAY_BIND_HOST": net.bind_host,
            **(worker.agent.kubernetes_env() if net.exec_prefix else {}),
            **self.env,
        }
        # "Images" are this machine's own files (the interpreter, the repository): a volume
        # mounted over a folder that holds them (an emptyDir on /tmp, with the checkout under
        # /tmp) would hide them. They are bound back at their own paths inside a writable
        # volume; a read-only one is left out, and said.
        own = own_paths(workdir_of(self.spec, self.entry))
        kept = [m for m in mounts if not m[2] or not _hides_own_files(m[1], *own)]
        for _, target, _ in [m for m in mounts if m not in kept]:
            log.warning("%s: %s: not mounting a read-only volume at %s, which holds this "
                        "machine's interpreter or checkout; the container sees the host's "
                        "folder", worker.key, self.name, target)
        mounts = kept
        # The termination-message file, new for each run of the container, where the
        # container's terminationMessagePath says (in a /dev of the container's own)
        self.term_file = worker.log_dir / self.name / "termination-log"
        self.term_file.parent.mkdir(parents=True, exist_ok=True)
        self.term_file.write_bytes(b"")
        self.term_file.chmod(0o666)
        wrapper: list[str] = []
        if net.exec_prefix:
            term_path = str(self.spec.get("terminationMessagePath") or TERMINATION_PATH)
            wrapper = ["unshare", "--mount", "--propagation", "private", sys.executable, "-I",
                       "-m", "slipway_dev.mountns", "--dev"]
            for source, target, read_only in [*mounts, (str(self.term_file), term_path, False)]:
                wrapper += ["--bind", source, target, *(["--ro", target] if read_only else [])]
            for path in own:
                if any(_hides_own_files(m[1], path) for m in mounts):
                    wrapper += ["--keep", path]
            wrapper.append("--")
        self.env = env  # exec probes run with the same environment
        if self.has_run:
            self.status.restart_count += 1
        log_path = worker.log_dir / self.name / f"{self.status.restart_count}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_path
        workdir = self.spec.get("workingDir") or self.entry.working_dir or None
        with open(log_path, "ab") as log_fh:
            try:
                self.proc = subprocess.Popen(
                    [*net.exec_prefix, *wrapper, *argv],
                    env=env,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: signals reach its children
                )
            except OSError as exc:
                self.has_run = True
                self._terminated(now, 128, "StartError", f"failed to start {argv[0]}: {exc}")
                return
        self.has_run = True
        self.started_mono = now
        self.kill_deadline = None
        st = self.status
        st.state, st.reason, st.message = "running", "", ""
        st.started_at = podlogic.now_rfc3339()
        st.container_id = f"slipway://{worker.uid}/{self.name}/{st.restart_count}"
        st.ready = False
        self.trackers = {}
        for kind in ("startup", "liveness", "readiness"):
            spec = self._probe_spec(kind)
            if spec:
                self.trackers[kind] = probes.ProbeTracker(spec, now)
        st.started = "startup" not in self.trackers
        if not self.trackers.get("readiness") and st.started and not self.init:
            st.ready = True
        log.info("%s: started %s pid %d (%s)", worker.key, self.name, self.proc.pid, log_path)

    def _check_process(self, now: float) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            if self.term_at is not None and now >= self.term_at:
                self.term_at = None
                self.signal(signal.SIGTERM)
            if self.kill_deadline is not None and now >= self.kill_deadline:
                self.signal(signal.SIGKILL)
            return
        self.proc = None
        reason = "Completed" if code == 0 else "Error"
        exit_code = _exit_code(code)
        policy = str(self.spec.get("terminationMessagePolicy") or "File")
        message = termination_message(self.term_file, self.log_file, policy, exit_code)
        self._terminated(now, exit_code, reason, message or self.kill_reason)

    def _terminated(self, now: float, exit_code: int, reason: str, message: str) -> None:
        worker = self.worker
        st = self.status
        st.exit_code, st.finished_at = exit_code, podlogic.now_rfc3339()
        st.state, st.reason, st.message = "terminated", reason, message
        st.ready = st.started = False
        self.kill_deadline, self.term_at, self.kill_reason = None, None, ""
        log.info("%s: %s exited with %d (%s)", worker.key, self.name, exit_code, reason)
        if worker.deleting:
            return
        policy = worker.restart_policy
        if self.init and policy == "Always":
            policy = "OnFailure"  # init containers run to completion
        if not podlogic.restart_wanted(policy, exit_code):
            return
        s = worker.agent.settings
        if podlogic.should_reset_backoff(now - self.started_mono, s.backoff_cap):
            self.crashes = 0
        self.crashes += 1
        delay = podlogic.backoff_delay(self.crashes, s.backoff_base, s.backoff_cap)
        st.last_terminated = st.terminated_dict()
        self.next_start = now + delay
        if delay > 0:
            self._set_waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={self.name} "
                f"pod={worker.name}_{worker.namespace}({worker.uid})",
            )
            worker.event("Warning", "BackOff", f"Back-off restarting failed container {self.name}")
        else:
            self._set_waiting("ContainerCreating")  # restarted right away (first crash)
            self._maybe_start(now)

    def _run_probes(self, now: float) -> None:
        st = self.status
        net = self.worker.net
        assert net is not None
        startup = self.trackers.get("startup")
        if startup and not st.started:
            if startup.due(now):
                ok, msg = self._probe(startup)
                startup.record(ok, now, msg)
                if ok:
                    st.started = True
                    st.ready = "readiness" not in self.trackers
                    # the other probes start counting from here
                    for kind in ("liveness", "readiness"):
                        if kind in self.trackers:
                            tracker = self.trackers[kind]
                            tracker.next_due = now + tracker.spec.initial_delay
                elif startup.failed:
                    self.kill(f"Container {self.name} failed startup probe, will be restarted")
            return
        liveness = self.trackers.get("liveness")
        if liveness and liveness.due(now):
            ok, msg = self._probe(liveness)
            liveness.record(ok, now, msg)
            if liveness.failed:
                self.kill(f"Container {self.name} failed liveness probe, will be restarted")
                return
        readiness = self.trackers.get("readiness")
        if readiness and readiness.due(now):
            ok, msg = self._probe(readiness)
            if readiness.record(ok, now, msg):
                log.info("%s: %s ready=%s %s", self.worker.key, self.name, readiness.result, msg)
            st.ready = readiness.result

    def _probe(self, tracker: probes.ProbeTracker) -> tuple[bool, str]:
        net = self.worker.net
        assert net is not None
        ok, msg = probes.run_probe(tracker.spec, net.ip, self.spec, net.exec_prefix, self.env)
        if not ok:
            self.worker.event(
                "Warning", "Unhealthy", f"{tracker.spec.kind.capitalize()} probe failed: {msg}"
            )
        return ok, msg

    def prestop_sleep(self) -> float:
        """Seconds of the container's ``lifecycle.preStop.sleep`` hook (0: none). The other
        handlers (exec, httpGet) are not run here: logged, and the container is stopped at once."""
        hook = ((self.spec.get("lifecycle") or {}).get("preStop")) or {}
        if not hook:
            return 0.0
        sleep = hook.get("sleep")
        if isinstance(sleep, dict) and isinstance(sleep.get("seconds"), int):
            return float(max(0, sleep["seconds"]))
        log.warning("%s: %s: preStop handler %s is not supported by the node agent; skipped",
                    self.worker.key, self.name, sorted(hook))
        return 0.0

    def kill(self, reason: str, grace: float | None = None, prestop: bool = True) -> None:
        """Stop the container as the kubelet does: its preStop sleep first (the process keeps
        running and serving, so that endpoints stop routing to it before it goes), then SIGTERM,
        then SIGKILL once the grace period, which counts from the start of the hook, is over
        (at least 2 s after the SIGTERM). Checked on later ticks."""
        if self.proc is None or self.kill_deadline is not None:
            return
        if grace is None:
            grace = float(self.worker.pod["spec"].get("terminationGracePeriodSeconds", 30))
        log.info("%s: stopping %s: %s", self.worker.key, self.name, reason)
        if "probe" in reason:
            self.worker.event("Normal", "Killing", reason)
        self.kill_reason = reason
        self.status.ready = False
        now = time.monotonic()
        hook = min(self.prestop_sleep(), grace) if prestop else 0.0
        if hook > 0:
            log.info("%s: %s: preStop sleep %gs", self.worker.key, self.name, hook)
            self.term_at = now + hook
        else:
            self.signal(signal.SIGTERM)
        self.kill_deadline = now + hook + max(2.0, grace - hook)

    def signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


# --- one pod ---------------------------------------------------------------------------


class PodWorker(threading.Thread):
    """Owns a pod bound to one of the agent's nodes, from first sight to final delete."""

    def __init__(self, agent: Agent, pod: dict[str, Any], node: NodeInfo) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.node = node
        self.pod = pod
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.key = f"{self.namespace}/{self.name}"
        self.host_ip = node.host_ip
        self.start_time = podlogic.now_rfc3339()
        self.net: podnet.PodNet | None = None
        self.net_error = ""
        self.log_dir = agent.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init_containers = [Container(self, c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(self, c, False) for c in spec.get("containers") or []]
        for c in self.containers:
            if self.init_containers:
                c.status.reason = "PodInitializing"
        # Adopting a pod a previous agent ran: keep counting its restarts, like a kubelet
        # that restarts and finds the pod's containers gone.
        previous = {
            s["name"]: s
            for key in ("initContainerStatuses", "containerStatuses")
            for s in (pod.get("status") or {}).get(key) or []
        }
        for c in self.all_containers():
            prev = previous.get(c.name)
            if prev and (prev.get("state", {}).get("waiting") is None or prev.get("lastState")):
                c.status.restart_count = int(prev.get("restartCount") or 0)
                c.has_run = True
        self.wake = threading.Event()
        self.vanished = False
        self.deleting = False
        self.delete_deadline = 0.0
        self.last_sent: dict[str, Any] | None = None
        self.patch_retry_at = 0.0
        self.patch_error = ""
        self.done = False
        self.volume_dirs: dict[str, str] | None = None

    def volumes(self) -> dict[str, str]:
        """The pod's volumes, written once under its folder (name -> folder): what each
        container's volumeMounts bind. A projected service-account token is requested from the
        API server (TokenRequest, bound to this pod), as the kubelet does; it is not renewed
        (the node agent's pods live for a test, not for the token's hour)."""
        if self.volume_dirs is None:
            dirs = {}
            net = self.net
            for volume in self.pod["spec"].get("volumes") or []:
                name = str(volume.get("name", ""))
                files = podlogic.volume_files(
                    self.pod, volume, self.agent.configmap, self.agent.secret,
                    self.agent.token, net.ip if net else "", self.host_ip)
                folder = self.log_dir / "volumes" / name
                folder.mkdir(parents=True, exist_ok=True)
                for path, text in (files or {}).items():
                    target = folder / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                    target.chmod(0o644)
                dirs[name] = str(folder)
            self.volume_dirs = dirs
        return self.volume_dirs

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def gone(self) -> None:
        self.vanished = True
        self.wake.set()

    def event(self, etype: str, reason: str, message: str) -> None:
        self.agent.post_event(self, etype, reason, message)

    def all_containers(self) -> list[Container]:
        return [*self.init_containers, *self.containers]

    def run(self) -> None:
        try:
            while not self.done and not self.agent.stopping.is_set():
                try:
                    self.tick(time.monotonic())
                except Exception:  # a bug in one pod must not take the agent down
                    log.exception("%s: worker tick failed", self.key)
                self.wake.wait(TICK)
                self.wake.clear()
        finally:
            self.cleanup(force=True)
            self.agent.forget(self)

    def tick(self, now: float) -> None:
        if self.vanished:
            self.stop_all(grace=2.0, prestop=False)  # force-deleted: nobody routes to it
            if not any(c.running for c in self.all_containers()) or now > self.delete_deadline:
                self.done = True
            return
        if self.pod["metadata"].get("deletionTimestamp"):
            self.handle_deletion(now)
            return
        if self.net is None and not self.ensure_network():
            self.report(initialized=not self.init_containers)
            return
        initialized = True
        for c in self.init_containers:
            if c.succeeded:
                continue
            initialized = False
            c.step(now)
            if not c.succeeded:
                break
        if initialized:
            for c in self.containers:
                c.step(now)
        self.report(initialized)

    def ensure_network(self) -> bool:
        try:
            reported = (self.pod.get("status") or {}).get("podIP") or ""
            ip = self.node.pool.take(self.uid, reported)
            self.net = self.agent.network.setup(self.uid, ip)
            self.net_error = ""
            log.info("%s: pod IP %s on %s", self.key, ip, self.node.name)
            return True
        except (RuntimeError, OSError) as exc:
            if str(exc) != self.net_error:
                log.error("%s: network setup failed: %s", self.key, exc)
                self.event("Warning", "FailedCreatePodSandBox", str(exc))
            self.net_error = str(exc)
            return False

    def report(self, initialized: bool = False) -> None:
        now_s = podlogic.now_rfc3339()
        # our own last report wins over a possibly stale watch copy for transition times
        pod_view = self.pod
        if self.last_sent:
            merged = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
            merged.update({c["type"]: c for c in self.last_sent["conditions"]})
            pod_view = {**self.pod, "status": {"conditions": list(merged.values())}}
        for c in self.containers:
            if self.init_containers and not initialized and not c.has_run:
                c.status.reason = "PodInitializing"
        status = podlogic.pod_status(
            pod_view,
            [c.status for c in self.containers],
            [c.status for c in self.init_containers],
            initialized,
            self.net.ip if self.net else "",
            self.host_ip,
            self.start_time,
            now_s,
        )
        if self.net_error:
            status["message"] = self.net_error
        elif self.last_sent and self.last_sent.get("message"):
            status["message"] = None  # null clears it in the strategic-merge patch
        if status == self.last_sent or time.monotonic() < self.patch_retry_at:
            return
        body_status = dict(status)
        if "podIPs" in status:
            # podIPs merges by ip in a strategic patch; replace it so an address never doubles
            body_status["podIPs"] = [{"$patch": "replace"}, *status["podIPs"]]
        try:
            self.agent.api.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": body_status},
                kubeapi.STRATEGIC,
            )
        except kubeapi.ApiError as exc:
            if exc.status in (404, 409):
                self.gone()
                return
            if str(exc) != self.patch_error:  # say it once, not every tick
                log.warning("%s: status patch failed: %s", self.key, exc)
            self.patch_error = str(exc)
            self.patch_retry_at = time.monotonic() + 5.0
            return
        except Exception as exc:  # connection trouble: retry later, quietly
            log.warning("%s: status patch failed: %s", self.key, exc)
            self.patch_retry_at = time.monotonic() + 2.0
            return
        self.patch_error = ""
        if self.last_sent is None or status["phase"] != self.last_sent.get("phase"):
            log.info("%s: phase %s", self.key, status["phase"])
        self.last_sent = status

    def stop_all(self, grace: float, prestop: bool = True) -> None:
        if not self.delete_deadline:
            self.delete_deadline = time.monotonic() + grace + 5
        for c in self.all_containers():
            c.kill("pod is being deleted", grace, prestop)
            if c.proc is not None:
                c._check_process(time.monotonic())

    def handle_deletion(self, now: float) -> None:
        if not self.deleting:
            self.deleting = True
            meta = self.pod["metadata"]
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            log.info("%s: deletion requested (grace %ss)", self.key, grace)
            self.stop_all(float(grace))
        for c in self.all_containers():
            if c.proc is not None:
                c._check_process(now)
        if any(c.running for c in self.all_containers()):
            return
        self.cleanup()
        try:
            self.agent.api.request(
                "DELETE",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
            log.info("%s: deleted", self.key)
        except kubeapi.ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self.key, exc)
                return
        self.done = True

    def cleanup(self, force: bool = False) -> None:
        """Release the pod's network; with force, stop leftover processes (TERM, then KILL)."""
        alive = [c for c in self.all_containers() if c.proc is not None] if force else []
        for c in alive:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for c in alive:
            assert c.proc is not None
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.signal(signal.SIGKILL)
                c.proc.wait()
            c.proc = None
        if self.net is not None:
            self.agent.network.teardown(self.uid)
            self.node.pool.give_back(self.uid)
            self.net = None


# --- the agent -------------------------------------------------------------------------


@dataclasses.dataclass
class NodeInfo:
    name: str
    index: int
    host_ip: str
    pool: podnet.AddressPool


class Agent:
    def __init__(
        self,
        api: kubeapi.KubeApi,
        table: images.ImageTable,
        network: podnet.LoopbackNetwork | podnet.NetnsNetwork,
        node_names: list[str],
        state_dir: pathlib.Path,
        settings: Settings,
    ) -> None:
        self.api = api
        self.table = table
        self.network = network
        self.settings = settings
        self.state_dir = state_dir
        self.nodes = [
            NodeInfo(name, i, network.host_ip(i), network.pool(i))
            for i, name in enumerate(node_names, start=1)
        ]
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._events_seen: dict[tuple[str, str, str], float] = {}
        self._kubernetes_env: dict[str, str] | None = None

    # -- API lookups used by env resolution and volumes
    def token(self, ns: str, account: str, audience: str, seconds: int, pod: str,
              uid: str) -> str:
        """A service-account token bound to the pod (the TokenRequest API)."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [audience] if audience else None,
            "expirationSeconds": max(600, seconds),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}}
        try:
            answer = self.api.request(
                "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", body)
        except kubeapi.ApiError as exc:
            raise podlogic.EnvError(f"token for serviceaccount {ns}/{account}: {exc}") from None
        return str(answer["status"]["token"])

    def kubernetes_env(self) -> dict[str, str]:
        """KUBERNETES_SERVICE_HOST and friends, from the ``default/kubernetes`` Service, as
        the kubelet gives every container (read once; {} while it cannot be read)."""
        if self._kubernetes_env is None:
            try:
                service = self.api.get("/api/v1/namespaces/default/services/kubernetes")
            except kubeapi.ApiError as exc:
                log.warning("no kubernetes Service yet: %s", exc)
                return {}
            ip = service["spec"]["clusterIP"]
            port = str(service["spec"]["ports"][0]["port"])
            self._kubernetes_env = {
                "KUBERNETES_SERVICE_HOST": ip, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": ip,
            }
        return self._kubernetes_env
    def configmap(self, ns: str, name: str) -> Mapping[str, str] | None:
        try:
            return self.api.get(f"/api/v1/namespaces/{ns}/configmaps/{name}").get("data") or {}
        except kubeapi.ApiError as exc:
            if exc.status == 404:
                return None
            raise podlogic.EnvError(f"reading configmap {ns}/{name}: {exc}") from None

    def secret(self, ns: str, name: str) -> Mapping[str, str] | None:
        try:
            data = self.api.get(f"/api/v1/namespaces/{ns}/secrets/{name}").get("data") or {}
        except kubeapi.ApiError as exc:
            if exc.status == 404:
                return None
            raise podlogic.EnvError(f"reading secret {ns}/{name}: {exc}") from None
        return podlogic.decode_secret(data)

    def post_event(self, worker: PodWorker, etype: str, reason: str, message: str) -> None:
        """Best-effort core/v1 Events (what `kubectl describe pod` shows), de-duplicated."""
        key = (worker.uid, reason, message)
        now = time.monotonic()
        if now - self._events_seen.get(key, -1e9) < 60:
            return
        self._events_seen[key] = now
        stamp = podlogic.now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{worker.name}.", "namespace": worker.namespace},
            "involvedObject": {
                "kind": "Pod", "apiVersion": "v1", "name": worker.name,
                "namespace": worker.namespace, "uid": worker.uid,
            },
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": "kubelet", "host": worker.node.name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{worker.namespace}/events", body)
        except kubeapi.ApiError as exc:
            log.debug("event not posted: %s", exc)

    # -- nodes and leases
    def node_status(self, node: NodeInfo) -> dict[str, Any]:
        s = self.settings
        resources = {"cpu": s.cpu, "memory": s.memory, "pods": s.pods, "ephemeral-storage": "100Gi"}
        if s.gpus:
            resources["nvidia.com/gpu"] = str(s.gpus)
        now = podlogic.now_rfc3339()

        def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "slipway node agent is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.host_ip},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": f"slipway-{node.name}",
                "systemUUID": f"slipway-{node.name}",
                "bootID": str(os.getpid()),
                "kernelVersion": platform.release(),
                "osImage": "Slipway node agent",
                "containerRuntimeVersion": "slipway-local://1",
                "kubeletVersion": s.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64" if platform.machine() == "x86_64" else platform.machine(),
            },
        }

    def register_nodes(self) -> None:
        for node in self.nodes:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "labels": {
                        "kubernetes.io/hostname": node.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "node.kubernetes.io/instance-type": "slipway-local",
                        "slipway.dev/node-agent": "true",
                    },
                },
                "spec": {
                    "podCIDR": str(node.pool.subnet),
                    "podCIDRs": [str(node.pool.subnet)],
                },
            }
            try:
                self.api.request("POST", "/api/v1/nodes", body)
                log.info("node %s registered (pods %s)", node.name, node.pool.subnet)
            except kubeapi.ApiError as exc:
                if exc.status != 409:
                    raise
                log.info("node %s exists; taking it over", node.name)
            self.patch_node_status(node)
            self.renew_lease(node)

    def patch_node_status(self, node: NodeInfo) -> None:
        self.api.request(
            "PATCH", f"/api/v1/nodes/{node.name}/status",
            {"status": self.node_status(node)}, kubeapi.STRATEGIC,
        )

    def renew_lease(self, node: NodeInfo) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{node.name}"
        spec = {
            "holderIdentity": node.name,
            "leaseDurationSeconds": self.settings.lease_seconds,
            "renewTime": micro_time(),
        }
        try:
            self.api.request("PATCH", path, {"spec": spec}, kubeapi.MERGE)
        except kubeapi.ApiError as exc:
            if exc.status != 404:
                raise
            uid = self.api.get(f"/api/v1/nodes/{node.name}")["metadata"]["uid"]
            self.api.request(
                "POST",
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": node.name,
                        "namespace": LEASE_NS,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}
                        ],
                    },
                    "spec": spec,
                },
            )

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(self.settings.renew_interval):
            status_due = time.monotonic() - last_status >= self.settings.node_status_interval
            for node in self.nodes:
                try:
                    self.renew_lease(node)
                    if status_due:
                        self.patch_node_status(node)
                except Exception as exc:  # keep beating; the API may be restarting
                    log.warning("heartbeat for %s failed: %s", node.name, exc)
            if status_due:
                last_status = time.monotonic()

    # -- pods
    def watch_loop(self, node: NodeInfo) -> None:
        selector = f"spec.nodeName={node.name}"
        while not self.stopping.is_set():
            try:
                listing = self.api.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self.handle(node, "ADDED", pod)
                with self.lock:
                    stale = [
                        w for w in self.workers.values() if w.node is node and w.uid not in seen
                    ]
                for w in stale:
                    w.gone()
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for ev in self.api.watch(
                        "/api/v1/pods", fieldSelector=selector, resourceVersion=rv,
                        allowWatchBookmarks="true",
                    ):
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            raise kubeapi.ApiError(int(obj.get("code") or 500), str(obj))
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self.handle(node, ev["type"], obj)
                        if self.stopping.is_set():
                            return
            except Exception as exc:
                if self.stopping.is_set():
                    return
                if not (isinstance(exc, kubeapi.ApiError) and exc.status == 410):
                    log.warning("pod watch for %s: %s; relisting", node.name, exc)
                    self.stopping.wait(1.0)

    def handle(self, node: NodeInfo, etype: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if etype == "DELETED":
                if worker:
                    worker.gone()
                return
            if worker:
                worker.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if pod["metadata"].get("deletionTimestamp"):
                # not ours to run (e.g. left over from an earlier agent): finish the delete
                threading.Thread(target=self._final_delete, args=(pod,), daemon=True).start()
                return
            if phase in ("Succeeded", "Failed"):
                return
            worker = PodWorker(self, pod, node)
            self.workers[uid] = worker
        log.info("%s: assigned to %s", worker.key, node.name)
        worker.start()

    def _final_delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.api.request(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except kubeapi.ApiError:
            pass

    def forget(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    # -- lifecycle
    def start(self) -> None:
        self.register_nodes()
        targets: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
            ("heartbeat", self.heartbeat_loop, ())
        ]
        targets += [(f"watch-{n.name}", self.watch_loop, (n,)) for n in self.nodes]
        for name, fn, args in targets:
            t = threading.Thread(target=fn, args=args, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        """Kill every process, remove every namespace; Nodes stay unless asked otherwise."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.wake.set()
        for w in workers:
            w.join(timeout=10)
        for w in workers:  # a worker stuck in an API call: clean up from here
            w.cleanup(force=True)
        if self.settings.delete_nodes_on_exit:
            for node in self.nodes:
                try:
                    self.api.request("DELETE", f"/api/v1/nodes/{node.name}")
                except kubeapi.ApiError as exc:
                    log.warning("deleting node %s: %s", node.name, exc)
        self.network.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m slipway_dev.nodeagent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", default="node-1", help="comma-separated node names")
    p.add_argument("--images", required=True, help="image table (examples/images.yaml)")
    p.add_argument("--state-dir", required=True, help="per-container logs go here")
    p.add_argument("--network", choices=["auto", "netns", "loopback"], default="auto")
    p.add_argument("--bridge", default="slw0", help="host bridge name in netns mode")
    p.add_argument("--service-cidr", default=None,
                   help="serve the cluster IPs of this range (netns mode): a userspace "
                        "kube-proxy on the bridge")
    p.add_argument("--pod-cidr", default=None,
                   help="pod range (default 10.213.0.0/16 netns, 127.213.0.0/16 loopback); "
                        "node i gets the i-th /24")
    p.add_argument("--crashloop-backoff-base", type=float, default=10.0,
                   help="first CrashLoopBackOff/ImagePullBackOff delay in seconds")
    p.add_argument("--crashloop-backoff-max", type=float, default=300.0)
    p.add_argument("--gpus", type=int, default=0, help="advertise nvidia.com/gpu: N")
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--max-pods", default="110")
    p.add_argument("--delete-nodes-on-exit", action="store_true")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter substituted for {python} in the image table")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    state_dir = pathlib.Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    table = images.ImageTable(args.images, python=args.python)
    api = kubeapi.KubeApi(args.kubeconfig)
    network = podnet.make_network(args.network, args.bridge, args.pod_cidr)
    log.info("network mode %s", network.mode)
    settings = Settings(
        backoff_base=args.crashloop_backoff_base,
        backoff_cap=args.crashloop_backoff_max,
        gpus=args.gpus, cpu=args.cpu, memory=args.memory, pods=args.max_pods,
        delete_nodes_on_exit=args.delete_nodes_on_exit,
    )
    names = [n.strip() for n in args.nodes.split(",") if n.strip()]
    agent = Agent(api, table, network, names, state_dir, settings)
    proxy = None
    if args.service_cidr and isinstance(network, podnet.NetnsNetwork):
        server = urllib.parse.urlsplit(api.host)
        proxy = serviceproxy.ServiceProxy(api, network.bridge, args.service_cidr,
                                          str(network.network),
                                          api_server=(server.hostname or "127.0.0.1",
                                                      server.port or 443))
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
        if proxy is not None:
            proxy.start()
        log.info("node agent ready: nodes %s", ", ".join(names))
        stop.wait()
    finally:
        if proxy is not None:
            proxy.stop()
        agent.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
