"""``kubectl slipway``'s screens, from ModelDeployments captured on the local cluster.

The objects are the ones Argo CD's health tests read (``testdata/``, one per phase, captured by
``tests/cluster/test_health_evaluators.py``); each screen is compared with a golden file
(``SLIPWAY_UPDATE_GOLDEN=1`` accepts new output). The cluster test
``tests/cluster/test_kubectl_plugin.py`` runs the command itself through kubectl.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from typing import Any

import pytest
import yaml

from slipway import plugin
from slipway.api import validation
from tests import evaluators
from tests.conftest import GOLDEN

PLUGIN_GOLDEN = GOLDEN / "plugin"


def captured(state: str) -> dict[str, Any]:
    return dict(yaml.safe_load((evaluators.CUSTOMIZATION / "testdata" / f"{state}.yaml")
                               .read_text()))


def golden(name: str, text: str) -> None:
    path = PLUGIN_GOLDEN / name
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name}: set SLIPWAY_UPDATE_GOLDEN=1 to accept:\n{text}"


@pytest.mark.parametrize("state", ["ready", "verifying", "rolled-back", "failed", "invalid"])
def test_status_screen(state: str) -> None:
    golden(f"status-{state}.txt", plugin.plain(plugin.status_screen(captured(state))))


def test_a_failed_release_says_which_test_on_which_pod_with_what_answer_and_what_serves() -> None:
    text = plugin.plain(plugin.status_screen(captured("rolled-back")))
    md = captured("rolled-back")
    status = md["status"]
    failing = [r for r in status["lastSmokeTest"]["results"] if r["outcome"] == "Failed"][0]
    for needle in (failing["name"], failing["target"], "500", "RolledBack",
                   f"serving          {status['currentRevision']}",
                   status["rollbackTarget"]["image"], "kubectl slipway retry iris -n models"):
        assert needle in text, (needle, text)


def test_history_lists_every_verdict() -> None:
    md = captured("failed")
    text = plugin.plain(plugin.history_table(md))
    golden("history-failed.txt", text)
    assert text.count("Failed") >= 2 and "Verified" in text and "RolledBack" in text


def test_summary_is_the_screen_as_data() -> None:
    info = plugin.summary(captured("rolled-back"))
    assert (info["phase"], info["reason"]) == ("RolledBack", "SmokeTestFailed")
    assert info["serving"]["revision"] == info["rollbackTarget"]["revision"] != \
        info["desired"]["revision"]
    assert info["serving"]["modelVersion"] == "1.0.0"
    assert info["desired"]["modelVersion"] == "2.0.0"
    assert "kubectl slipway retry" in info["next"]
    pending = plugin.summary(captured("not-observed"))
    assert (pending["phase"], pending["reason"]) == ("Pending", "NotObserved")


def test_diff_says_a_revision_failed_before_and_what_would_change() -> None:
    md = captured("rolled-back")
    body = {"apiVersion": md["apiVersion"], "kind": md["kind"],
            "metadata": {"name": "iris"}, "spec": md["spec"]}
    spec = validation.parse_document(body)
    lines, warn = plugin.diff_report(body, spec, "models", md, None, None)
    text = "\n".join(lines)
    # The cluster's spec itself: nothing changes, and the release is blocked
    assert warn and "applying FILE starts no new release" in text and "BLOCKED" in text
    assert f"revision {md['status']['desiredRevision']}" in text
    # The same release as a new generation (another replica count): it failed before
    body["spec"] = {**md["spec"], "replicas": 3}
    lines, warn = plugin.diff_report(body, validation.parse_document(body), "models", md,
                                     None, None)
    text = "\n".join(lines)
    assert warn and "FAILED BEFORE" in text and "tries it again" in text


def test_diff_is_not_blocked_by_a_new_retry_token_or_a_failure_overturned() -> None:
    md = captured("rolled-back")
    body = {"apiVersion": md["apiVersion"], "kind": md["kind"],
            "metadata": {"name": "iris", "annotations": {"slipway.dev/retry": "again"}},
            "spec": md["spec"]}
    lines, warn = plugin.diff_report(body, validation.parse_document(body), "models", md,
                                     None, None)
    assert not warn and "tries it again" in "\n".join(lines)
    # a new generation of a revision that failed, then was verified: no warning
    revision = md["status"]["desiredRevision"]
    later = {**md, "status": {**md["status"], "history": [
        *md["status"]["history"], {"revision": revision, "outcome": "Verified",
                                   "reason": "Verified", "generation": 9}]}}
    body = {**body, "metadata": {"name": "iris"}, "spec": {**md["spec"], "replicas": 3}}
    lines, warn = plugin.diff_report(body, validation.parse_document(body), "models", later,
                                     None, None)
    assert not warn, lines
    # "could not test" is no verdict on the release
    untested = {**md, "status": {**md["status"], "history": [
        {"revision": revision, "outcome": "Failed", "reason": "SmokeTestsNotRun",
         "generation": 2}]}}
    lines, warn = plugin.diff_report(body, validation.parse_document(body), "models", untested,
                                     None, None)
    assert not warn, lines


def test_a_model_servers_answer_is_shown_as_it_is_never_as_markup() -> None:
    md = captured("rolled-back")
    results = md["status"]["lastSmokeTest"]["results"]
    results[0]["message"] = "expected status 200, got 500: [/x] [bold]labels[/bold] [setosa]"
    text = plugin.plain(plugin.status_screen(md), width=400)
    assert "[/x] [bold]labels[/bold] [setosa]" in text


def test_diff_shows_the_deployment_fields_that_change_and_nothing_else() -> None:
    from slipway.logic import render

    md = captured("ready")
    spec = validation.parse_document(md)
    live = render.render(spec, render.Meta(name="iris", namespace="models",
                                           uid=md["metadata"].get("uid")))
    deployment = {**live.deployment, "status": {"replicas": 2},
                  "metadata": {**live.deployment["metadata"], "resourceVersion": "7",
                               "uid": "x"}}
    service = live.service
    body = {**md, "spec": {**md["spec"], "replicas": 3}}
    lines, warn = plugin.diff_report(body, validation.parse_document(body), "models", md,
                                     deployment, service)
    changed = [line for line in lines if line.startswith(("+", "-"))
               and not line.startswith(("+++", "---"))]
    assert changed == ["-  replicas: 2", "+  replicas: 3"], lines
    assert "Service iris: no change" in lines and not warn


def test_the_command_line_follows_kubectl_plugin_conventions() -> None:
    parser = plugin.build_parser()
    args = parser.parse_args(["status", "iris", "-n", "models", "--context", "c",
                              "--kubeconfig", "/k", "-o", "json"])
    assert (args.namespace, args.context, args.kubeconfig, args.output) == \
        ("models", "c", "/k", "json")
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "iris", "-o", "wide"])


def _screen(*, terminal: bool, **env: str) -> str:
    """The status screen as a child process prints it, into a pipe or a pseudo-terminal."""
    ready = evaluators.CUSTOMIZATION / "testdata" / "ready.yaml"
    code = ("from slipway import plugin; import yaml; "
            f"md = yaml.safe_load(open({str(ready)!r})); "
            "plugin.console().print(plugin.status_screen(md))")
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    environ.update(TERM="xterm-256color", **env)
    if not terminal:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, env=environ, check=True).stdout
    leader, follower = pty.openpty()
    with subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=follower,
                          env=environ) as child:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        child.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert "\x1b[" in _screen(terminal=True)
    piped = _screen(terminal=False)
    assert "Ready" in piped and "\x1b[" not in piped
    assert "\x1b[3" not in _screen(terminal=True, NO_COLOR="1")  # no colour codes


@pytest.mark.parametrize(("reason", "says"), [
    ("ArtifactDigestMismatch", "`slipway digest`"),
    ("ArtifactFetchFailed", "credentialsSecret"),
    ("SmokeTestFailed", "the failed test and its answer"),
])
def test_the_next_step_of_a_rolled_back_release_follows_its_reason(reason: str,
                                                                   says: str) -> None:
    md = captured("rolled-back")
    md["status"]["lastFailure"]["reason"] = reason
    assert says in plugin.next_step(md, "RolledBack")
