"""An API fault injector: a reverse proxy between the operator and the API server, for tests.

The operator's kubeconfig names ``http://127.0.0.1:PORT`` (loopback only); every request goes on
to the real API server over TLS (its CA; the client's own bearer token passed through, or a
client certificate the proxy presents for a kubeconfig that uses one). On the way, per request
and at random (a seed makes a run repeatable):

- **errors**: a share of requests is answered by the proxy itself with 500, 503, 429 or 409, as
  the API server answers them (a ``Status`` object; ``Retry-After`` on 429 and 503). A 409 is
  only given to a write: a read that conflicts is not something the API server answers;
- **delays**: a share is held for ``delay_seconds`` (set it past the client's timeout), then sent
  on all the same: a write the client gave up on may still land, as with a slow API server;
- **cuts**: a share of watch streams is cut after a random time (``cut_after``), mid-stream;
- **outages**: ``POST /outage`` on the control port stops listening for N seconds (connections
  are refused) and breaks every connection open at that moment, watches included.

The proxy is built on aiohttp (server and client), the HTTP library kopf already brings: its
streaming responses carry watches through chunk by chunk, and nothing here parses HTTP by hand.

The control port (loopback too) answers ``GET /stats`` (what was injected, by kind, and how many
requests went through), ``PUT /faults`` (a JSON object with the fields of :class:`Faults`,
replacing them: a test turns faults on and off mid-run) and ``POST /outage`` with
``{"seconds": N}`` (returns at once; ``GET /stats`` says when it is over).

Run: ``python -m slipway_dev.faultproxy --upstream https://127.0.0.1:6443 --ca ca.crt
--port 7001 --control-port 7002 --errors 0.2``.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import random
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("slipway.faultproxy")

ERROR_STATUSES = (500, 503, 429, 409)
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REASONS = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests",
           409: "Conflict"}
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp sets itself for the new message.
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


@dataclasses.dataclass(frozen=True)
class Faults:
    """What to inject; shares are of all requests (a request gets at most one fault)."""

    errors: float = 0.0  # share answered with one of ``statuses`` by the proxy
    statuses: tuple[int, ...] = ERROR_STATUSES
    delays: float = 0.0  # share held for delay_seconds before it is sent on
    delay_seconds: float = 0.0
    cuts: float = 0.0  # share of watches cut after a time drawn from cut_after
    cut_after: tuple[float, float] = (1.0, 10.0)

    def __post_init__(self) -> None:
        for name in ("errors", "delays", "cuts"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}: a share between 0 and 1, not {share!r}")
        if self.errors + self.delays > 1.0:
            raise ValueError("errors + delays: at most 1 (a request gets one fault at most)")
        if not self.statuses or any(code not in REASONS for code in self.statuses):
            raise ValueError(f"statuses: some of {sorted(REASONS)}, not {list(self.statuses)}")
        low, high = self.cut_after
        if not 0 < low <= high:
            raise ValueError(f"cut_after: 0 < low <= high, not {self.cut_after!r}")
        if self.delay_seconds < 0:
            raise ValueError("delay_seconds: not negative")

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Faults:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(document) - fields)
        if unknown:
            raise ValueError(f"unknown fields {unknown}; known: {sorted(fields)}")
        values: dict[str, Any] = dict(document)
        for name in ("statuses", "cut_after"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # "none", "error", "delay", "cut"
    status: int = 0
    seconds: float = 0.0


NONE = Fault("none")


def choose(rng: random.Random, faults: Faults, method: str, watch: bool) -> Fault:
    """The fault for one request (pure but for ``rng``)."""
    draw = rng.random()
    if draw < faults.errors:
        statuses = [code for code in faults.statuses
                    if code != 409 or method.upper() in WRITE_METHODS]
        if statuses:
            return Fault("error", status=rng.choice(statuses))
        return NONE
    if draw < faults.errors + faults.delays:
        return Fault("delay", seconds=faults.delay_seconds)
    if watch and rng.random() < faults.cuts:
        return Fault("cut", seconds=rng.uniform(*faults.cut_after))
    return NONE


def status_body(code: int, method: str, path: str) -> dict[str, Any]:
    """The ``Status`` object the API server answers an error with."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"fault injected by slipway_dev.faultproxy: {code} for {method} {path}",
            "reason": REASONS[code], "code": code}


def is_watch(query: Mapping[str, str]) -> bool:
    return query.get("watch", "").lower() in {"1", "true"}


