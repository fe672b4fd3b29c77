"""The Argo CD health check for ModelDeployment, run as real Lua.

Argo CD runs custom health checks in gopher-lua (Lua 5.1) with only the base, table, package and a
safe ``os`` library opened (no ``string``, no ``math``) unless ``useOpenLibs`` is set, and hands the
resource over as the global ``obj`` with every number a float. The tests run ``health.lua`` the
same way twice: in Lua 5.1 from lupa, with those libraries taken away, on a fresh state per call;
and in Debian's Lua 5.4 (``tests/evaluators.argocd``), with and without ``useOpenLibs``.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

import pytest
import yaml

from slipway.logic import conditions
from tests import evaluators

try:
    from lupa import lua51
except ImportError as error:  # pragma: no cover - lupa wheels ship Lua 5.1
    raise ImportError("these tests need lupa with its bundled Lua 5.1 (pip install lupa)") from error

HEALTH_LUA = evaluators.HEALTH_LUA
PATCH = evaluators.ARGOCD / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.slipway.dev_ModelDeployment"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# What Argo CD does not open for a custom health check (see its util/lua/lua.go).
_SANDBOX = """
debug.setmetatable("", nil)
string, math, io, debug, coroutine, dofile, loadfile = nil, nil, nil, nil, nil, nil, nil
"""


def to_lua(lua: Any, value: Any) -> Any:
    """A Python value as Lua: dicts to tables, lists to 1-based sequences, None to nil."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    return value


@dataclasses.dataclass(frozen=True)
class Run:
    status: str
    message: str
    new_globals: frozenset[str]


def run_health(obj: dict[str, Any], script: str | None = None) -> Run:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(_SANDBOX)
    before = set(lua.globals())
    lua.globals().obj = to_lua(lua, obj)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    assert lua.eval("type")(hs) == "table", "the script must return the hs table"
    after = set(lua.globals()) - before - {"obj"}
    return Run(status=hs["status"], message=hs["message"], new_globals=frozenset(after))


# ---------------------------------------------------------------------------------------------
# Building resources the way the operator writes their status.

GEN = 3


def cond(type_: str, status: str, reason: str, message: str = "",
         generation: int | None = GEN) -> tuple[str, str, str, str, int | None]:
    return (type_, status, reason, message, generation)


def resource(*conds: tuple[str, str, str, str, int | None], generation: int | None = GEN,
             observed: int | None = GEN, phase: str | None = None,
             **status_fields: Any) -> dict[str, Any]:
    """A ModelDeployment whose conditions come from the operator's own ``set_condition``."""
    built: list[dict[str, Any]] = []
    for type_, value, reason, message, cond_generation in conds:
        built = conditions.set_condition(built, type_, value, reason, message,
                                         generation=cond_generation, at="2026-01-01T00:00:00Z")
    status: dict[str, Any] = {"observedGeneration": observed, "phase": phase,
                              "conditions": built, **status_fields}
    return {
        "apiVersion": "slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "models", "generation": generation},
        "spec": {"model": {"name": "iris", "version": "1.2.0"}},
        "status": status,
    }


def without_status(generation: int | None = GEN) -> dict[str, Any]:
    obj = resource(generation=generation)
    del obj["status"]
    return obj


