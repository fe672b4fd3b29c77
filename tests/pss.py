"""An offline checker of the Pod Security Standard "restricted" (v1.3x rules), for unit tests.

The cluster tests confirm the same with the API server's real PodSecurity admission; this copy
lets the renderer's output be checked in milliseconds, and names the rule that breaks.
"""

from __future__ import annotations

from typing import Any

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def violations(pod_spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod_sc = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            out.append(f"{flag} must not be true")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod runAsUser must not be 0")
    containers = (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or [])
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: may add only NET_BIND_SERVICE")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{name}: hostPort")
    return out


APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def template_violations(template: dict[str, Any]) -> list[str]:
    """``violations`` of a whole pod template: the spec and what its annotations set (the
    AppArmor and seccomp annotations the baseline and restricted levels check too)."""
    out = violations(template.get("spec") or {})
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    for key, value in annotations.items():
        if key.startswith(APPARMOR_PREFIX) and not (
                value == "runtime/default" or str(value).startswith("localhost/")):
            out.append(f"annotation {key}: AppArmor profile {value!r}")
        if "seccomp.security.alpha.kubernetes.io" in key and value != "runtime/default":
            out.append(f"annotation {key}: seccomp profile {value!r}")
    spec = template.get("spec") or {}
    contexts = [("pod", spec.get("securityContext") or {})] + [
        (c["name"], c.get("securityContext") or {})
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not a safe one")
    for name, context in contexts:
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or \
                selinux.get("role"):
            out.append(f"{name}: seLinuxOptions {selinux}")
        if context.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {context.get('procMount')}")
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"{name}: appArmorProfile {apparmor}")
    return out
