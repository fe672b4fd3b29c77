"""``kubectl slipway`` as a user runs it: kubectl finds ``kubectl-slipway`` on the PATH and hands
it the arguments, on a release that failed and was rolled back."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

import yaml

from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import NAME, V1, V2_WRONG_MODEL_PATH, Story


def command(kubectl: Kubectl, *args: str) -> tuple[list[str], dict[str, str]]:
    """``kubectl slipway ARGS`` through kubectl's own plugin lookup (the venv's bin on PATH)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep +
           os.environ.get("PATH", "")}
    env.pop("KUBECONFIG", None)
    return [kubectl.binary, "slipway", *args, "--kubeconfig", kubectl.kubeconfig], env


def plugin(kubectl: Kubectl, *args: str, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    argv, env = command(kubectl, *args)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_status_history_diff_and_retry_of_a_rolled_back_release(
        kubectl: Kubectl, operator: Operator, namespace: str) -> None:
    story = Story(kubectl, operator, namespace)
    story.apply(V1)
    story.wait_phase("Ready")
    story.apply(V2_WRONG_MODEL_PATH)
    md = story.wait_phase("RolledBack")
    status = md["status"]

    # status: which test failed, on which pod, with what answer, and what serves now
    shown = plugin(kubectl, "status", NAME, "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    failed = [r for r in status["lastSmokeTest"]["results"] if r["outcome"] == "Failed"]
    assert failed and failed[0]["target"].startswith("pod/")
    words = " ".join(shown.stdout.split())  # lines wrap at 120 columns
    for needle in ("RolledBack", failed[0]["name"], failed[0]["target"], "got 500",
                   f"serving {status['currentRevision']}",
                   f"kubectl slipway retry {NAME} -n {namespace}"):
        assert needle in words, (needle, shown.stdout)
    assert "\x1b[" not in shown.stdout  # not a terminal: no colour

    as_json = plugin(kubectl, "status", NAME, "-n", namespace, "-o", "json")
    info = json.loads(as_json.stdout)
    assert (info["phase"], info["serving"]["revision"], info["desired"]["revision"]) == \
        ("RolledBack", status["rollbackTarget"]["revision"], status["desiredRevision"])

    history = plugin(kubectl, "history", NAME, "-n", namespace, "-o", "yaml")
    assert [h["outcome"] for h in yaml.safe_load(history.stdout)] == \
        ["Verified", "Failed", "RolledBack"]

    # diff: the file the cluster already has is blocked; a new generation of it failed before
    same = plugin(kubectl, "diff", "-f", "-", "-n", namespace,
                  stdin=yaml.safe_dump(V2_WRONG_MODEL_PATH))
    assert same.returncode == 1 and "BLOCKED" in same.stdout, same.stdout + same.stderr
    assert "Deployment iris (live)" in same.stdout  # the live template is the target's
    fixed = plugin(kubectl, "diff", "-f", "-", "-n", namespace, stdin=yaml.safe_dump(V1))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "Deployment iris: no change" in fixed.stdout  # V1 is what serves

    # retry: the annotation, and the operator tries the release again (and reverts again),
    # which status --watch shows screen after screen (into a pipe: no redrawing in place)
    argv, env = command(kubectl, "status", NAME, "-n", namespace, "--watch")
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "screens.txt"

        def heads() -> list[str]:
            """The phase of each screen written so far (read through a handle of our own)."""
            return [line.split()[1] for line in path.read_text().splitlines()
                    if line.startswith(f"{namespace}/{NAME}  ")]
        with open(path, "w") as screens:
            watcher = subprocess.Popen(argv, stdout=screens, stderr=subprocess.STDOUT,
                                       env=env, text=True)
        try:
            wait_until(heads, timeout=60, what="the first screen of --watch")
            retried = plugin(kubectl, "retry", NAME, "-n", namespace)
            assert retried.returncode == 0, retried.stderr
            annotations = story.md()["metadata"].get("annotations") or {}
            assert "slipway.dev/retry" in annotations

            def tried_again() -> list[dict[str, Any]] | None:
                entries = (story.md().get("status") or {}).get("history") or []
                outcomes = [h["outcome"] for h in entries]
                return entries if outcomes[-2:] == ["Failed", "RolledBack"] and \
                    len(entries) == 5 else None
            wait_until(tried_again, timeout=120, what="the retried release reverted again",
                       diagnose=story.diagnose)
            wait_until(lambda: len(heads()) > 1 and heads()[-1] == "RolledBack", timeout=30,
                       what="--watch showing the revert's end", diagnose=path.read_text)
        finally:
            watcher.terminate()
            watcher.wait(timeout=10)
        shown = heads()
    assert shown[0] == "RolledBack" and shown[-1] == "RolledBack", shown
    assert "Progressing" in shown or "RollingBack" in shown, shown  # redrawn as it moved

    missing = plugin(kubectl, "status", "nope", "-n", namespace)
    assert missing.returncode == 1 and "not found" in missing.stderr
