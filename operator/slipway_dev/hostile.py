"""A hostile model server, and the canary that counts who reached it (for the escape tests).

Standard library only, so the node agent can run it as an image and a test can run it as a plain
process. One mode per process (``HOSTILE_MODE``):

  canary     every request is counted and answered 200 with a JSON body that would satisfy a
             smoke test expecting the API server's answers (a ConfigMapList), so reaching it
             shows as a hit, never as a failure
  ok         a correct answer to the reference model's scoring request
  redirect   the scoring path answers 302 to ``HOSTILE_TARGET``
  gzip-bomb  a small gzip body that inflates to about 50 MB
  huge       a 20 MB body, streamed
  stall      accepts the request and never answers
  slow-500   answers 500 after ``HOSTILE_DELAY`` seconds

Whatever the mode: ``GET /healthz`` and ``GET /readyz`` answer 200 (not counted), and
``GET /__hits`` returns the hits so far as JSON: [{method, path, userAgent, host}] (not counted).
It listens on ``SLIPWAY_BIND_HOST`` (default 0.0.0.0) and ``PORT`` (default 8080).
"""
from __future__ import annotations

import gzip
import http.server
import json
import os
import threading
import time
from typing import Any

MODE = os.environ.get("HOSTILE_MODE", "canary")
TARGET = os.environ.get("HOSTILE_TARGET", "http://127.0.0.1:9/")
DELAY = float(os.environ.get("HOSTILE_DELAY", "3"))
GOOD = {"predictions": [{"label": "setosa", "probability": 0.98}],
        "model": {"name": "iris-classifier", "version": "1.0.0", "uri": "file:///x"}}
CANARY = {"kind": "ConfigMapList", "apiVersion": "v1", "items": [], "canary": True}
BOMB = gzip.compress(b'{"predictions": [' + b" " * 50_000_000 + b"]}", 9)

hits: list[dict[str, Any]] = []
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        self._body()
        path = self.path.split("?", 1)[0]
        if self.command == "GET" and path in ("/healthz", "/readyz"):
            self._send(200, b'{"ok": true}')
            return
        if self.command == "GET" and path == "/__hits":
            with lock:
                self._send(200, json.dumps(hits).encode())
            return
        with lock:
            hits.append({"method": self.command, "path": self.path,
                         "userAgent": self.headers.get("User-Agent", ""),
                         "host": self.headers.get("Host", "")})
        if MODE == "canary":
            self._send(200, json.dumps(CANARY).encode())
        elif MODE == "ok":
            self._send(200, json.dumps(GOOD).encode())
        elif MODE == "redirect":
            self._send(302, b"", {"Location": TARGET})
        elif MODE == "gzip-bomb":
            self._send(200, BOMB, {"Content-Encoding": "gzip"})
        elif MODE == "huge":
            chunk = b" " * 65536
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(chunk) * 320 + 2))
            self.end_headers()
            try:
                self.wfile.write(b"[")
                for _ in range(320):
                    self.wfile.write(chunk)
                self.wfile.write(b"]")
            except OSError:
                pass
        elif MODE == "stall":
            time.sleep(3600)
        elif MODE == "slow-500":
            time.sleep(DELAY)
            self._send(500, b'{"error": "slow and wrong"}')
        else:
            self._send(500, json.dumps({"error": f"unknown HOSTILE_MODE {MODE}"}).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def main() -> None:
    host = os.environ.get("SLIPWAY_BIND_HOST", "0.0.0.0")  # noqa: S104 - inside a pod netns
    server = Server((host, int(os.environ.get("PORT", "8080"))), Handler)
    print(f"hostile server ({MODE}) on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
