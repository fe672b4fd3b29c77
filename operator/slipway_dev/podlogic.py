"""Pure kubelet logic of the node agent: env resolution, back-off, phase, pod status.

Why it exists: these rules decide what the operator observes (CrashLoopBackOff timing,
Ready conditions, phases), so they are kept free of processes and API calls and are
unit-tested directly; nodeagent.py only feeds them facts and sends their results.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import slipway_dev.images as images

# Callbacks the agent provides to read ConfigMaps/Secrets: (namespace, name) -> data or None.
Lookup = Callable[[str, str], "Mapping[str, str] | None"]


def now_rfc3339(ts: float | None = None) -> str:
    moment = (
        datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
        if ts is not None
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- back-off ----------------------------------------------------------------------------


def backoff_delay(crashes: int, base: float = 10.0, cap: float = 300.0) -> float:
    """Delay before restarting after the n-th consecutive crash (kubelet semantics): the
    first restart is immediate, then base, 2*base, 4*base ... capped at cap."""
    if crashes <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (crashes - 2)))


def should_reset_backoff(ran_for: float, cap: float = 300.0) -> bool:
    """kubelet forgets a container's back-off after it ran twice the cap without crashing."""
    return ran_for >= 2 * cap


def restart_wanted(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True  # Always (the default)


# --- environment -------------------------------------------------------------------------


class EnvError(Exception):
    """A referenced ConfigMap/Secret/key is missing: CreateContainerConfigError."""


_LABEL_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _LABEL_RE.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise EnvError(f"unsupported fieldRef fieldPath {path!r}")


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str] | None:
    if data is None:
        return None
    return {k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in data.items()}


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    image_env: Sequence[tuple[str, str]],
    configmap: Lookup,
    secret: Lookup,
    pod_ip: str = "",
    host_ip: str = "",
) -> dict[str, str]:
    """The container's environment: image env, then envFrom, then env (later wins);
    $(VAR) in env values expands against what is defined before it, like the kubelet."""
    ns = (pod.get("metadata") or {}).get("namespace", "default")
    result: dict[str, str] = dict(image_env)

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, fetch in (("configMapRef", configmap), ("secretRef", secret)):
            ref = source.get(kind)
            if not ref:
                continue
            data = fetch(ns, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f"{kind[:-3]} {ns}/{ref.get('name')} not found")
            for key, value in data.items():
                result[prefix + key] = value

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var or var.get("valueFrom") is None:
            result[name] = images.expand(str(var.get("value") or ""), result)
            continue
        source = var["valueFrom"]
        if source.get("fieldRef"):
            result[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif source.get("configMapKeyRef") or source.get("secretKeyRef"):
            is_cm = bool(source.get("configMapKeyRef"))
            ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
            data = (configmap if is_cm else secret)(ns, ref.get("name", ""))
            what = "configmap" if is_cm else "secret"
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                missing = "not found" if data is None else f"has no key {ref.get('key')!r}"
                raise EnvError(f"{what} {ns}/{ref.get('name')} {missing}")
            result[name] = data[ref["key"]]
        elif source.get("resourceFieldRef"):
            # Only the raw quantity; divisors and node-allocatable defaults are not modelled.
            ref = source["resourceFieldRef"]
            section, _, res = str(ref.get("resource", "")).partition(".")
            resources = container.get("resources") or {}
            result[name] = str((resources.get(section) or {}).get(res, "0"))
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
    return result


# --- container and pod status ------------------------------------------------------------


@dataclasses.dataclass
class ContainerStatus:
    """What the agent reports for one container (containerStatuses[] in the API)."""

    name: str
    image: str
    image_id: str = ""
    container_id: str = ""
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    ready: bool = False
    started: bool = False

    def terminated_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at or None,
            "containerID": self.container_id or None,
        }
        if self.message:
            out["message"] = self.message
        return {k: v for k, v in out.items() if v is not None}

    def to_api(self) -> dict[str, Any]:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": self.terminated_dict()}
        else:
            waiting: dict[str, Any] = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def pod_phase(restart_policy: str, statuses: Sequence[ContainerStatus], initialized: bool) -> str:
    """kubelet's getPhase for regular containers."""
    if not initialized:
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for st in statuses:
        if st.state == "running":
            running += 1
        elif st.state == "terminated":
            stopped += 1
            succeeded += st.exit_code == 0
        elif st.last_terminated:  # waiting to be restarted after having run
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if not stopped:
        return "Pending"
    if restart_policy in ("Always", ""):
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"  # OnFailure: failed containers will be restarted


