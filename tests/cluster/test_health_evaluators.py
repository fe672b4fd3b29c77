"""Flux's kstatus and Argo CD's health check, run for real on every state a release reaches.

The ModelDeployment is watched through a whole story (a first release verified, a bad one rolled
back, a spec the CRD accepts and Slipway cannot use, a bad one with automatic rollback off); every
version of it the API server sends is fed to kstatus (``sigs.k8s.io/cli-utils``) and to
``health.lua`` in Lua 5.4 with and without Argo CD's ``useOpenLibs``, and each verdict must be
the one the README's table (``tests/evaluators.EXPECTED``) gives for that state.

``SLIPWAY_WRITE_HEALTH_TESTDATA=1`` writes the last object of each state into Argo CD's
``health_test.yaml`` + ``testdata/`` layout next to ``health.lua`` (for upstreaming); the unit
tests run those files.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
from typing import Any

import yaml

from tests import evaluators
from tests.cluster.conftest import Operator
from tests.cluster.test_guarded_rollout import NAME, V1, V2_WRONG_MODEL_PATH, Story
from tests.cluster.kube import Kubectl, condition, wait_until
from tests.conftest import ROOT

TESTDATA_NAMES = {evaluators.NOT_OBSERVED: "not-observed", "Progressing": "progressing",
                  "Verifying": "verifying", "Ready": "ready", "RollingBack": "rolling-back",
                  "RolledBack": "rolled-back", "Failed": "failed", "Invalid": "invalid"}


class Recorder:
    """Every version of one ModelDeployment, as ``kubectl get -w`` receives them."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.objects: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [kubectl.binary, "--kubeconfig", kubectl.kubeconfig, "get", "md", "-n", namespace,
             "--watch", "-o", "json", "--request-timeout=0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    obj, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # an object not whole yet
                buffer = buffer.lstrip()[end:]
                if obj.get("kind") == "ModelDeployment":
                    self.objects.append(obj)

    def stop(self) -> list[dict[str, Any]]:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.objects


