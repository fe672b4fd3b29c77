"""Benchmark: how long `slipway dev-cluster up` takes with the binaries cached (a warm start).

Run by hand (not in CI):  .venv/bin/python bench/cluster_start.py [--runs 5]
Prints each run and the median/min/max, for the README.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from slipway_dev import binaries, cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    start = time.monotonic()
    binaries.ensure_binaries(verbose=True)
    print(f"binaries ready in {time.monotonic() - start:.2f}s (cached → near zero)")
    times: list[float] = []
    for run in range(1, args.runs + 1):
        state_dir = pathlib.Path(tempfile.mkdtemp(prefix="slipway-bench-"))
        began = time.monotonic()
        cluster.up(state_dir, nodes=args.nodes, quiet=True)
        elapsed = time.monotonic() - began
        times.append(elapsed)
        print(f"run {run}/{args.runs}: warm start to nodes Ready and default ServiceAccount: "
              f"{elapsed:.2f}s", flush=True)
        stop = time.monotonic()
        cluster.down(state_dir, quiet=True)
        print(f"           down: {time.monotonic() - stop:.2f}s", flush=True)
    print(f"warm start over {len(times)} runs: median {statistics.median(times):.2f}s, "
          f"min {min(times):.2f}s, max {max(times):.2f}s")


if __name__ == "__main__":
    main()
