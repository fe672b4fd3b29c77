"""Probe state machine of the node agent: thresholds, delays, defaults (kubelet semantics)."""
from __future__ import annotations

import http.server
import threading

import slipway_dev.probes as probes


def spec(kind: str, **fields: object) -> probes.ProbeSpec:
    result = probes.ProbeSpec.from_pod(kind, {"httpGet": {"path": "/", "port": 80}, **fields})
    assert result is not None
    return result


def test_defaults_match_the_api_server() -> None:
    s = spec("readiness")
    assert (s.initial_delay, s.period, s.timeout) == (0, 10, 1)
    assert (s.success_threshold, s.failure_threshold) == (1, 3)


def test_readiness_starts_false_and_liveness_starts_true() -> None:
    assert probes.ProbeTracker(spec("readiness"), 0).result is False
    assert probes.ProbeTracker(spec("liveness"), 0).result is True
    assert probes.ProbeTracker(spec("startup"), 0).result is False


def test_first_probe_waits_for_the_initial_delay_then_the_period() -> None:
    t = probes.ProbeTracker(spec("readiness", initialDelaySeconds=5, periodSeconds=2), 100)
    assert not t.due(104.9) and t.due(105)
    t.record(True, 105)
    assert not t.due(106.9) and t.due(107)


def test_liveness_fails_only_after_failure_threshold_consecutive_failures() -> None:
    t = probes.ProbeTracker(spec("liveness", failureThreshold=3), 0)
    t.record(False, 1)
    t.record(False, 2)
    assert t.result is True and not t.failed
    t.record(True, 3)  # a success resets the count
    t.record(False, 4)
    t.record(False, 5)
    assert not t.failed
    assert t.record(False, 6) is True
    assert t.failed and t.result is False


def test_readiness_needs_success_threshold_consecutive_successes() -> None:
    t = probes.ProbeTracker(spec("readiness", successThreshold=2, failureThreshold=1), 0)
    t.record(True, 1)
    assert t.result is False
    t.record(True, 2)
    assert t.result is True
    t.record(False, 3)
    assert t.result is False


def test_liveness_and_startup_success_threshold_is_forced_to_one() -> None:
    assert spec("liveness", successThreshold=3).success_threshold == 1
    assert spec("startup", successThreshold=3).success_threshold == 1


def test_named_ports_resolve_through_the_container_ports() -> None:
    container = {"ports": [{"name": "http", "containerPort": 8080}]}
    assert probes.resolve_port("http", container) == 8080
    assert probes.resolve_port(9000, container) == 9000
    assert probes.resolve_port("9001", container) == 9001


def test_http_probe_succeeds_on_2xx_and_fails_on_5xx_and_refused() -> None:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        ok = probes.ProbeSpec.from_pod("readiness", {"httpGet": {"path": "/ok", "port": port}})
        bad = probes.ProbeSpec.from_pod("readiness", {"httpGet": {"path": "/no", "port": port}})
        tcp = probes.ProbeSpec.from_pod("liveness", {"tcpSocket": {"port": port}})
        assert ok and bad and tcp
        assert probes.run_probe(ok, "127.0.0.1", {})[0] is True
        assert probes.run_probe(bad, "127.0.0.1", {}) == (
            False, "HTTP probe failed with statuscode: 503",
        )
        assert probes.run_probe(tcp, "127.0.0.1", {})[0] is True
    finally:
        srv.shutdown()
        srv.server_close()
    assert probes.run_probe(ok, "127.0.0.1", {})[0] is False  # connection refused


def test_exec_probe_uses_the_exit_code() -> None:
    yes = probes.ProbeSpec.from_pod("liveness", {"exec": {"command": ["true"]}})
    no = probes.ProbeSpec.from_pod("liveness", {"exec": {"command": ["false"]}})
    assert yes and no
    assert probes.run_probe(yes, "127.0.0.1", {})[0] is True
    assert probes.run_probe(no, "127.0.0.1", {})[0] is False
