"""What the real health evaluators say of a ModelDeployment: kstatus (Flux, kpt) and Argo CD's
Lua health check, and what they are expected to say at each point of a release.

- ``kstatus(objects)`` runs ``sigs.k8s.io/cli-utils``' ``status.Compute`` (the Go program in
  ``tests/tools/kstatus``, built and cached by ``slipway_dev.tools``);
- ``argocd(objects, mode)`` runs ``health.lua`` in Debian's Lua 5.4 the way Argo CD runs it
  (``tests/tools/argocd_health.lua``): ``safe`` with the libraries Argo CD opens for a check
  from argocd-cm, ``open`` with ``useOpenLibs``;
- ``EXPECTED`` is the table the README shows (``readme_table`` renders it; a unit test fails
  when the README drifts, the cluster test when an evaluator does).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import subprocess
import tempfile
from typing import Any

from tests.conftest import ROOT

ARGOCD = ROOT / "manifests" / "argocd"
CUSTOMIZATION = ARGOCD / "resource_customizations" / "slipway.dev" / "ModelDeployment"
HEALTH_LUA = CUSTOMIZATION / "health.lua"
HEALTH_TEST = CUSTOMIZATION / "health_test.yaml"
HARNESS = ROOT / "tests" / "tools" / "argocd_health.lua"
MODES = ("safe", "open")


@dataclasses.dataclass(frozen=True)
class Expected:
    state: str  # a phase, or "not observed"
    when: str
    kstatus: str
    argocd: str
    why: str


NOT_OBSERVED = "not observed"
EXPECTED = (
    Expected(NOT_OBSERVED, "`status.observedGeneration` < `metadata.generation` (or no status)",
             "InProgress", "Progressing", "the operator has not seen this spec yet"),
    Expected("Progressing", "the new revision rolls out, each pod behind its readiness gate",
             "InProgress", "Progressing", "Reconciling=True"),
    Expected("Verifying", "every pod passed; the check through the Service runs",
             "InProgress", "Progressing", "Reconciling=True"),
    Expected("Ready", "this generation is rolled out and verified",
             "Current", "Healthy", "Ready=True"),
    Expected("RollingBack", "the release failed; the rollback target is being put back",
             "Failed", "Degraded", "Stalled=True, Reconciling=False: a failure being handled"),
    Expected("RolledBack", "the rollback target serves again, re-verified",
             "Failed", "Degraded", "Stalled=True: the spec's revision is not what serves"),
    Expected("Failed", "the release failed with nothing to revert to, or could not be tested, "
             "or the revert failed, or a child cannot be applied (`ChildConflict`, "
             "`ApplyFailed`)", "Failed", "Degraded", "Stalled=True"),
    Expected("Invalid", "the spec cannot be used (`InvalidSpec`)", "Failed", "Degraded",
             "Stalled=True"),
)
BY_STATE = {row.state: row for row in EXPECTED}


def state_of(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is None or observed < obj["metadata"].get("generation", 0):
        return NOT_OBSERVED
    return str(status.get("phase"))


README_BEGIN = "<!-- BEGIN HEALTH TABLE (tests/evaluators.py; checked by the tests) -->"
README_END = "<!-- END HEALTH TABLE -->"


def readme_table() -> str:
    lines = ["| phase | when | kstatus (Flux) | Argo CD | because |", "|---|---|---|---|---|"]
    for row in EXPECTED:
        state = f"`{row.state}`" if row.state != NOT_OBSERVED else "generation not yet observed"
        lines.append(f"| {state} | {row.when} | {row.kstatus} | {row.argocd} | {row.why} |")
    return "\n".join([README_BEGIN, *lines, README_END])


# --------------------------------------------------------------------------------------------
# Running them


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua expression, every number a float (Argo CD's decodeValue)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"not a JSON number: {value!r}")
        return repr(number)
    if isinstance(value, str):
        escaped = "".join(chr(b) if 0x20 <= b < 0x7f and chr(b) not in '"\\' else f"\\{b:03d}"
                          for b in value.encode())
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value if item is not None) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}"
                               for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def argocd(objects: list[dict[str, Any]], mode: str, *,
           script: pathlib.Path = HEALTH_LUA) -> list[dict[str, Any]]:
    """Argo CD's verdict on each object: {"status", "message", "globals"} or {"error"}."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as chunk:
        chunk.write("return {" + ",\n".join(lua_literal(o) for o in objects) + "}\n")
        chunk.flush()
        done = subprocess.run(["lua5.4", str(HARNESS), str(script), chunk.name, mode],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(verdicts) == len(objects), done.stdout
    return verdicts


def kstatus(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kstatus' verdict on each object: {"status", "message"} or {"error"}."""
    from slipway_dev import binaries

    program = binaries.ensure_kstatus(verbose=False)
    done = subprocess.run([str(program)], input="\n".join(json.dumps(o) for o in objects),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(verdicts) == len(objects), done.stdout
    return verdicts