WAITING = f"Waiting for the Slipway operator to observe generation {GEN}"
SMOKE_FAILED = "smoke test 'predict-setosa' failed: expected 200, got 500"

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # -- generation first
    ("no status at all", without_status(), "Progressing", WAITING),
    ("empty status", {**without_status(), "status": {}}, "Progressing", WAITING),
    ("no observedGeneration, even with Ready True",
     resource(cond("Ready", "True", "Verified", "all smoke tests passed"), observed=None,
              phase="Ready"),
     "Progressing", WAITING),
    ("stale observedGeneration with Ready True",
     resource(cond("Ready", "True", "Verified", "all smoke tests passed", generation=2),
              observed=2, phase="Ready"),
     "Progressing", WAITING),
    ("stale observedGeneration with Stalled True",
     resource(cond("Stalled", "True", "SmokeTestFailed", SMOKE_FAILED, generation=2),
              observed=2, phase="Failed"),
     "Progressing", WAITING),
    ("no generation and no status", without_status(generation=None), "Progressing",
     "Waiting for the Slipway operator to observe the resource"),
    # -- then Stalled
    ("Stalled True",
     resource(cond("Ready", "False", "SmokeTestFailed", SMOKE_FAILED),
              cond("Reconciling", "False", "SmokeTestFailed", "nothing to do"),
              cond("Stalled", "True", "SmokeTestFailed", SMOKE_FAILED), phase="Failed"),
     "Degraded", SMOKE_FAILED),
    ("Stalled True for an invalid spec",
     resource(cond("Stalled", "True", "InvalidSpec", "invalid spec: spec.model.uri: required"),
              phase="Invalid"),
     "Degraded", "invalid spec: spec.model.uri: required"),
    ("Stalled True with an empty message says the reason",
     resource(cond("Stalled", "True", "ImagePullFailed"), phase="Failed"),
     "Degraded", "ImagePullFailed"),
    # The Stalled message as it is, as kstatus gives it: the operator's says what serves
    ("Stalled and RolledBack True",
     resource(cond("Ready", "False", "SmokeTestFailed", SMOKE_FAILED),
              cond("Stalled", "True", "SmokeTestFailed", f"rolled back: revision 5d8f7c "
                                                         f"serves; {SMOKE_FAILED}"),
              cond("RolledBack", "True", "SmokeTestFailed", "serving revision 5d8f7c"),
              phase="RolledBack", currentRevision="5d8f7c",
              rollbackTarget={"revision": "5d8f7c", "generation": 2}),
     "Degraded", f"rolled back: revision 5d8f7c serves; {SMOKE_FAILED}"),
    ("Stalled True while rolling back, Reconciling True too (an older operator)",
     resource(cond("Reconciling", "True", "RollingBack", "reverting to revision 5d8f7c"),
              cond("Stalled", "True", "SmokeTestFailed", SMOKE_FAILED), phase="RollingBack"),
     "Degraded", SMOKE_FAILED),
    ("Stalled True, RolledBack False",
     resource(cond("Stalled", "True", "RollbackFailed", "rollback target failed too"),
              cond("RolledBack", "False", "RollbackFailed"), phase="Failed",
              rollbackTarget={"revision": "5d8f7c"}),
     "Degraded", "rollback target failed too"),
    ("Stalled beats a Ready True left over",
     resource(cond("Ready", "True", "Verified", "all smoke tests passed"),
              cond("Stalled", "True", "ProgressDeadlineExceeded", "no progress in 600s"),
              phase="Failed"),
     "Degraded", "no progress in 600s"),
    ("Stalled Unknown is not Degraded",
     resource(cond("Ready", "True", "Verified", "all smoke tests passed"),
              cond("Stalled", "Unknown", "Checking"), phase="Ready"),
     "Healthy", "all smoke tests passed"),
    # -- then Ready
    ("Ready True for this generation",
     resource(cond("Ready", "True", "Verified", "revision 5d8f7c verified by 3 smoke tests"),
              cond("Reconciling", "False", "Verified"), cond("Stalled", "False", "Verified"),
              phase="Ready", currentRevision="5d8f7c"),
     "Healthy", "revision 5d8f7c verified by 3 smoke tests"),
    ("Ready True without a condition observedGeneration",
     resource(cond("Ready", "True", "Verified", "verified", generation=None), phase="Ready"),
     "Healthy", "verified"),
    ("Ready True with an empty message says the reason",
     resource(cond("Ready", "True", "Verified"), phase="Ready"), "Healthy", "Verified"),
    ("Ready True but its condition is for an older generation",
     resource(cond("Ready", "True", "Verified", "verified", generation=2), phase="Ready"),
     "Progressing", "Waiting for the Ready condition to reflect generation 3 "
                    "(it is for generation 2)"),
    ("Ready True but stale, while Reconciling",
     resource(cond("Ready", "True", "Verified", "verified", generation=2),
              cond("Reconciling", "True", "Progressing", "1 of 2 replicas updated"),
              phase="Progressing"),
     "Progressing", "Progressing: 1 of 2 replicas updated"),
    # -- then Reconciling
    ("Reconciling True while verifying",
     resource(cond("Ready", "False", "Verifying", "running smoke tests"),
              cond("Reconciling", "True", "Verifying", "running smoke tests"),
              phase="Verifying"),
     "Progressing", "Verifying: running smoke tests"),
    ("Reconciling True while rolling back",
     resource(cond("Reconciling", "True", "RollingBack", "restoring revision 5d8f7c"),
              phase="RollingBack"),
     "Progressing", "RollingBack: restoring revision 5d8f7c"),
    ("Reconciling True with no message and no phase",
     resource(cond("Reconciling", "True", "Progressing")), "Progressing", "Progressing"),
    # -- otherwise
    ("nothing true: phase, Ready reason and message",
     resource(cond("Ready", "False", "AwaitingDeployment", "waiting for the Deployment"),
              cond("Reconciling", "False", "Pending"), phase="Pending"),
     "Progressing", "Pending: AwaitingDeployment: waiting for the Deployment"),
    ("failed without Stalled stays Progressing",
     resource(cond("Ready", "False", "ApplyFailed"), cond("Stalled", "False", "ApplyFailed"),
              phase="Failed"),
     "Progressing", "Failed: ApplyFailed"),
    ("only a phase", resource(phase="Pending"), "Progressing", "Pending"),
    ("observed but nothing else", resource(), "Progressing",
     "Waiting for the Slipway operator to report readiness"),
]


@pytest.mark.parametrize(("obj", "status", "message"),
                         [pytest.param(o, s, m, id=name) for name, o, s, m in CASES])
def test_verdict(obj: dict[str, Any], status: str, message: str) -> None:
    run = run_health(obj)
    assert (run.status, run.message) == (status, message)
    assert run.status in ARGO_HEALTH
    assert not run.new_globals, f"health.lua leaked globals: {sorted(run.new_globals)}"


