"""Install the third-party evaluators the test suite runs for real, and say where they are.

Slipway claims that tools it does not own read its objects correctly: Argo CD's Lua health
check, Flux's kstatus. The tests prove it with those tools, not with imitations:

* ``lua5.4``: Debian's Lua 5.4 runs ``health.lua`` with Argo CD's library set;
* ``promtool`` and ``prometheus`` (Debian's ``prometheus``): the alert rules are unit-tested by
  promtool, and a real Prometheus scrapes the operator in a cluster test;
* ``kstatus``: a small Go program on ``sigs.k8s.io/cli-utils`` (``tests/tools/kstatus``),
  built once from the Go module proxy and cached like the control-plane binaries;
* ``helm``: ``helm.sh/helm/v4``, built and cached the same way: the chart in ``charts/slipway``
  is linted, rendered and installed with it;
* ``mlserver``: Seldon's MLServer with its scikit-learn runtime, from PyPI, in a virtualenv of
  its own under the cache (keyed by the pinned versions): the local cluster runs it as the
  image ``docker.io/seldonio/mlserver:1.7.1-sklearn`` (``examples/images.yaml``).

Debian packages are installed with ``apt-get`` when missing (CI runs as root); anything else
says what to run. ``make test`` and ``make unit`` run this first::

    python -m slipway_dev.tools
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Sequence

from slipway_dev import binaries

# Command → the Debian package that ships it.
DEBIAN_COMMANDS: dict[str, str] = {"lua5.4": "lua5.4", "promtool": "prometheus",
                                   "prometheus": "prometheus"}
_PREFIX = "[tools]"


class ToolsError(RuntimeError):
    """A tool the tests need could not be installed."""


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(f"{_PREFIX} {message}", file=sys.stderr, flush=True)


def ensure_debian(commands: Sequence[str], *, verbose: bool = True) -> dict[str, str]:
    """Paths of ``commands``, installing their Debian packages when one is missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        packages = sorted({DEBIAN_COMMANDS[c] for c in missing})
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ToolsError(f"{', '.join(missing)} not found; install the Debian package(s) "
                             f"{' '.join(packages)} (apt-get install {' '.join(packages)})")
        start = time.monotonic()
        _log(verbose, f"installing {' '.join(packages)} with apt-get (for {', '.join(missing)})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
            done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ToolsError(f"{' '.join(args)} failed (exit {done.returncode}):\n"
                                 f"{(done.stdout + done.stderr)[-2000:]}")
        _log(verbose, f"installed {' '.join(packages)} in {time.monotonic() - start:.1f}s")
    paths = {c: shutil.which(c) for c in commands}
    absent = [c for c, path in paths.items() if path is None]
    if absent:
        raise ToolsError(f"{', '.join(absent)} still not found after installing")
    return {c: str(path) for c, path in paths.items()}


# MLServer 1.7.1 as its own image pins it. Newer uvloop (0.22+) breaks its inference workers
# ("There is no current event loop"), and scikit-learn, numpy and pandas are those of its day.
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "scikit-learn==1.6.1",
                 "numpy==2.2.6", "pandas==2.2.3", "uvloop==0.21.0", "joblib==1.4.2")


def mlserver_home() -> pathlib.Path:
    """The virtualenv MLServer runs from: one per pin set and Python version."""
    key = hashlib.sha256("\n".join(MLSERVER_PINS).encode()).hexdigest()[:8]
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return binaries.cache_root() / f"mlserver-1.7.1-{python}-{key}"


def ensure_mlserver(*, verbose: bool = True) -> pathlib.Path:
    """The ``bin`` folder of MLServer's virtualenv, installed from PyPI when missing."""
    home = mlserver_home()
    stamp = home / ".installed"
    if stamp.exists():
        return home / "bin"
    start = time.monotonic()
    _log(verbose, f"installing MLServer into {home} (once; about a minute cold): "
         f"{' '.join(MLSERVER_PINS)}")
    shutil.rmtree(home, ignore_errors=True)
    for args in ([sys.executable, "-m", "venv", str(home)],
                 [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--progress-bar", "off", "--disable-pip-version-check", *MLSERVER_PINS]):
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ToolsError(f"{' '.join(args[:4])}… failed (exit {done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-2000:]}")
    stamp.write_text("\n".join(MLSERVER_PINS) + "\n")
    _log(verbose, f"installed MLServer in {time.monotonic() - start:.1f}s")
    return home / "bin"


def ensure_tools(*, verbose: bool = True) -> dict[str, str]:
    found = ensure_debian(sorted(DEBIAN_COMMANDS), verbose=verbose)
    found["kstatus"] = str(binaries.ensure_kstatus(verbose=verbose))
    found["helm"] = str(binaries.ensure_helm(verbose=verbose))
    found["mlserver"] = str(ensure_mlserver(verbose=verbose) / "mlserver")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slipway_dev.tools",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        found = ensure_tools(verbose=not args.quiet)
    except (ToolsError, binaries.BinariesError) as error:
        print(f"{_PREFIX} ERROR: {error}", file=sys.stderr)
        return 1
    for name, path in found.items():
        print(f"{name}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
