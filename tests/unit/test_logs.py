"""``slipway run --log-format json``: one JSON object per line, the same keys on every line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from slipway import cli
from slipway.engine import controller, logs

KEYS = {"time", "level", "logger", "message", "object", "revision", "phase", "event"}


def test_an_event_line_names_the_object_its_revision_phase_and_event() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("slipway")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)  # clears the loggers' cache of what is enabled
    try:
        # A spec Slipway cannot use, reconciled by the real controller: its Warning is posted
        # (a uid of its own: the process remembers the announcements it posted)
        body = {"metadata": {"name": "iris", "namespace": "ns", "generation": 4,
                             "uid": str(uuid.uuid4()),
                             "resourceVersion": "41"},
                "spec": {"model": {"name": "iris"}}}
        controller.reconcile(body, lambda item: True,
                             lambda namespace, name, patch, version: str(int(version) + 1))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    posted = [line for line in parsed if line["event"] == "InvalidSpec"]
    assert len(posted) == 1, parsed
    line = posted[0]
    assert set(line) == KEYS
    assert (line["object"], line["phase"], line["level"], line["logger"]) == \
        ("ns/iris", "Invalid", "info", "slipway")
    assert "Warning InvalidSpec" in line["message"] and line["time"].endswith("Z")


def test_every_line_has_the_same_keys_and_stays_one_line() -> None:
    formatter = logs.JsonFormatter()
    plain = logging.LogRecord("slipway.leader", logging.WARNING, __file__, 1,
                              "two\nlines", None, None)
    out = formatter.format(plain)
    assert "\n" not in out
    doc = json.loads(out)
    assert set(doc) == KEYS and doc["message"] == "two\nlines"
    assert (doc["object"], doc["revision"], doc["phase"], doc["event"]) == (None,) * 4


def test_kopf_lines_about_an_object_name_it() -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, "Handler done",
                               None, None)
    record.k8s_ref = {"namespace": "models", "name": "iris", "kind": "ModelDeployment"}
    assert json.loads(logs.JsonFormatter().format(record))["object"] == "models/iris"


def test_a_failure_carries_its_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("slipway", logging.ERROR, __file__, 1, "reconcile failed",
                                   None, sys.exc_info())
    record.__dict__.update(logs.about("ns", "iris", revision="abc"))
    doc = json.loads(logs.JsonFormatter().format(record))
    assert "RuntimeError: boom" in doc["exception"]
    assert (doc["object"], doc["revision"], doc["level"]) == ("ns/iris", "abc", "error")


def test_the_format_is_chosen_on_the_command_line_or_in_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.build_parser().parse_args(["run"]).log_format == "text"
    assert cli.build_parser().parse_args(["run", "--log-format", "json"]).log_format == "json"
    monkeypatch.setenv("SLIPWAY_LOG_FORMAT", "json")
    assert cli.build_parser().parse_args(["run"]).log_format == "json"
    with pytest.raises(SystemExit, match="not one of text, json"):
        logs.use("xml")


def test_a_bad_format_from_the_environment_stops_slipway_run_before_it_starts(
        tmp_path: Any) -> None:
    done = subprocess.run([sys.executable, "-m", "slipway.cli", "run"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=tmp_path,
                          env={**os.environ, "SLIPWAY_LOG_FORMAT": "xml",
                               "KUBECONFIG": str(tmp_path / "none")})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == \
        "slipway: log format 'xml' is not one of text, json"
