"""HTTP host for an AzureML-style entry script (init()/run()), standard library only.

Why it exists: Slipway needs a real model server to deploy and smoke-test without pulling
images or third-party packages. It serves
  POST /score    -> run(payload); 400 for malformed input, 500 for deployment faults
  GET  /healthz  -> 200 while the process is alive (liveness)
  GET  /readyz   -> 200 once init() has finished, 503 before (readiness)
Environment:
  SLIPWAY_BIND_HOST (default 0.0.0.0), PORT (default 8080),
  SCORE_SCRIPT (default <bundle>/score.py; the broken variants live in variants/),
  MODEL_PATH, MODEL_NAME, MODEL_VERSION, MODEL_URI (read by the entry script),
  SLIPWAY_INIT_DELAY (seconds to sleep before init(), to imitate a slow model load).
The entry script is imported before the port is bound, so an import error (a missing
dependency) crashes the process at start with a traceback, as it would in a container.
"""
from __future__ import annotations

import http.server
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import traceback
import types
from typing import Any

BUNDLE_DIR = os.path.dirname(os.path.abspath(__file__))
MAX_BODY = 1 << 20  # 1 MiB is plenty for 1000 instances of 4 floats


def log(msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} reference-model: {msg}", file=sys.stderr, flush=True)


def load_entry_script(path: str) -> types.ModuleType:
    """Import the entry script by path; its own dir and the bundle dir go on sys.path."""
    for folder in (BUNDLE_DIR, os.path.dirname(os.path.abspath(path))):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("score", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["score"] = module
    spec.loader.exec_module(module)
    for name in ("init", "run"):
        if not callable(getattr(module, name, None)):
            raise ImportError(f"entry script {path} has no {name}() function")
    return module


class State:
    """What the handlers share: the entry script and whether init() has finished."""

    def __init__(self, script: types.ModuleType) -> None:
        self.script = script
        self.ready = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "slipway-reference-model/1.0"
    state: State  # set on the subclass built in main()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        # Probes hit /healthz and /readyz every few seconds; keep only the scoring calls.
        if not self.path.startswith(("/healthz", "/readyz")):
            log(f"{self.client_address[0]} {format % args}")

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, {"status": "alive"})
        elif path == "/readyz":
            if self.state.ready.is_set():
                self._send(200, {"status": "ready"})
            else:
                self._send(503, {"status": "loading"})
        elif path == "/":
            self._send(200, {"endpoints": ["POST /score", "GET /healthz", "GET /readyz"]})
        else:
            self._send(404, {"error": f"no such endpoint: GET {path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        if path != "/score":
            self._send(404, {"error": f"no such endpoint: POST {path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(400, {"error": "invalid Content-Length header"})
            return
        if length > MAX_BODY:
            self._send(413, {"error": f"request body larger than {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(length)
        # A slow model on purpose (SLIPWAY_SCORE_DELAY seconds per request), for latency-budget
        # and restart-during-verification scenarios.
        time.sleep(float(os.environ.get("SLIPWAY_SCORE_DELAY", "0") or 0))
        if not self.state.ready.is_set():
            self._send(503, {"error": "model is still loading; retry when /readyz is 200"})
            return
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._send(400, {"error": f"request body is not valid JSON: {exc}"})
            return
        try:
            result = self.state.script.run(payload)
        except Exception as exc:  # the entry script decides the status via http_status
            status = getattr(exc, "http_status", 500)
            if status >= 500:
                log(f"scoring failed: {exc!r}")
                traceback.print_exc()
            message = str(exc) if status < 500 else f"scoring failed: {exc}"
            self._send(status, {"error": message})
            return
        self._send(200, result)


def main() -> int:
    host = os.environ.get("SLIPWAY_BIND_HOST", "0.0.0.0")
    port = int(os.environ.get("PORT", "8080"))
    script_path = os.environ.get("SCORE_SCRIPT") or os.path.join(BUNDLE_DIR, "score.py")

    script = load_entry_script(script_path)  # an ImportError here ends the process (exit 1)
    state = State(script)
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True

    def stop(signum: int, _frame: Any) -> None:
        log(f"signal {signum}: shutting down")
        # shutdown() waits for serve_forever() to return, so not from its own thread
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serving = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    serving.start()
    log(f"listening on {host}:{httpd.server_address[1]} (entry script {script_path})")

    delay = float(os.environ.get("SLIPWAY_INIT_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)
    try:
        script.init()
    except Exception:
        traceback.print_exc()
        log("init() failed; exiting")
        httpd.shutdown()
        return 1
    state.ready.set()
    log("init() finished; ready")
    serving.join()
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