@pytest.mark.parametrize("mode", evaluators.MODES)
def test_lua_5_4_gives_the_same_verdicts_with_and_without_open_libs(mode: str) -> None:
    verdicts = evaluators.argocd([obj for _, obj, _, _ in CASES], mode)
    got = [(v.get("status"), v.get("message"), v.get("globals")) for v in verdicts]
    assert got == [(status, message, []) for _, _, status, message in CASES]


def test_the_lua_5_4_harness_opens_what_argo_cd_opens(tmp_path: pathlib.Path) -> None:
    """Guards the harness: no string library, no string methods, no math without useOpenLibs;
    all of them with it."""
    script = tmp_path / "health.lua"
    for body in ('string.format("%s", "Healthy")', '("Healthy"):lower()', "math.floor(1)",
                 "io.write('')", 'require("string").upper("x")', 'require("debug")'):
        script.write_text(f"local x = {body}\nreturn {{status = 'Healthy', message = 'x'}}\n")
        safe, = evaluators.argocd([without_status()], "safe", script=script)
        assert "error" in safe, (body, safe)
        opened, = evaluators.argocd([without_status()], "open", script=script)
        assert opened.get("status") == "Healthy", (body, opened)
    script.write_text("return {status = require('os').date('!%Y', 0), "
                      "message = type(table.concat)}\n")
    verdict, = evaluators.argocd([without_status()], "safe", script=script)
    assert (verdict.get("status"), verdict.get("message")) == ("1970", "function")


def test_a_script_that_does_not_end_is_an_error_not_a_hang(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "health.lua"
    script.write_text("while true do end\n")
    verdict, = evaluators.argocd([without_status()], "safe", script=script)
    assert "instruction budget" in verdict["error"]


def test_numbers_arrive_as_floats_like_in_argo_cd() -> None:
    """gopher-lua makes every number a float; messages still say "generation 3"."""
    obj = without_status()
    obj["metadata"]["generation"] = 3.0
    assert run_health(obj).message == WAITING
    ready = resource(cond("Ready", "True", "Verified", "ok", generation=2), phase="Ready")
    ready["metadata"]["generation"] = 3.0
    ready["status"]["observedGeneration"] = 3.0
    ready["status"]["conditions"][0]["observedGeneration"] = 2.0
    assert run_health(ready).message == ("Waiting for the Ready condition to reflect generation 3"
                                         " (it is for generation 2)")
    ready["status"]["conditions"][0]["observedGeneration"] = 3.0
    assert (run_health(ready).status, run_health(ready).message) == ("Healthy", "ok")


def test_conditions_are_found_wherever_they_are_in_the_list() -> None:
    obj = resource(cond("Ready", "False", "SmokeTestFailed", "x"),
                   cond("Stalled", "True", "SmokeTestFailed", "smoke failed"), phase="Failed")
    reordered = copy.deepcopy(obj)
    reordered["status"]["conditions"].reverse()
    reordered["status"]["conditions"].insert(0, {"type": "Custom", "status": "True",
                                                 "reason": "X"})
    assert run_health(obj) == run_health(reordered)
    assert run_health(reordered).status == "Degraded"


def test_the_sandbox_really_lacks_string_and_math() -> None:
    """Guards the harness: a script using string.format must fail here as it would in Argo CD."""
    with pytest.raises(lua51.LuaError):
        run_health(without_status(), 'return {status = string.format("%s", "Healthy")}')
    with pytest.raises(lua51.LuaError):
        run_health(without_status(), 'return {status = ("Healthy"):lower()}')


# ---------------------------------------------------------------------------------------------
# The argocd-cm patch carries the same script.

def _block_scalar(text: str, key: str) -> str:
    """The literal block under ``key:``, its indentation removed, read as raw text."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{key}: |")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    body = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith(" " * indent):
            break
        body.append(line[indent:] if line.strip() else "\n")
    while body and body[-1] == "\n":
        body.pop()
    return "".join(body)


def test_patch_is_an_argocd_cm_patch_with_the_current_key() -> None:
    doc = yaml.safe_load(PATCH.read_text())
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "ConfigMap"
    assert doc["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert list(doc["data"]) == [KEY]


def test_patch_embeds_health_lua_byte_for_byte() -> None:
    script = HEALTH_LUA.read_bytes()
    assert script.endswith(b"\n") and not script.endswith(b"\n\n"), \
        "health.lua must end with exactly one newline to survive a YAML literal block"
    raw = PATCH.read_bytes().decode("utf-8")
    assert _block_scalar(raw, KEY).encode("utf-8") == script
    assert yaml.safe_load(raw)["data"][KEY].encode("utf-8") == script


def test_embedded_script_gives_the_same_verdicts() -> None:
    embedded = yaml.safe_load(PATCH.read_text())["data"][KEY]
    for _, obj, status, message in CASES:
        run = run_health(obj, embedded)
        assert (run.status, run.message) == (status, message)
