"""Helpers for tests against the local cluster: kubectl, waits with deadlines, diagnostics.

A wait that times out prints the object and its Events, so a red test says why without a rerun.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

import yaml


@dataclasses.dataclass
class Kubectl:
    binary: str
    kubeconfig: str

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, "--kubeconfig", self.kubeconfig, *args],
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr}{result.stdout}")
        return result

    def apply(self, obj: dict[str, Any] | str, namespace: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.run(*args, input=text, check=check)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: str | None = None) -> Any:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        result = self.run(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)

    def events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        items = self.get("events", namespace=namespace)["items"]
        if name:
            items = [e for e in items if e["involvedObject"].get("name") == name]
        # eventTime has microseconds; the older timestamps only seconds.
        return sorted(items, key=lambda e: (e.get("eventTime") or e.get("lastTimestamp") or "",
                                            e["metadata"]["creationTimestamp"]))

    def describe(self, kind: str, name: str, namespace: str) -> str:
        """The object's status (not its spec: the test wrote it, and a long one pushed the
        status out of CI's shortened output), its pods and the namespace's Events."""
        found = self.run("get", kind, name, "-n", namespace, "-o", "json", check=False)
        try:
            obj = json.loads(found.stdout)
        except ValueError:
            return f"--- {kind}/{name}: {found.stderr}"
        status = {"generation": (obj.get("metadata") or {}).get("generation"),
                  "status": obj.get("status")}
        events = self.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                          check=False)
        pods = self.run("get", "pods", "-n", namespace, "-o", "wide", check=False)
        return (f"--- {kind}/{name} status:\n{yaml.safe_dump(status)}--- pods:\n{pods.stdout}\n"
                f"--- events:\n{events.stdout}")


def wait_until(check: Callable[[], Any], *, timeout: float, what: str,
               diagnose: Callable[[], str] | None = None, interval: float = 0.25) -> Any:
    """Return the first truthy value of ``check``; fail with diagnostics after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as error:  # a transient kubectl failure
            last_error = error
        time.sleep(interval)
    details = diagnose() if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         f"{f' (last error: {last_error})' if last_error else ''}\n{details}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def load_yaml(path: pathlib.Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def audited(state_dir: str, username: str) -> list[dict[str, Any]]:
    """The API server's audit events of one user (the local cluster audits the operator's)."""
    path = pathlib.Path(state_dir) / "logs" / "audit.log"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["user"]["username"] == username]
