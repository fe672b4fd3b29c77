"""A small JSON-over-HTTP client for the API calls the node agent makes.

Why it exists: the `kubernetes` package's generated API classes changed shape between
releases (v37 validates bodies with pydantic models and defaults PATCH to JSON-patch), and
the agent works on plain dicts (watch events, strategic-merge status patches). So it uses the
package only to read the kubeconfig (token, client cert, CA) and talks to the API server with
urllib3, which the package depends on anyway.
"""
from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3

log = logging.getLogger("slipway.kubeapi")

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class KubeApi:
    def __init__(self, kubeconfig: str, user_agent: str = "slipway-nodeagent") -> None:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.host = cfg.host.rstrip("/")
        self.headers = {"Accept": "application/json", "User-Agent": user_agent}
        for key in ("BearerToken", "authorization"):
            token = cfg.api_key.get(key)
            if token:
                prefix = (cfg.api_key_prefix or {}).get(key, "")
                value = f"{prefix} {token}".strip() if prefix else token
                self.headers["Authorization"] = (
                    value if value.lower().startswith("bearer ") else f"Bearer {value}"
                )
                break
        pool_args: dict[str, Any] = {"maxsize": 16, "retries": False}
        if cfg.verify_ssl:
            pool_args.update(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert)
        else:
            pool_args["cert_reqs"] = "CERT_NONE"
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if cfg.cert_file:
            pool_args.update(cert_file=cfg.cert_file, key_file=cfg.key_file)
        self.http = urllib3.PoolManager(num_pools=4, **pool_args)

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self.http.request(
            method, self._url(path, query), body=data, headers=headers, timeout=timeout
        )
        if resp.status >= 400:
            raise ApiError(resp.status, resp.data.decode(errors="replace"))
        return json.loads(resp.data) if resp.data else None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def watch(self, path: str, timeout_seconds: int = 300, **query: Any) -> Iterator[dict]:
        """Yield watch events ({type, object}) until the server closes the stream."""
        query = {**query, "watch": "true", "timeoutSeconds": timeout_seconds}
        resp = self.http.request(
            "GET",
            self._url(path, query),
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.read().decode(errors="replace"))
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()
