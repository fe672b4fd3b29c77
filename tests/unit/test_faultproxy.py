"""The API fault injector: its choice of faults, and the real proxy in front of a real HTTP
server (aiohttp on loopback) standing in for the API server: errors as Status objects, 409 for
writes only, delayed requests that still arrive, watches cut mid-stream, and an outage during
which connections are refused."""
from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from slipway_dev import faultproxy
from slipway_dev.faultproxy import Faults


def test_shares_of_each_fault_follow_the_configuration() -> None:
    rng = random.Random(7)
    faults = Faults(errors=0.2, delays=0.05, delay_seconds=31, cuts=0.5)
    kinds: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    for _ in range(20_000):
        fault = faultproxy.choose(rng, faults, "PATCH", watch=False)
        kinds[fault.kind] += 1
        statuses[fault.status] += fault.kind == "error"
    assert abs(kinds["error"] / 20_000 - 0.2) < 0.015
    assert abs(kinds["delay"] / 20_000 - 0.05) < 0.01
    assert kinds["cut"] == 0  # only watches are cut
    assert set(k for k, n in statuses.items() if n) == {500, 503, 429, 409}


def test_a_read_is_never_answered_409_and_watches_are_cut() -> None:
    rng = random.Random(1)
    faults = Faults(errors=0.5, cuts=1.0, cut_after=(2.0, 3.0))
    seen = [faultproxy.choose(rng, faults, "GET", watch=True) for _ in range(2_000)]
    assert {f.status for f in seen if f.kind == "error"} == {500, 503, 429}
    cuts = [f.seconds for f in seen if f.kind == "cut"]
    assert cuts and all(2.0 <= s <= 3.0 for s in cuts)
    only_conflicts = Faults(errors=1.0, statuses=(409,))
    assert faultproxy.choose(rng, only_conflicts, "GET", watch=False).kind == "none"