def test_kstatus_and_argocd_give_the_readme_verdict_at_every_phase(
        kubectl: Kubectl, operator: Operator, namespace: str) -> None:
    recorder = Recorder(kubectl, namespace)
    story = Story(kubectl, operator, namespace)
    # The watch is open once it has seen a sentinel (a spec Slipway refuses: no children):
    # only then is the story's first object sure to be seen as it is created
    sentinel = copy.deepcopy(V1)
    sentinel["metadata"]["name"] = "sentinel"
    sentinel["spec"]["smokeTests"][0]["body"] = {"instances": [[1.0, 2.0]]}
    kubectl.apply(sentinel, namespace)
    wait_until(lambda: any(o["metadata"]["name"] == "sentinel" for o in recorder.objects),
               timeout=30, what="the watch open")
    try:
        # A first release, verified; a bad one, rolled back
        story.apply(V1)
        story.wait_phase("Ready")
        story.apply(V2_WRONG_MODEL_PATH)
        story.wait_phase("RolledBack")
        # A spec only Slipway can refuse (a smoke-test body that breaks spec.schema.input),
        # right after the revert: Invalid, and no RolledBack=True left from generation 2
        invalid = copy.deepcopy(V1)
        invalid["spec"]["smokeTests"][0]["body"] = {"instances": [[1.0, 2.0]]}
        story.apply(invalid)
        md = story.wait_phase("Invalid")
        rolled_back = condition(md, "RolledBack") or {}
        assert (rolled_back.get("status"), rolled_back.get("observedGeneration")) == \
            ("False", md["metadata"]["generation"]), md["status"]
        # A bad one with automatic rollback off: Failed, nothing reverted
        manual = copy.deepcopy(V2_WRONG_MODEL_PATH)
        manual["spec"]["model"]["version"] = "2.0.1"
        manual["spec"]["rollback"] = {"automatic": False}
        story.apply(manual)
        story.wait_phase("Failed")
    finally:
        captured = recorder.stop()

    objects = list({o["metadata"]["resourceVersion"]: o for o in captured
                    if o["metadata"]["name"] == NAME}.values())
    states = [evaluators.state_of(o) for o in objects]
    # Created, not yet seen by the operator: the CRD's status default says so (without it
    # kstatus called the new object Current)
    assert (states[0], objects[0]["status"]) == \
        (evaluators.NOT_OBSERVED, {"observedGeneration": 0, "phase": "Pending"}), objects[0]
    assert set(states) == set(evaluators.BY_STATE), \
        f"states reached: {sorted(set(states))}; the table has {sorted(evaluators.BY_STATE)}"

    flux = evaluators.kstatus(objects)
    argo = {mode: evaluators.argocd(objects, mode) for mode in evaluators.MODES}
    wrong = []
    for index, (obj, state) in enumerate(zip(objects, states)):
        expected = evaluators.BY_STATE[state]
        got_flux, got_safe, got_open = flux[index], argo["safe"][index], argo["open"][index]
        problems = []
        if got_flux.get("status") != expected.kstatus:
            problems.append(f"kstatus {got_flux}, expected {expected.kstatus}")
        if got_safe.get("status") != expected.argocd or got_safe.get("globals"):
            problems.append(f"Argo CD {got_safe}, expected {expected.argocd}")
        if got_open != got_safe:
            problems.append(f"useOpenLibs changes the verdict: {got_open} vs {got_safe}")
        if expected.argocd == "Degraded" and got_safe.get("message") != got_flux.get("message"):
            problems.append(f"messages differ: Argo CD {got_safe.get('message')!r}, "
                            f"kstatus {got_flux.get('message')!r}")
        if problems:
            conds = [(c["type"], c["status"], c["reason"])
                     for c in (obj.get("status") or {}).get("conditions") or []]
            wrong.append(f"{state} (resourceVersion {obj['metadata']['resourceVersion']}, "
                         f"{conds}): " + "; ".join(problems))
    assert not wrong, "\n".join(wrong)

    # A release that failed and was rolled back never reads as Current or Healthy
    for obj, verdict, state in zip(objects, flux, states):
        if (obj.get("status") or {}).get("lastFailure") and state != evaluators.NOT_OBSERVED:
            assert verdict["status"] != "Current", obj["status"]

    if os.environ.get("SLIPWAY_WRITE_HEALTH_TESTDATA"):
        write_testdata(objects, states)


def write_testdata(objects: list[dict[str, Any]], states: list[str]) -> None:
    """The last object of each state, and its Argo CD verdict, in Argo CD's test layout."""
    last = {state: portable(obj) for obj, state in zip(objects, states)}
    chosen = [last[row.state] for row in evaluators.EXPECTED]
    tests = []
    folder = evaluators.CUSTOMIZATION / "testdata"
    folder.mkdir(exist_ok=True)
    for row, obj, verdict in zip(evaluators.EXPECTED, chosen,
                                 evaluators.argocd(chosen, "safe")):
        name = f"testdata/{TESTDATA_NAMES[row.state]}.yaml"
        (evaluators.CUSTOMIZATION / name).write_text(yaml.safe_dump(obj, sort_keys=False))
        tests.append({"healthStatus": {"status": verdict["status"],
                                       "message": verdict["message"]},
                      "inputPath": name})
    evaluators.HEALTH_TEST.write_text(yaml.safe_dump({"tests": tests}, sort_keys=False,
                                                     width=1000))


def portable(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what only this cluster had (uid, versions, managed fields, the
    checkout's path in the reference server's answers)."""
    meta = obj["metadata"]
    kept = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta["name"], "namespace": "models",
                         "generation": meta["generation"]},
            "spec": obj["spec"], **({"status": obj["status"]} if "status" in obj else {})}
    text = json.dumps(kept).replace(json.dumps(str(ROOT))[1:-1], "/opt/slipway")
    return dict(json.loads(text))
