"""Benchmark: what a hostile spec costs the operator, side by side with a floor of the same run.

Run by hand (not in CI):

    .venv/bin/python bench/hostile.py             # offline figures only (seconds)
    .venv/bin/python bench/hostile.py --cluster   # and the stalled-tenant figures (minutes)

Offline, in this process:
1. `slipway validate`'s check of a spec whose input schema has the catastrophic pattern
   ``^(a|aa)+$`` and a smoke body of 60 a's and a '!' (Python's ``re`` took 8.5 s for 38), next
   to the floor: the same check of the minimal example. Medians of 20 runs.
2. Python's backtracking ``re`` on the same pattern for a few short inputs, to show the curve
   the operator no longer runs.

With ``--cluster`` (starts its own local cluster and an operator, outside it):
3. Verifying → Verified of 5 good releases, alone (the floor), and again while 10 model servers of
   one tenant accept every connection and never answer (verification deadline 15 s): the good
   ones must not wait for the stalled ones. Times from polling status every 0.1 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from slipway.api import jsonschemas, validation
from slipway_dev import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PATTERN = "^(a|aa)+$"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def minimal() -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / "minimal.yaml").read_text()))


def catastrophic() -> dict[str, Any]:
    doc = minimal()
    doc["spec"]["schema"]["input"] = {"type": "object", "required": ["instances"],
                                      "properties": {"instances": {"type": "string",
                                                                   "pattern": PATTERN}}}
    doc["spec"]["smokeTests"][0]["body"] = {"instances": "a" * 60 + "!"}
    return doc


def median_ms(doc: dict[str, Any], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        fresh = copy.deepcopy(doc)
        jsonschemas.clear_caches()  # each run compiles its schemas anew, as a cold validate does
        started = time.perf_counter()
        try:
            validation.parse_document(fresh)
        except validation.SpecError:
            pass
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def offline() -> None:
    floor = median_ms(minimal())
    hostile = median_ms(catastrophic())
    print("Validating a spec (slipway validate / the operator, once per generation), "
          "median of 20:")
    print(f"  floor: examples/minimal.yaml                         {floor:7.1f} ms")
    print(f"  {PATTERN} with 60 a's and '!' (refused: no match)  {hostile:7.1f} ms")
    print(f"Python's backtracking re on {PATTERN} (what is no longer run):")
    for count in (22, 25, 28):
        started = time.perf_counter()
        re.search(PATTERN, "a" * count + "!")
        print(f"  {count} a's and '!': {(time.perf_counter() - started) * 1000:9.1f} ms")


# --------------------------------------------------------------------------------------------
# The cluster part


def good(name: str) -> dict[str, Any]:
    doc = dict(yaml.safe_load((EXAMPLES / "reference.yaml").read_text()))
    doc["metadata"]["name"] = name
    doc["spec"]["replicas"] = 1
    return doc


def stalling(name: str) -> dict[str, Any]:
    doc = good(name)
    doc["spec"]["runtime"]["image"] = "registry.example.com/slipway/hostile-server:stall"
    doc["spec"]["rollout"].update(smokeTestTimeoutSeconds=600, smokeTestAttempts=10,
                                  verificationDeadlineSeconds=15)
    return doc


def apply(kubectl: list[str], doc: dict[str, Any], namespace: str) -> None:
    subprocess.run([*kubectl, "apply", "-n", namespace, "-f", "-"], input=json.dumps(doc),
                   text=True, check=True, capture_output=True)


def phases(kubectl: list[str]) -> dict[tuple[str, str], str]:
    out = subprocess.run([*kubectl, "get", "md", "-A", "-o", "json"], capture_output=True,
                         text=True, check=True).stdout
    return {(md["metadata"]["namespace"], md["metadata"]["name"]):
            (md.get("status") or {}).get("phase", "") for md in json.loads(out)["items"]}


def verify_times(kubectl: list[str], keys: list[tuple[str, str]], timeout: float = 300
                 ) -> list[float]:
    """Seconds from Verifying first seen to Ready first seen, per key."""
    verifying: dict[tuple[str, str], float] = {}
    ready: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + timeout
    while len(ready) < len(keys) and time.monotonic() < deadline:
        now = time.monotonic()
        for key, phase in phases(kubectl).items():
            if key not in keys:
                continue
            if phase == "Verifying":
                verifying.setdefault(key, now)
            if phase == "Ready" and key not in ready:
                ready[key] = now
                verifying.setdefault(key, now)
        time.sleep(0.1)
    if len(ready) < len(keys):
        raise SystemExit(f"timed out: {sorted(set(keys) - set(ready))} not Ready")
    return [ready[key] - verifying[key] for key in keys]


def with_cluster() -> None:
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    state = cluster.up(state_dir)
    operator = None
    try:
        kubectl = [state.binaries["kubectl"], "--kubeconfig", state.kubeconfig]
        cluster.install_crd(state)
        for namespace in ("floor", "tenant", "others"):
            subprocess.run([*kubectl, "create", "namespace", namespace], check=True,
                           capture_output=True)
        operator = cluster.run_operator(state, state_dir / "operator.log")
        time.sleep(3)
        say("floor: 5 good releases alone")
        floor_keys = [("floor", f"good-{i}") for i in range(5)]
        for namespace, name in floor_keys:
            apply(kubectl, good(name), namespace)
        floor = verify_times(kubectl, floor_keys)
        say("10 stalling servers in one tenant, then 5 good releases elsewhere")
        for index in range(10):
            apply(kubectl, stalling(f"stall-{index}"), "tenant")
        time.sleep(8)  # the stalled ones are rolled out and being verified
        keys = [("others", f"good-{i}") for i in range(5)]
        for namespace, name in keys:
            apply(kubectl, good(name), namespace)
        loaded = verify_times(kubectl, keys)
        print("Verifying → Ready of a good release (smoke tests through the API server):")
        print(f"  floor (alone):                     median {statistics.median(floor):5.1f} s, "
              f"max {max(floor):5.1f} s")
        print(f"  while 10 servers of a tenant stall: median {statistics.median(loaded):5.1f} s,"
              f" max {max(loaded):5.1f} s")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        cluster.down(state_dir, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", action="store_true",
                        help="also run the stalled-tenant figures on a local cluster")
    args = parser.parse_args()
    offline()
    if args.cluster:
        with_cluster()


if __name__ == "__main__":
    main()
