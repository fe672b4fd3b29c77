"""Smoke tests against real HTTP servers on 127.0.0.1: what passes, what fails, what is an error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest

from slipway.api import models
from slipway.clients import smoke

INPUT = {
    "type": "object",
    "required": ["instances"],
    "properties": {"instances": {"type": "array", "items": {
        "type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}}},
}
OUTPUT = {
    "type": "object",
    "required": ["predictions"],
    "properties": {"predictions": {"type": "array", "items": {
        "type": "object", "required": ["label"],
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}}},
}
SETOSA = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
GOOD_ANSWER = {"predictions": [{"label": "setosa", "score": 0.97}]}


def make_spec(*tests: dict[str, Any], timeout: int = 2, attempts: int = 3
              ) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.model_validate({
        "model": {"name": "iris", "version": "1.0.0", "uri": "file:///models/iris/1.0.0"},
        "runtime": {"image": "ghcr.io/slipway/sklearn-server:1.0"},
        "schema": {"input": INPUT, "output": OUTPUT},
        "smokeTests": list(tests),
        "rollout": {"smokeTestTimeoutSeconds": timeout, "smokeTestAttempts": attempts},
    })


def setosa(**overrides: Any) -> dict[str, Any]:
    test: dict[str, Any] = {"name": "setosa", "body": SETOSA,
                            "expect": {"values": [{"path": "$.predictions[0].label",
                                                   "equals": "setosa"}]}}
    test.update(overrides)
    return test


# --------------------------------------------------------------------------------------------
# A model server: a real threaded HTTP server on 127.0.0.1, with routes set per test.

Route = Callable[["Handler", bytes], None]


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class App:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.routes: dict[str, Route] = {"/score": score}
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.split("?")[0] == path]


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: App

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) is expected


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        app = self.server.app
        with app.lock:
            app.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            app.in_flight += 1
            app.max_in_flight = max(app.max_in_flight, app.in_flight)
        try:
            route = app.routes.get(self.path.split("?")[0], not_found)
            route(self, body)
        finally:
            with app.lock:
                app.in_flight -= 1

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def reply(handler: Handler, status: int, body: Any = b"", headers: dict[str, str] | None = None
          ) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
    except OSError:
        handler.close_connection = True


def score(handler: Handler, body: bytes) -> None:
    reply(handler, 200, GOOD_ANSWER)


def not_found(handler: Handler, body: bytes) -> None:
    reply(handler, 404, {"error": "not found"})


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Route:
    return lambda handler, _: reply(handler, status, body, headers)


def kube_status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@pytest.fixture
def serve() -> Iterator[Callable[[], App]]:
    started: list[tuple[Server, threading.Thread]] = []

    def start() -> App:
        server = Server(("127.0.0.1", 0), Handler)
        server.app = App(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  daemon=True)
        thread.start()
        started.append((server, thread))
        return server.app

    yield start
    for server, thread in started:
        server.app.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def app(serve: Callable[[], App]) -> App:
    return serve()


def closed_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run(spec: models.ModelDeploymentSpec, *targets: smoke.Target,
        client: smoke.ClientSettings | None = None) -> smoke.Verdict:
    return smoke.run_smoke_tests_sync(spec, targets, client or smoke.ClientSettings())


def pod(app: App, name: str = "pod/iris-abc") -> smoke.Target:
    return smoke.Target(name, app.url)


def proxied(app: App, name: str = "pod/iris-abc") -> smoke.Target:
    return smoke.Target(name, app.url + "/api/v1/namespaces/ml/pods/iris-abc:8080/proxy",
                        via_api_proxy=True)


# --------------------------------------------------------------------------------------------
# Passing


def test_passing_test_on_two_targets(serve: Callable[[], App]) -> None:
    first, second = serve(), serve()
    verdict = run(make_spec(setosa()), pod(first, "pod/iris-a"), pod(second, "service/iris"))
    assert verdict.outcome == "Passed", verdict.message
    assert verdict.message == "1 smoke test passed on 2 targets (pod/iris-a, service/iris)"
    assert [(r.name, r.target, r.outcome, r.status_code) for r in verdict.results] == [
        ("setosa", "pod/iris-a", "Passed", 200), ("setosa", "service/iris", "Passed", 200)]
    for server in (first, second):
        [seen] = server.requests_to("/score")
        assert seen.method == "POST"
        assert json.loads(seen.body) == SETOSA
        assert seen.headers["Content-Type"] == "application/json"
    assert verdict.started_at.endswith("Z") and verdict.finished_at >= verdict.started_at


def test_results_are_ordered_by_test_then_target_and_fit_the_status_schema(
        serve: Callable[[], App]) -> None:
    first, second = serve(), serve()
    first.routes["/healthz"] = second.routes["/healthz"] = answer(200, b"ok")
    spec = make_spec(setosa(), {"name": "health", "method": "GET", "path": "/healthz"})
    verdict = run(spec, pod(first, "pod/a"), pod(second, "pod/b"))
    assert verdict.outcome == "Passed"
    assert verdict.message == "2 smoke tests passed on 2 targets (pod/a, pod/b)"
    assert [(r.name, r.target) for r in verdict.results] == [
        ("setosa", "pod/a"), ("setosa", "pod/b"), ("health", "pod/a"), ("health", "pod/b")]
    status = verdict.to_status(revision="6d4f9c", generation=None, attempts=1)
    assert set(status) == {"revision", "outcome", "startedAt", "finishedAt", "attempts", "results"}
    parsed = models.LastSmokeTest.model_validate(status)
    assert parsed.outcome == "Passed" and parsed.results[0].status_code == 200
    assert status["results"][0]["statusCode"] == 200 and "latencyMs" in status["results"][0]
    assert verdict.to_status(revision="6d4f9c", generation=7, attempts=2)["generation"] == 7


def test_requests_run_concurrently_but_at_most_eight_at_a_time(app: App) -> None:
    def slow(handler: Handler, body: bytes) -> None:
        app.stop.wait(0.1)
        reply(handler, 200, b"ok")

    app.routes["/slow"] = slow
    tests = [{"name": f"t{i}", "method": "GET", "path": "/slow"} for i in range(20)]
    started = time.monotonic()
    verdict = run(make_spec(*tests), pod(app))
    assert verdict.outcome == "Passed", verdict.message
    assert 1 < app.max_in_flight <= 8
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------------------------------------------
# Failing checks


def test_wrong_status_names_test_target_and_body(app: App) -> None:
    app.routes["/score"] = answer(500, {"error": "model file not found: /x/models/model.json"})
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.message == (
        "smoke test 'setosa' on pod/iris-abc: expected status 200, got 500: "
        '{"error": "model file not found: /x/models/model.json"}')
    [result] = verdict.results
    assert (result.outcome, result.status_code) == ("Failed", 500)
    assert result.latency_ms is not None


def test_body_snippet_is_one_line_and_short(app: App) -> None:
    app.routes["/score"] = answer(500, b"Traceback (most recent call last):\n" + b"x" * 5000)
    verdict = run(make_spec(setosa()), pod(app))
    message = verdict.results[0].message
    assert "\n" not in message
    assert message.startswith("expected status 200, got 500: Traceback (most recent call last): x")
    assert len(message) < 260


def test_default_output_schema_violation(app: App) -> None:
    app.routes["/score"] = answer(200, {"predictions": [{"label": 3}]})
    verdict = run(make_spec({"name": "setosa", "body": SETOSA}), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == (
        "response does not satisfy spec.schema.output: 3 is not of type 'string' "
        "at $.predictions[0].label")


def test_explicit_body_schema_violation(app: App) -> None:
    app.routes["/version"] = answer(200, {"version": "1.0.0"})
    body_schema = {"type": "object", "required": ["version", "digest"]}
    test = {"name": "version", "method": "GET", "path": "/version",
            "expect": {"bodySchema": body_schema}}
    verdict = run(make_spec(test), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == (
        "response does not satisfy expect.bodySchema: 'digest' is a required property at $")


def test_response_that_is_not_json(app: App) -> None:
    app.routes["/score"] = answer(200, b"<html>Whitelabel Error Page</html>")
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.results[0].message == (
        "response is not JSON: <html>Whitelabel Error Page</html>")


def test_exact_value_mismatch(app: App) -> None:
    app.routes["/score"] = answer(200, {"predictions": [{"label": "versicolor"}]})
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.message == ("smoke test 'setosa' on pod/iris-abc: "
                               "$.predictions[0].label is 'versicolor', expected 'setosa'")


def test_missing_value_path(app: App) -> None:
    app.routes["/score"] = answer(200, {"predictions": []})
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.results[0].message == (
        "$.predictions[0].label is missing ($.predictions has 0 items, no [0])")


def test_values_compare_as_json_true_is_not_one(app: App) -> None:
    app.routes["/flags"] = answer(200, {"ready": 1, "count": 2.0})
    test = {"name": "flags", "method": "GET", "path": "/flags", "expect": {"values": [
        {"path": "$.count", "equals": 2}, {"path": "$.ready", "equals": True}]}}
    verdict = run(make_spec(test), pod(app))
    assert verdict.results[0].message == "$.ready is 1, expected true"


def test_latency_budget_exceeded(app: App) -> None:
    def slow(handler: Handler, body: bytes) -> None:
        app.stop.wait(0.3)
        score(handler, body)

    app.routes["/score"] = slow
    verdict = run(make_spec(setosa(expect={"maxLatencyMs": 100})), pod(app))
    assert verdict.outcome == "Failed"
    message = verdict.results[0].message
    assert message.startswith("took ") and message.endswith(" ms, budget 100 ms"), message
    assert int(message.split()[1]) >= 300


def test_timeout_fails_after_the_configured_seconds(app: App) -> None:
    def hang(handler: Handler, body: bytes) -> None:
        app.stop.wait(5)
        score(handler, body)

    app.routes["/score"] = hang
    started = time.monotonic()
    verdict = run(make_spec(setosa(), timeout=1, attempts=1), pod(app))
    elapsed = time.monotonic() - started
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == "timed out after 1s (1 attempt)"
    assert verdict.results[0].status_code is None
    assert 0.9 < elapsed < 2.5


def test_connection_refused_is_could_not_test_after_every_attempt() -> None:
    # Nothing reached the model: that says nothing about the release, so it is no failure.
    target = smoke.Target("pod/iris-abc", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    verdict = run(make_spec(setosa(), attempts=3), target)
    assert verdict.outcome == "Error"
    assert verdict.message == (
        "smoke test 'setosa' on pod/iris-abc: could not reach it: connection refused after "
        "3 attempts")
    assert time.monotonic() - started >= 0.55  # back-off 0.2 s + 0.4 s


def test_transient_drop_passes_thanks_to_the_retry(app: App) -> None:
    calls: list[int] = []

    def flaky(handler: Handler, body: bytes) -> None:
        calls.append(1)
        if len(calls) == 1:
            handler.close_connection = True  # hang up without answering
            return
        score(handler, body)

    app.routes["/score"] = flaky
    verdict = run(make_spec(setosa(), attempts=2), pod(app))
    assert verdict.outcome == "Passed", verdict.message
    assert len(calls) == 2


def test_transient_drop_is_not_retried_past_the_attempts(app: App) -> None:
    def hang_up(handler: Handler, body: bytes) -> None:
        handler.close_connection = True

    app.routes["/score"] = hang_up
    verdict = run(make_spec(setosa(), attempts=1), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message.startswith(
        "connection closed without a complete response")
    assert verdict.results[0].message.endswith("after 1 attempt")


def test_redirect_is_compared_not_followed(app: App) -> None:
    app.routes["/old"] = answer(302, b"", {"Location": "/elsewhere"})
    app.routes["/elsewhere"] = answer(200, b"{}")
    spec = make_spec({"name": "moved", "method": "GET", "path": "/old",
                      "expect": {"status": 302}},
                     {"name": "follow", "method": "GET", "path": "/old"})
    verdict = run(spec, pod(app))
    assert [r.outcome for r in verdict.results] == ["Passed", "Failed"]
    assert verdict.results[1].message == (
        "expected status 200, got 302 (redirect to /elsewhere, not followed): (empty body)")
    assert app.requests_to("/elsewhere") == []


def test_oversize_body_fails_only_when_it_must_be_parsed(app: App) -> None:
    big = json.dumps({"predictions": [{"label": "setosa", "pad": "x" * 70_000}]}).encode()
    app.routes["/score"] = answer(200, big)
    app.routes["/dump"] = answer(200, big)
    spec = make_spec(setosa(), {"name": "dump", "method": "GET", "path": "/dump"})
    verdict = run(spec, pod(app))
    assert [(r.name, r.outcome, r.message) for r in verdict.results] == [
        ("setosa", "Failed", "response larger than 64 KiB"), ("dump", "Passed", "")]


def test_body_that_breaks_the_input_contract_is_not_sent(app: App) -> None:
    spec = make_spec(setosa(body={"instances": [[1, 2]]}))
    verdict = run(spec, pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message.startswith(
        "not sent: the request body does not satisfy spec.schema.input: ")
    assert verdict.results[0].message.endswith(" at $.instances[0]")
    assert app.seen == []


def test_negative_test_may_send_a_malformed_body(app: App) -> None:
    app.routes["/score"] = answer(422, {"error": "instances[0] must have 4 features"})
    verdict = run(make_spec({"name": "bad-input", "body": {"instances": [[1]]},
                             "expect": {"status": 422}}), pod(app))
    assert verdict.outcome == "Passed", verdict.message
    assert len(app.seen) == 1


# --------------------------------------------------------------------------------------------
# The request itself


def test_proxy_environment_is_ignored(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.setenv(name, bogus)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Passed", verdict.message


def test_test_headers_are_sent_and_host_cannot_be(app: App) -> None:
    app.routes["/score"] = answer(200, GOOD_ANSWER)
    spec = make_spec(setosa(path="/score?explain=false",
                            headers={"X-Tenant": "acme", "Content-Type": "application/json"}))
    verdict = run(spec, pod(app))
    assert verdict.outcome == "Passed", verdict.message
    [seen] = app.seen
    assert seen.path == "/score?explain=false"
    assert seen.headers["X-Tenant"] == "acme"
    assert seen.headers["Host"] == app.url.removeprefix("http://")

    with pytest.raises(pydantic.ValidationError, match="header Host is set by the HTTP client"):
        make_spec(setosa(headers={"Host": "evil.example"}))
    # Even a spec built without validation cannot redirect the request with a Host header.
    test = spec.smoke_tests[0].model_copy(update={"headers": {"Host": "evil.example"}})
    sneaky = spec.model_copy(update={"smoke_tests": [test]})
    assert run(sneaky, pod(app)).outcome == "Passed"
    assert app.seen[-1].headers["Host"] == app.url.removeprefix("http://")


def test_api_credentials_go_only_through_the_api_proxy(app: App) -> None:
    app.routes["/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"] = score
    client = smoke.ClientSettings(headers={"Authorization": "Bearer operator-token"})
    verdict = run(make_spec(setosa()), pod(app, "pod/direct"), proxied(app, "pod/proxied"),
                  client=client)
    assert verdict.outcome == "Passed", verdict.message
    direct = [s for s in app.seen if s.path == "/score"]
    through = [s for s in app.seen if s.path.startswith("/api/v1/")]
    assert len(direct) == len(through) == 1
    assert "Authorization" not in direct[0].headers
    assert through[0].headers["Authorization"] == "Bearer operator-token"
    assert through[0].path == "/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"


# --------------------------------------------------------------------------------------------
# Through the API server's proxy


def test_api_proxy_unreachable_pod_is_retried_then_could_not_test(app: App) -> None:
    path = "/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"
    app.routes[path] = answer(503, kube_status(
        503, "ServiceUnavailable",
        "error trying to reach service: dial tcp 10.244.0.7:8080: connect: connection refused"))
    verdict = run(make_spec(setosa(), attempts=3), proxied(app))
    assert verdict.outcome == "Error"
    assert len(app.requests_to(path)) == 3
    assert verdict.results[0].message == (
        "the API server could not reach it after 3 attempts: 503 ServiceUnavailable: "
        "error trying to reach service: dial tcp 10.244.0.7:8080: connect: connection refused")


def test_api_proxy_recovers_when_the_pod_becomes_reachable(app: App) -> None:
    path = "/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"
    calls: list[int] = []

    def flaky(handler: Handler, body: bytes) -> None:
        calls.append(1)
        if len(calls) == 1:
            reply(handler, 503, kube_status(503, "ServiceUnavailable", "no endpoints available"))
        else:
            score(handler, body)

    app.routes[path] = flaky
    verdict = run(make_spec(setosa(), attempts=3), proxied(app))
    assert verdict.outcome == "Passed", verdict.message
    assert len(calls) == 2


def test_api_proxy_forbidden_is_an_error_not_a_failure(app: App) -> None:
    path = "/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"
    app.routes[path] = answer(403, kube_status(
        403, "Forbidden", 'pods "iris-abc" is forbidden: User "system:serviceaccount:slipway:op" '
        'cannot create resource "pods/proxy" in API group "" in the namespace "ml"'))
    verdict = run(make_spec(setosa()), proxied(app))
    assert verdict.outcome == "Error"
    assert len(app.requests_to(path)) == 1
    assert verdict.message.startswith(
        "smoke test 'setosa' on pod/iris-abc: the API server refused to proxy: 403 Forbidden: "
        'pods "iris-abc" is forbidden')


def test_a_failure_outweighs_an_error(serve: Callable[[], App]) -> None:
    broken, api = serve(), serve()
    broken.routes["/score"] = answer(500, b"boom")
    api.routes["/api/v1/namespaces/ml/pods/iris-abc:8080/proxy/score"] = answer(
        401, kube_status(401, "Unauthorized", "Unauthorized"))
    verdict = run(make_spec(setosa()), proxied(api, "pod/a"), pod(broken, "pod/b"))
    assert [r.outcome for r in verdict.results] == ["Error", "Failed"]
    assert verdict.outcome == "Failed"
    assert verdict.message == "smoke test 'setosa' on pod/b: expected status 200, got 500: boom"


def test_a_503_status_from_a_pod_directly_is_just_a_status(app: App) -> None:
    app.routes["/score"] = answer(503, kube_status(503, "ServiceUnavailable", "warming up"))
    verdict = run(make_spec(setosa(), attempts=3), pod(app))
    assert verdict.outcome == "Failed"
    assert len(app.seen) == 1
    assert verdict.results[0].message.startswith("expected status 200, got 503: ")


def test_api_server_unreachable_is_an_error() -> None:
    target = smoke.Target("pod/iris-abc", f"http://127.0.0.1:{closed_port()}/api/v1/x/proxy",
                          via_api_proxy=True)
    verdict = run(make_spec(setosa(), attempts=1), target)
    assert verdict.outcome == "Error"
    assert verdict.results[0].message == (
        "could not reach the API server: connection refused after 1 attempt")


def test_missing_client_certificate_is_an_error(app: App, tmp_path: Any) -> None:
    client = smoke.ClientSettings(cert=(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")))
    verdict = run(make_spec(setosa()), proxied(app), client=client)
    assert verdict.outcome == "Error"
    assert verdict.message.startswith("could not set up the HTTP client: ")
    assert app.seen == []


# --------------------------------------------------------------------------------------------
# The verdict


def test_no_targets_is_an_error() -> None:
    verdict = run(make_spec(setosa()))
    assert (verdict.outcome, verdict.message, verdict.results) == (
        "Error", "no targets to test", [])


def test_results_are_bounded_and_keep_the_failures(serve: Callable[[], App]) -> None:
    servers = [serve() for _ in range(3)]
    for server in servers:
        server.routes["/ok"] = answer(200, b"ok")
    servers[2].routes["/ok"] = answer(500, b"broken")
    tests = [{"name": f"t{i:02}", "method": "GET", "path": "/ok"} for i in range(32)]
    targets = [pod(server, f"pod/p{i}") for i, server in enumerate(servers)]
    verdict = run(make_spec(*tests), *targets)
    assert verdict.outcome == "Failed"
    assert len(verdict.results) == 64
    assert sum(r.outcome == "Failed" for r in verdict.results) == 32
    keys = [(int(r.name[1:]), int(r.target[5:])) for r in verdict.results]
    assert keys == sorted(keys)
    assert verdict.message == (
        "smoke test 't00' on pod/p2: expected status 200, got 500: broken "
        "(and 31 more failed checks)")
    models.LastSmokeTest.model_validate(
        verdict.to_status(revision="abc", generation=None, attempts=1))


# --------------------------------------------------------------------------------------------
# lookup()

DOC = {"predictions": [{"label": "setosa", "scores": [0.9, 0.1]}], "model-version": "1.0",
       "none": None}


@pytest.mark.parametrize(("path", "expected"), [
    ("$", DOC),
    ("$.predictions[0].label", "setosa"),
    ("$.predictions[0].scores[1]", 0.1),
    ("$.model-version", "1.0"),
    ("$.none", None),
])
def test_lookup_finds_values(path: str, expected: Any) -> None:
    assert smoke.lookup(DOC, path) == expected


@pytest.mark.parametrize(("path", "message"), [
    ("$.missing", "$ has no key 'missing'"),
    ("$.predictions[1]", "$.predictions has 1 item, no [1]"),
    ("$.predictions.label", "$.predictions is an array, not an object"),
    ("$.predictions[0].label[0]", "$.predictions[0].label is a string, not an array"),
    ("$.none.x", "$.none is null, not an object"),
])
def test_lookup_names_where_the_path_stops(path: str, message: str) -> None:
    with pytest.raises(LookupError) as raised:
        smoke.lookup(DOC, path)
    assert str(raised.value) == message


@pytest.mark.parametrize("path", ["predictions", "$..label", "$.predictions[*]", "$['a']"])
def test_lookup_rejects_unsupported_paths(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        smoke.lookup(DOC, path)


# --------------------------------------------------------------------------------------------
# Hostile specs and hostile answers: nothing leaves the target, nothing is unbounded


def sneaky_path(spec: models.ModelDeploymentSpec, path: str) -> models.ModelDeploymentSpec:
    """A spec whose test path skipped validation (as one read from an old object could)."""
    test = spec.smoke_tests[0].model_copy(update={"path": path})
    return spec.model_copy(update={"smoke_tests": [test]})


@pytest.mark.parametrize("path", [
    "/../../api/v1/namespaces/kube-system/configmaps", "/a/%2e%2e/b", "/a\\b", "//evil/x",
    "/score#frag", "/score\r\nHost: evil",
])
def test_a_path_that_would_leave_the_target_is_never_sent(app: App, path: str) -> None:
    spec = sneaky_path(make_spec(setosa(method="GET", body=None, expect={"status": 200})), path)
    verdict = run(spec, proxied(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message.startswith("not sent: "), verdict.results[0].message
    assert app.seen == []


def test_url_for_appends_the_path_byte_for_byte_under_the_base() -> None:
    target = smoke.Target("pod/p", "https://127.0.0.1:6443/api/v1/namespaces/ml/pods/p:8080/proxy",
                          via_api_proxy=True)
    url = smoke.url_for(target, "/v2/models/iris/infer?x=%20y")
    assert url.raw_path == b"/api/v1/namespaces/ml/pods/p:8080/proxy/v2/models/iris/infer?x=%20y"
    assert (url.host, url.port) == ("127.0.0.1", 6443)
    with pytest.raises(smoke.UnsafeURL, match="'..' segments"):
        smoke.url_for(target, "/a/../../../../api")


def test_identity_is_asked_for_and_a_gzip_bomb_is_inflated_only_up_to_the_cap(app: App) -> None:
    import gzip
    bomb = gzip.compress(b'{"predictions": [' + b" " * 50_000_000 + b"]}", 9)
    assert len(bomb) < 100_000
    app.routes["/score"] = answer(200, bomb, {"Content-Encoding": "gzip"})
    started = time.monotonic()
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == "response larger than 64 KiB"
    assert time.monotonic() - started < 5  # 50 MB were never inflated
    assert app.seen[0].headers["Accept-Encoding"] == "identity"


def test_a_small_gzip_answer_is_read_and_checked(app: App) -> None:
    import gzip
    app.routes["/score"] = answer(200, gzip.compress(json.dumps(GOOD_ANSWER).encode()),
                                  {"Content-Encoding": "gzip"})
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Passed", verdict.message


def test_an_encoding_that_was_not_asked_for_fails(app: App) -> None:
    app.routes["/score"] = answer(200, b"\x1b\x00", {"Content-Encoding": "br"})
    verdict = run(make_spec(setosa()), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == (
        "response body could not be decoded: the server answered with Content-Encoding br, "
        "although asked for identity")


def test_a_server_that_stalls_every_answer_is_cut_at_the_run_deadline(app: App) -> None:
    def stall(handler: Handler, body: bytes) -> None:
        app.stop.wait(30)

    app.routes["/score"] = stall
    spec = make_spec(setosa(), setosa(name="again"), timeout=20, attempts=3)
    started = time.monotonic()
    verdict = smoke.run_smoke_tests_sync(spec, [pod(app)], smoke.ClientSettings(), deadline=1)
    assert time.monotonic() - started < 3
    assert verdict.outcome == "Failed"
    assert [r.message for r in verdict.results] == [
        "no answer within the verification deadline of 1 s "
        "(spec.rollout.verificationDeadlineSeconds)"] * 2


def test_limiters_are_shared_between_runs(app: App) -> None:
    def slow(handler: Handler, body: bytes) -> None:
        time.sleep(0.2)
        score(handler, body)

    app.routes["/score"] = slow
    spec = make_spec(*(setosa(name=f"t{i}") for i in range(4)))

    async def both() -> list[smoke.Verdict]:
        shared = asyncio.Semaphore(1)
        return list(await asyncio.gather(*(
            smoke.run_smoke_tests(spec, [pod(app)], smoke.ClientSettings(), limiters=[shared])
            for _ in range(2))))

    verdicts = asyncio.run(both())
    assert [v.outcome for v in verdicts] == ["Passed", "Passed"]
    assert len(app.seen) == 8 and app.max_in_flight == 1


def test_a_catastrophic_pattern_in_the_output_schema_is_checked_in_linear_time(app: App
                                                                              ) -> None:
    app.routes["/score"] = answer(200, {"predictions": [{"label": "a" * 5000 + "!"}]})
    spec = make_spec(setosa(expect={"bodySchema": {"type": "object", "properties": {
        "predictions": {"type": "array", "items": {"properties": {
            "label": {"type": "string", "pattern": "^(a|aa)+$"}}}}}}}))
    verdict = run(spec, pod(app))
    assert verdict.outcome == "Failed"
    assert "does not match '^(a|aa)+$' at $.predictions[0].label" in verdict.results[0].message


def test_checking_answers_has_a_cpu_budget_per_run(app: App,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smoke, "CHECK_SECONDS", 0.05)
    app.routes["/score"] = answer(200, {"predictions": [{"label": "x"}] * 3000})
    heavy = {"type": "object", "properties": {"predictions": {"type": "array", "items": {
        "anyOf": [{"const": i} for i in range(1000)] + [{"type": "object"}]}}}}
    verdict = run(make_spec(setosa(expect={"bodySchema": heavy})), pod(app))
    assert verdict.outcome == "Failed"
    assert verdict.results[0].message == (
        "the answer could not be checked within the 0.05 s of CPU a run may spend on JSON "
        "Schema checks")


def test_impersonation_headers_are_never_sent_even_from_an_unchecked_spec(app: App) -> None:
    spec = make_spec(setosa())
    test = spec.smoke_tests[0].model_copy(update={"headers": {
        "Impersonate-User": "system:admin", "X-Remote-Group": "system:masters", "X-Ok": "1"}})
    verdict = run(spec.model_copy(update={"smoke_tests": [test]}), pod(app))
    assert verdict.outcome == "Passed", verdict.message
    sent = {name.lower() for name in app.seen[0].headers}
    assert "x-ok" in sent and not sent & {"impersonate-user", "x-remote-group"}


def test_a_refused_target_is_could_not_test_and_gets_no_request(app: App) -> None:
    target = smoke.Target("service/iris", app.url, refusal="the Service is not Slipway's")
    verdict = run(make_spec(setosa()), target)
    assert verdict.outcome == "Error"
    assert verdict.results[0].message == "not sent: the Service is not Slipway's"
    assert app.seen == []


# --------------------------------------------------------------------------------------------
# Prediction-level checks: numbers within a tolerance, and agreement with the serving revision


def test_a_score_within_its_tolerance_passes_and_one_beyond_fails(app: App) -> None:
    within = setosa(expect={"values": [{"path": "$.predictions[0].score", "equals": 0.95,
                                        "tolerance": {"absolute": 0.03}}]})
    assert run(make_spec(within), pod(app)).outcome == "Passed"
    beyond = setosa(expect={"values": [{"path": "$.predictions[0].score", "equals": 0.9,
                                        "tolerance": {"absolute": 0.03, "relative": 0.01}}]})
    verdict = run(make_spec(beyond), pod(app))
    assert verdict.outcome == "Failed" and verdict.reason == ""
    assert "$.predictions[0].score is 0.97, expected 0.9 within ±0.03 or 1 %" in verdict.message


def test_a_tolerance_is_refused_on_values_that_are_not_numbers() -> None:
    with pytest.raises(pydantic.ValidationError, match="a tolerance compares numbers"):
        make_spec(setosa(expect={"values": [{"path": "$.predictions[0].label",
                                             "equals": "setosa",
                                             "tolerance": {"absolute": 1}}]}))
    with pytest.raises(pydantic.ValidationError, match="needs absolute, relative or both"):
        make_spec(setosa(expect={"values": [{"path": "$.predictions[0].score",
                                             "equals": 1, "tolerance": {}}]}))


def agreeing_spec(min_rate: float = 1.0, **extra: Any) -> models.ModelDeploymentSpec:
    spec = make_spec({"name": "batch", "body": {"instances": [[5.1, 3.5, 1.4, 0.2]] * 3}})
    return spec.model_copy(update={"agreement": models.Agreement.model_validate(
        {"paths": [{"path": "$.predictions", "tolerance": {"absolute": 0.02}}],
         "minRate": min_rate, **extra})})


BATCH = {"predictions": [{"label": "setosa", "score": 0.97}, {"label": "versicolor",
                                                             "score": 0.8},
                         {"label": "virginica", "score": 0.9}]}
SWAPPED = {"predictions": [{"label": "setosa", "score": 0.975}, {"label": "virginica",
                                                                "score": 0.8},
                           {"label": "versicolor", "score": 0.9}]}


def test_answers_that_agree_with_the_serving_revision_pass(serve: Callable[[], App]) -> None:
    new, serving = serve(), serve()
    new.routes["/score"] = answer(200, {**BATCH, "predictions": [
        {**p, "score": p["score"] + 0.01} for p in BATCH["predictions"]]})
    serving.routes["/score"] = answer(200, BATCH)
    verdict = asyncio.run(smoke.run_smoke_tests(agreeing_spec(), [pod(new, "pod/new")],
                                                smoke.ClientSettings(),
                                                serving=pod(serving, "pod/old")))
    assert verdict.outcome == "Passed", verdict.message
    [agreement] = [r for r in verdict.results if r.name == smoke.AGREEMENT]
    assert agreement.target == "pod/new vs pod/old (serving)"
    assert agreement.message.startswith("3 of 3 compared items agree with pod/old (100 %")
    assert len(serving.requests_to("/score")) == 1  # the same request went to the serving pod


def test_swapped_labels_disagree_and_fail_with_their_own_reason(
        serve: Callable[[], App]) -> None:
    new, serving = serve(), serve()
    new.routes["/score"] = answer(200, SWAPPED)
    serving.routes["/score"] = answer(200, BATCH)
    verdict = asyncio.run(smoke.run_smoke_tests(agreeing_spec(0.9), [pod(new, "pod/new")],
                                                smoke.ClientSettings(),
                                                serving=pod(serving, "pod/old")))
    assert (verdict.outcome, verdict.reason) == ("Failed", smoke.PREDICTIONS_DISAGREE)
    assert "1 of 3 compared items agree with pod/old (33.3 %, at least 90 % wanted)" in \
        verdict.message
    assert "$.predictions[1]: .label: 'virginica' vs 'versicolor'" in verdict.message
    # The same answers pass when only a third must agree
    passed = asyncio.run(smoke.run_smoke_tests(agreeing_spec(0.3), [pod(new, "pod/new")],
                                               smoke.ClientSettings(),
                                               serving=pod(serving, "pod/old")))
    assert passed.outcome == "Passed", passed.message


def test_a_serving_answer_that_cannot_be_used_is_could_not_test(
        serve: Callable[[], App]) -> None:
    new, serving = serve(), serve()
    new.routes["/score"] = answer(200, BATCH)
    serving.routes["/score"] = answer(503, b"overloaded")
    verdict = asyncio.run(smoke.run_smoke_tests(agreeing_spec(), [pod(new, "pod/new")],
                                                smoke.ClientSettings(),
                                                serving=pod(serving, "pod/old")))
    assert verdict.outcome == "Error" and verdict.reason == ""
    assert "could not compare: the serving revision's answer to 'batch'" in verdict.message


def test_a_failing_own_check_is_a_smoke_test_failure_not_a_disagreement(
        serve: Callable[[], App]) -> None:
    new, serving = serve(), serve()
    new.routes["/score"] = answer(500, {"error": "boom"})
    serving.routes["/score"] = answer(200, BATCH)
    verdict = asyncio.run(smoke.run_smoke_tests(agreeing_spec(), [pod(new, "pod/new")],
                                                smoke.ClientSettings(),
                                                serving=pod(serving, "pod/old")))
    assert (verdict.outcome, verdict.reason) == ("Failed", "")
    assert "expected status 200, got 500" in verdict.message


def test_agreement_tests_must_name_smoke_tests() -> None:
    with pytest.raises(pydantic.ValidationError, match="agreement.tests names no smoke test"):
        models.ModelDeploymentSpec.model_validate({
            **make_spec(setosa()).model_dump(by_alias=True, exclude_none=True, mode="json"),
            "agreement": {"paths": [{"path": "$.predictions"}], "tests": ["nope"]}})


def test_tls_contexts_are_made_once_per_ca_bundle_and_again_when_it_changes(tmp_path) -> None:
    import os
    import subprocess

    ca = tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(ca), "-subj", "/CN=test-ca", "-days", "1"],
                   check=True, capture_output=True)
    settings = smoke.ClientSettings(verify=str(ca))
    first = smoke._ssl_context(settings, with_cert=False)
    assert smoke._ssl_context(settings, with_cert=False) is first
    assert smoke._ssl_context(smoke.ClientSettings(), with_cert=False) is not first
    assert first.cert_store_stats()["x509_ca"] == 1
    stat = ca.stat()
    os.utime(ca, (stat.st_atime, stat.st_mtime + 10))  # rotated (same bytes: a new mtime)
    again = smoke._ssl_context(settings, with_cert=False)
    assert again is not first and again.cert_store_stats()["x509_ca"] == 1