def _condition(
    ctype: str, ok: bool, previous: Mapping[str, Mapping[str, Any]], now: str, reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(ctype)
    # lastTransitionTime only moves when the status flips, as on a real node
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else now
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    # null removes a stale reason/message in the strategic-merge patch once the status is ok
    cond["reason"] = reason if not ok and reason else None
    cond["message"] = message if not ok and message else None
    return cond


def pod_conditions(
    pod: Mapping[str, Any],
    statuses: Sequence[ContainerStatus],
    initialized: bool,
    now: str,
    terminal: bool = False,
) -> list[dict[str, Any]]:
    """PodScheduled, Initialized, ContainersReady and Ready (readiness gates honoured).
    Conditions owned by others (readiness gates) are read here but not returned."""
    previous = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    unready = [s.name for s in statuses if not s.ready]
    containers_ready = initialized and not unready and not terminal
    cr_reason, cr_msg = "", ""
    if not containers_ready:
        cr_reason = "PodCompleted" if terminal else "ContainersNotReady"
        cr_msg = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
    ready_reason, ready_msg = cr_reason, cr_msg
    gates_ok = True
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        gate_type = gate.get("conditionType", "")
        cond = previous.get(gate_type)
        if cond and cond.get("status") == "True":
            continue
        gates_ok = False
        if containers_ready and not ready_reason:
            ready_reason = "ReadinessGatesNotReady"
            ready_msg = (
                f'corresponding condition of pod readiness gate "{gate_type}" does not exist.'
                if not cond
                else f'the status of pod readiness gate "{gate_type}" is not "True", '
                f'but {cond.get("status")}'
            )
    return [
        _condition("PodScheduled", True, previous, now),
        _condition(
            "Initialized", initialized, previous, now, "ContainersNotInitialized",
            "containers with incomplete status: init containers",
        ),
        _condition("ContainersReady", containers_ready, previous, now, cr_reason, cr_msg),
        _condition("Ready", containers_ready and gates_ok, previous, now, ready_reason, ready_msg),
    ]


def pod_status(
    pod: Mapping[str, Any],
    statuses: Sequence[ContainerStatus],
    init_statuses: Sequence[ContainerStatus],
    initialized: bool,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    now: str,
) -> dict[str, Any]:
    """The status body the agent patches (strategic merge: conditions merge by type)."""
    restart_policy = (pod.get("spec") or {}).get("restartPolicy") or "Always"
    phase = pod_phase(restart_policy, statuses, initialized)
    if initialized is False and any(
        s.state == "terminated" and s.exit_code != 0 for s in init_statuses
    ) and restart_policy == "Never":
        phase = "Failed"
    terminal = phase in ("Succeeded", "Failed")
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}] if host_ip else [],
        "startTime": start_time,
        "conditions": pod_conditions(pod, statuses, initialized, now, terminal),
        "containerStatuses": [s.to_api() for s in statuses],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init_statuses:
        status["initContainerStatuses"] = [s.to_api() for s in init_statuses]
    return status


def status_fingerprint(status: Mapping[str, Any]) -> Any:
    """What decides whether a patch is needed: everything (timestamps are stable)."""
    return repr(sorted(status.items()))


# --------------------------------------------------------------------------------------------
# Volumes: what the kubelet writes into a pod's volumes, and where each container sees them

# (namespace, service account, audience or "", seconds, pod name, pod uid) -> a token
TokenSource = Callable[[str, str, str, int, str, str], str]
VOLUME_KINDS = ("emptyDir", "configMap", "secret", "downwardAPI", "projected")


