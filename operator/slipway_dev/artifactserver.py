"""A model artifact server for the local cluster's tests: run as a pod, it serves the files
under ARTIFACT_ROOT over HTTP, as a bucket's website or an internal file server would.

    GET /files/<path>     the file as it is
    GET /corrupt/<path>   the same file with one byte changed (its first byte, XOR 1): what a
                          truncated upload, a bit flip or a swapped object looks like to a
                          fetcher that checks digests
    GET /healthz          200

Anything else, a missing file or a path that leaves ARTIFACT_ROOT is 404. Standard library
only: the node agent runs it with its own interpreter (examples/images.yaml).
"""
from __future__ import annotations

import http.server
import os
import pathlib
import sys
import urllib.parse


def resolve(root: pathlib.Path, raw_path: str) -> tuple[str, pathlib.Path] | None:
    """(mode, file) for a request path, or None: mode is "files" or "corrupt"."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path)
    mode, _, rest = path.lstrip("/").partition("/")
    if mode not in ("files", "corrupt") or not rest:
        return None
    target = (root / rest).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return None
    return mode, target


class Handler(http.server.BaseHTTPRequestHandler):
    root = pathlib.Path(".")

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        if self.path == "/healthz":
            self._answer(200, b"ok\n")
            return
        found = resolve(self.root, self.path)
        if found is None:
            self._answer(404, b"no such artifact\n")
            return
        mode, target = found
        body = bytearray(target.read_bytes())
        if mode == "corrupt" and body:
            body[0] ^= 1
        self._answer(200, bytes(body), "application/octet-stream")

    def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"artifact-server: {self.address_string()} {format % args}\n")


def main() -> int:
    root = os.environ.get("ARTIFACT_ROOT")
    if not root or not os.path.isdir(root):
        print(f"artifact-server: ARTIFACT_ROOT {root!r} is not a folder", file=sys.stderr)
        return 1
    Handler.root = pathlib.Path(root)
    host = os.environ.get("SLIPWAY_BIND_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    print(f"artifact-server: serving {root} on {host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