class FaultProxy:
    def __init__(self, upstream: str, *, faults: Faults = Faults(), seed: int | None = None,
                 ca: str | None = None, client_cert: tuple[str, str] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self.rng = random.Random(seed)
        self.ssl: ssl.SSLContext | bool = True
        if self.upstream.startswith("https://"):
            context = ssl.create_default_context(cafile=ca)
            if client_cert:
                context.load_cert_chain(*client_cert)
            self.ssl = context
        self.counts: collections.Counter[str] = collections.Counter()
        self.outage_until = 0.0
        self.outages = 0
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.control_runner: web.AppRunner | None = None
        self.control_port = 0
        self.open: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    # ----------------------------------------------------------------------------------------
    # Life

    async def start(self, port: int = 0, control_port: int = 0) -> None:
        # No total timeout: a watch lasts as long as the API server keeps it open.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False, trust_env=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=2.0)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, self.host, port, reuse_address=True)
        await self.site.start()
        self.port = self._bound_port(self.site)
        control = web.Application()
        control.router.add_get("/stats", self.get_stats)
        control.router.add_put("/faults", self.put_faults)
        control.router.add_post("/outage", self.post_outage)
        self.control_runner = web.AppRunner(control, access_log=None, handle_signals=False,
                                            shutdown_timeout=2.0)
        await self.control_runner.setup()
        control_site = web.TCPSite(self.control_runner, self.host, control_port)
        await control_site.start()
        self.control_port = self._bound_port(control_site)

    @staticmethod
    def _bound_port(site: web.TCPSite) -> int:
        server = site._server  # noqa: SLF001 - aiohttp keeps the bound socket only here
        assert isinstance(server, asyncio.base_events.Server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._break_connections()  # watches would hold the runner's graceful shutdown
        for runner in (self.runner, self.control_runner):
            if runner is not None:
                await runner.cleanup()
        if self.session is not None:
            await self.session.close()

    # ----------------------------------------------------------------------------------------
    # Outages

    def in_outage(self) -> bool:
        return time.monotonic() < self.outage_until

    async def outage(self, seconds: float) -> None:
        """Stop listening for ``seconds`` and break every open connection."""
        assert self.runner is not None and self.site is not None
        self.outages += 1
        self.outage_until = time.monotonic() + seconds
        await self.site.stop()
        self._break_connections()
        log.info("outage %d: %.1f s, %d connections broken", self.outages, seconds,
                 self.counts["broken"])
        await asyncio.sleep(seconds)
        self.site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        while True:  # the port is ours; a lingering socket may hold it for a moment
            try:
                await self.site.start()
                break
            except OSError:
                await asyncio.sleep(0.1)
        log.info("outage %d over", self.outages)

    def _break_connections(self) -> None:
        server = self.runner.server if self.runner is not None else None
        for handler in list(getattr(server, "connections", []) or []):
            transport = getattr(handler, "transport", None)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
                self.counts["broken"] += 1
        for transport in list(self.open):
            transport.abort()
        self.open.clear()

    # ----------------------------------------------------------------------------------------
    # Requests

    async def forward(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        if self.in_outage():  # accepted in the instant before the listener closed
            assert request.transport is not None
            request.transport.abort()
            self.counts["refused"] += 1
            raise web.HTTPServiceUnavailable()
        watch = is_watch(request.query)
        fault = choose(self.rng, self.faults, request.method, watch)
        if fault.kind == "error":
            self.counts[f"error:{fault.status}"] += 1
            headers = {"Retry-After": "1"} if fault.status in (429, 503) else {}
            return web.json_response(status_body(fault.status, request.method, request.path),
                                     status=fault.status, headers=headers)
        body = await request.read()  # before a delay: the client may be gone after it
        if fault.kind == "delay":
            self.counts["delay"] += 1
            await asyncio.sleep(fault.seconds)
        forwarded = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        assert self.session is not None
        url = self.upstream + request.raw_path
        try:
            upstream = await self.session.request(
                request.method, url, headers=forwarded, data=body or None, ssl=self.ssl,
                allow_redirects=False)
        except (aiohttp.ClientError, OSError) as error:
            self.counts["upstream-failed"] += 1
            return web.json_response(status_body(503, request.method, request.path) | {
                "message": f"the API server could not be reached: {error}"}, status=503)
        transport = request.transport
        if transport is not None:
            self.open.add(transport)
        try:
            async with upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                if fault.kind == "cut":
                    self.counts["cut"] += 1
                    try:
                        await asyncio.wait_for(self._copy(upstream, response), fault.seconds)
                    except TimeoutError:
                        if transport is not None:
                            transport.abort()
                        return response
                else:
                    await self._copy(upstream, response)
                self.counts["forwarded"] += 1
                await response.write_eof()
                return response
        except (aiohttp.ClientError, ConnectionError, OSError):
            # The API server closed its end, or the client went away: end this side too.
            if transport is not None:
                transport.abort()
            return web.Response(status=502)
        finally:
            if transport is not None:
                self.open.discard(transport)

    @staticmethod
    async def _copy(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)

    # ----------------------------------------------------------------------------------------
    # Control

    def stats(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "faults": dataclasses.asdict(self.faults),
                "outages": self.outages, "inOutage": self.in_outage(),
                "injected": sum(n for kind, n in self.counts.items()
                                if kind.startswith("error:") or kind in {"delay", "cut"})}

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            document = await request.json()
            if not isinstance(document, dict):
                raise ValueError("a JSON object")
            self.faults = Faults.from_json(document)
        except (ValueError, TypeError) as error:
            return web.json_response({"error": str(error)}, status=400)
        log.info("faults now %s", self.faults)
        return web.json_response(self.stats())

    async def post_outage(self, request: web.Request) -> web.Response:
        try:
            seconds = float((await request.json())["seconds"])
            if not 0 < seconds <= 3600:
                raise ValueError("between 0 and 3600")
        except (ValueError, TypeError, KeyError) as error:
            return web.json_response({"error": f"seconds: {error}"}, status=400)
        if self.in_outage():
            return web.json_response({"error": "an outage is under way"}, status=409)
        task = asyncio.ensure_future(self.outage(seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self.stats() | {"inOutage": True})


class Process:
    """The proxy in a subprocess of its own (its event loop stays out of the caller's), with
    its control port at hand: for the cluster tests and ``bench/chaos.py``."""

    def __init__(self, upstream: str, *, ca: str | None, log: str,
                 client_cert: tuple[str, str] | None = None, seed: int | None = None,
                 timeout: float = 30) -> None:
        from slipway_dev.cluster import free_port  # one module of helpers, no cycle at import

        self.port, self.control_port = free_port(), free_port()
        argv = [sys.executable, "-m", "slipway_dev.faultproxy", "--upstream", upstream,
                "--port", str(self.port), "--control-port", str(self.control_port)]
        if ca:
            argv += ["--ca", ca]
        if client_cert:
            argv += ["--client-cert", *client_cert]
        if seed is not None:
            argv += ["--seed", str(seed)]
        with open(log, "ab") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while self.stats() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fault proxy did not start; see {log}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=5) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, Any] | None:
        """What ``GET /stats`` says; None while the proxy does not answer."""
        try:
            return dict(self._call("GET", "/stats"))
        except OSError:
            return None

    def set_faults(self, **faults: Any) -> None:
        """Replace the faults (the fields of :class:`Faults`; none: no faults)."""
        self._call("PUT", "/faults", faults)

    def outage(self, seconds: float) -> None:
        self._call("POST", "/outage", {"seconds": seconds})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m slipway_dev.faultproxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="the API server, https://HOST:PORT")
    p.add_argument("--ca", help="the API server's CA bundle")
    p.add_argument("--client-cert", nargs=2, metavar=("CERT", "KEY"),
                   help="a client certificate to present (for a kubeconfig that uses one)")
    p.add_argument("--port", type=int, default=0, help="listen on 127.0.0.1:PORT (0: any)")
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--errors", type=float, default=0.0)
    p.add_argument("--statuses", default=",".join(map(str, ERROR_STATUSES)))
    p.add_argument("--delays", type=float, default=0.0)
    p.add_argument("--delay-seconds", type=float, default=0.0)
    p.add_argument("--cuts", type=float, default=0.0)
    p.add_argument("--cut-after", nargs=2, type=float, default=(1.0, 10.0))
    p.add_argument("--seed", type=int)
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    faults = Faults(errors=args.errors, delays=args.delays, delay_seconds=args.delay_seconds,
                    cuts=args.cuts, cut_after=tuple(args.cut_after),
                    statuses=tuple(int(code) for code in args.statuses.split(",") if code))
    proxy = FaultProxy(args.upstream, faults=faults, seed=args.seed, ca=args.ca,
                       client_cert=(args.client_cert[0], args.client_cert[1])
                       if args.client_cert else None)
    await proxy.start(args.port, args.control_port)
    print(json.dumps({"port": proxy.port, "controlPort": proxy.control_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s faultproxy %(levelname)s %(message)s")
    try:
        args = parse_args(argv)
        asyncio.run(_serve(args))
    except ValueError as error:
        print(f"faultproxy: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
