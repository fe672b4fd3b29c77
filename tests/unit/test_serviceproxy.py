"""The local cluster's service proxy keeps every cluster IP that has a ready endpoint routed,
however its Services and EndpointSlices change in a burst.

Runs the real proxy (its own event loop, real `ip addr` on a real bridge, real sockets) in a
network namespace this test makes, with a TCP echo server as the pod behind each Service.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for a network namespace")

CHILD = textwrap.dedent(r'''
    import asyncio, socket, subprocess, sys, threading, time
    from slipway_dev import serviceproxy

    def run(*argv):
        subprocess.run(argv, check=True)

    run("ip", "link", "set", "lo", "up")
    run("ip", "link", "add", "br0", "type", "bridge")
    run("ip", "addr", "add", "10.244.0.1/24", "dev", "br0")
    run("ip", "link", "set", "br0", "up")
    run("ip", "addr", "add", "10.244.0.5/32", "dev", "br0")  # the pod

    async def echo(reader, writer):
        data = await reader.read(100)
        writer.write(b"pod:" + data)
        await writer.drain()
        writer.close()

    pod_loop = asyncio.new_event_loop()
    pod_loop.run_until_complete(asyncio.start_server(echo, "10.244.0.5", 8080))
    threading.Thread(target=pod_loop.run_forever, daemon=True).start()

    proxy = serviceproxy.ServiceProxy(None, "br0", "10.96.0.0/20", "10.244.0.0/24")
    threading.Thread(target=proxy.loop.run_forever, daemon=True).start()
    N = 12
    for i in range(N):
        proxy._on_service("ADDED", {
            "metadata": {"namespace": "ns", "name": f"svc-{i}"},
            "spec": {"clusterIP": f"10.96.0.{10 + i}", "ports": [{"name": "http", "port": 80}]}})

    def slice_(i, ready):
        return {"metadata": {"namespace": "ns", "name": f"svc-{i}-abc",
                             "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": ready}}]}

    def churn(offset):
        # Readiness flapping, as a pod's endpoint does while it starts; it ends ready.
        for turn in range(30):
            for i in range(offset, N, 2):
                proxy._on_slice("MODIFIED", slice_(i, turn % 2 == 1))

    threads = [threading.Thread(target=churn, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 60
    while not proxy.settled():
        assert time.monotonic() < deadline, "the proxy never settled"
        time.sleep(0.05)
    time.sleep(0.5)
    answers = []
    for i in range(N):
        try:
            with socket.create_connection((f"10.96.0.{10 + i}", 80), timeout=2) as s:
                s.sendall(b"hi")
                answers.append(s.recv(100).decode())
        except OSError as error:
            answers.append(f"{type(error).__name__}: {error}")
    print("\n".join(answers))
''')


def test_every_ready_service_answers_after_a_burst_of_changes() -> None:
    namespace = f"slipway-test-svcproxy-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", CHILD],
            capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = result.stdout.splitlines()
    assert answers == ["pod:hi"] * 12, answers