def _relative(path: str, where: str) -> str:
    """A volume item's path: relative, no ``..`` (the API server checks; so does this)."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if not parts or str(path).startswith("/") or ".." in parts:
        raise EnvError(f"{where}: path {path!r} must be relative, without '..'")
    return "/".join(parts)


def _items(data: Mapping[str, str], items: Sequence[Mapping[str, Any]] | None, where: str
           ) -> dict[str, str]:
    if not items:
        return {_relative(key, where): value for key, value in data.items()}
    out = {}
    for item in items:
        key = str(item.get("key", ""))
        if key not in data:
            raise EnvError(f"{where}: no key {key!r}")
        out[_relative(item.get("path") or key, where)] = data[key]
    return out


def volume_files(pod: Mapping[str, Any], volume: Mapping[str, Any], configmap: Lookup,
                 secret: Lookup, token: TokenSource, pod_ip: str = "", host_ip: str = ""
                 ) -> dict[str, str] | None:
    """The files of one pod volume (relative path -> text); None for an ``emptyDir`` (an
    empty folder). Other volume kinds get a clear error, as a container the kubelet cannot
    mount does (CreateContainerConfigError)."""
    meta = pod.get("metadata") or {}
    ns, name = meta.get("namespace", "default"), str(volume.get("name", ""))
    where = f"volume {name!r}"
    kinds = [kind for kind in VOLUME_KINDS if volume.get(kind) is not None]
    if len(kinds) != 1:
        other = sorted(set(volume) - {"name"})
        raise EnvError(f"{where}: the node agent mounts {', '.join(VOLUME_KINDS)} volumes, "
                       f"not {other}")
    kind = kinds[0]
    source = volume[kind] or {}
    if kind == "emptyDir":
        return None
    if kind == "projected":
        files: dict[str, str] = {}
        for part in source.get("sources") or []:
            for sub, body in part.items():
                sub_volume = {"name": name, sub: body}
                if sub == "serviceAccountToken":
                    path = _relative(body.get("path", ""), where)
                    account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
                    files[path] = token(ns, account, str(body.get("audience") or ""),
                                        int(body.get("expirationSeconds") or 3600),
                                        str(meta.get("name", "")), str(meta.get("uid", "")))
                elif sub in ("configMap", "secret", "downwardAPI"):
                    files.update(volume_files(pod, sub_volume, configmap, secret, token,
                                              pod_ip, host_ip) or {})
                else:
                    raise EnvError(f"{where}: projected source {sub!r} is not supported")
        return files
    if kind == "downwardAPI":
        out = {}
        for item in source.get("items") or []:
            if not item.get("fieldRef"):
                raise EnvError(f"{where}: only fieldRef items are supported")
            out[_relative(item.get("path", ""), where)] = field_value(
                pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip)
        return out
    ref = str(source.get("name") if kind == "configMap" else source.get("secretName") or "")
    data = (configmap if kind == "configMap" else secret)(ns, ref)
    if data is None:
        if source.get("optional"):
            return {}
        raise EnvError(f"{where}: {kind} {ns}/{ref} not found")
    return _items(data, source.get("items"), where)


def container_mounts(container: Mapping[str, Any], volume_dirs: Mapping[str, str]
                     ) -> list[tuple[str, str, bool]]:
    """(source folder, mount path, read-only) for each of a container's volumeMounts."""
    out = []
    for mount in container.get("volumeMounts") or []:
        name = str(mount.get("name", ""))
        if name not in volume_dirs:
            raise EnvError(f"volumeMount {name!r}: no such volume in the pod")
        path = str(mount.get("mountPath", ""))
        if not path.startswith("/") or ".." in path.split("/"):
            raise EnvError(f"volumeMount {name!r}: mountPath {path!r} must be absolute")
        source = volume_dirs[name]
        if mount.get("subPath"):
            source = f"{source}/{_relative(mount['subPath'], f'volumeMount {name!r}')}"
        out.append((source, path, bool(mount.get("readOnly"))))
    return out