@pytest.mark.parametrize("document, message", [
    ({"errors": 1.5}, "errors: a share between 0 and 1"),
    ({"errors": 0.6, "delays": 0.6}, "at most 1"),
    ({"statuses": [404]}, "statuses"),
    ({"cut_after": [5, 1]}, "cut_after"),
    ({"error": 0.2}, "unknown fields ['error']"),
])
def test_a_bad_configuration_is_refused_with_a_clear_error(document: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Faults.from_json(document)


# --------------------------------------------------------------------------------------------
# The real proxy before a real server


class Upstream:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes, str]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/api/{tail:.*}", self.api)
        self.app.router.add_get("/watch", self.watch)

    async def api(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((request.method, request.path_qs, body,
                              request.headers.get("Authorization", "")))
        return web.json_response({"path": request.path_qs, "body": body.decode()})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for n in range(1_000):
            await response.write(json.dumps({"type": "ADDED", "n": n}).encode() + b"\n")
            await asyncio.sleep(0.05)
        return response


Scenario = Callable[[faultproxy.FaultProxy, aiohttp.ClientSession, str, Upstream],
                    Awaitable[None]]


def run(scenario: Scenario, faults: Faults = Faults()) -> None:
    async def main() -> None:
        upstream = Upstream()
        runner = web.AppRunner(upstream.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = faultproxy.FaultProxy._bound_port(site)  # noqa: SLF001
        proxy = faultproxy.FaultProxy(f"http://127.0.0.1:{port}", faults=faults, seed=3)
        await proxy.start()
        try:
            async with aiohttp.ClientSession() as client:
                await scenario(proxy, client, f"http://127.0.0.1:{proxy.port}", upstream)
        finally:
            await proxy.close()
            await runner.cleanup()
    asyncio.run(main())


def test_requests_go_through_unchanged_with_their_credentials() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        async with client.patch(f"{url}/api/v1/x?fieldManager=a", data=b'{"a": 1}',
                                headers={"Authorization": "Bearer t0ken"}) as answer:
            assert answer.status == 200
            assert await answer.json() == {"path": "/api/v1/x?fieldManager=a",
                                           "body": '{"a": 1}'}
        assert upstream.received == [("PATCH", "/api/v1/x?fieldManager=a", b'{"a": 1}',
                                      "Bearer t0ken")]
        assert proxy.stats()["counts"] == {"requests": 1, "forwarded": 1}
        assert proxy.stats()["injected"] == 0
    run(scenario)


def test_errors_are_answered_as_the_api_server_does_and_never_reach_it() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        codes = collections.Counter()
        for method in ("GET", "POST") * 40:
            async with client.request(method, f"{url}/api/v1/y") as answer:
                status = await answer.json()
                assert status["kind"] == "Status" and status["code"] == answer.status
                assert status["reason"] == faultproxy.REASONS[answer.status]
                if answer.status in (429, 503):
                    assert answer.headers["Retry-After"] == "1"
                codes[(method, answer.status)] += 1
        assert not upstream.received
        assert ("GET", 409) not in codes and ("POST", 409) in codes
        assert proxy.stats()["injected"] == 80
    run(scenario, Faults(errors=1.0))


def test_a_delayed_request_arrives_after_the_client_gave_up() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        with pytest.raises(TimeoutError):
            async with client.post(f"{url}/api/v1/z", data=b"late",
                                   timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
        assert not upstream.received
        await asyncio.sleep(1.2)
        assert [(m, b) for m, _, b, _ in upstream.received] == [("POST", b"late")]
    run(scenario, Faults(delays=1.0, delay_seconds=1.0))


def test_a_watch_is_cut_mid_stream() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        lines = 0
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"{url}/watch?watch=true") as answer:
                assert answer.status == 200
                async for _ in answer.content:
                    lines += 1
        assert 5 <= lines <= 40, lines  # some events, then the cut, long before the end
        assert time.monotonic() - started < 5
        assert proxy.stats()["counts"]["cut"] == 1
    run(scenario, Faults(cuts=1.0, cut_after=(0.5, 1.0)))


def test_an_outage_refuses_connections_breaks_open_ones_and_ends() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        async def watch() -> int:
            lines = 0
            try:
                async with client.get(f"{url}/watch?watch=true") as answer:
                    async for _ in answer.content:
                        lines += 1
            except aiohttp.ClientPayloadError:
                return -lines
            return lines
        watching = asyncio.ensure_future(watch())
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as control:
            control_url = f"http://127.0.0.1:{proxy.control_port}"
            async with control.post(f"{control_url}/outage", json={"seconds": 1.5}) as answer:
                assert answer.status == 200
            async with control.post(f"{control_url}/outage", json={"seconds": 1}) as answer:
                assert answer.status == 409  # one at a time
            assert await watching < 0  # the open watch was broken
            async with aiohttp.ClientSession() as fresh:  # no pooled connection
                with pytest.raises(aiohttp.ClientConnectorError):
                    async with fresh.get(f"{url}/api/v1/during"):
                        pass
            await asyncio.sleep(1.6)
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(f"{url}/api/v1/after") as answer:
                    assert answer.status == 200
            async with control.get(f"{control_url}/stats") as answer:
                stats = await answer.json()
        assert stats["outages"] == 1 and not stats["inOutage"]
        assert [p for _, p, _, _ in upstream.received] == ["/api/v1/after"]
    run(scenario)


def test_faults_are_changed_mid_run_and_bad_ones_refused() -> None:
    async def scenario(proxy: faultproxy.FaultProxy, client: aiohttp.ClientSession, url: str,
                       upstream: Upstream) -> None:
        control_url = f"http://127.0.0.1:{proxy.control_port}"
        async with client.put(f"{control_url}/faults", json={"errors": 2}) as answer:
            assert answer.status == 400
            assert "errors: a share between 0 and 1" in (await answer.json())["error"]
        async with client.put(f"{control_url}/faults", json={"errors": 1.0,
                                                             "statuses": [503]}) as answer:
            assert answer.status == 200
        async with client.get(f"{url}/api/v1/a") as answer:
            assert answer.status == 503
        async with client.put(f"{control_url}/faults", json={}) as answer:
            assert answer.status == 200
        async with client.get(f"{url}/api/v1/b") as answer:
            assert answer.status == 200
    run(scenario)
