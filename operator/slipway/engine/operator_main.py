"""Start the kopf operator with Slipway's handlers (``slipway run``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import kopf

M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """Few malloc arenas (SLIPWAY_MALLOC_ARENAS, default 2), before any thread starts: glibc
    gives each thread that allocates an arena of its own (up to 8 per core), and a Python
    process with a dozen threads then keeps freed memory in all of them; its RSS grows with
    the number of threads, not with what it holds. Nothing happens where it is not glibc."""
    raw = os.environ.get("SLIPWAY_MALLOC_ARENAS", "2")
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"slipway: SLIPWAY_MALLOC_ARENAS={raw!r} must be a whole number above 0")
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, int(raw))


def run(*, namespaces: list[str], liveness: str, standalone: bool, verbose: bool,
        metrics_port: int = 0) -> int:
    limit_malloc_arenas()
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # One line per smoke request and per handled child event would drown what matters: our own
    # Events are logged by the "slipway" logger.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from slipway.engine import handlers  # noqa: F401  (registers the handlers)
    from slipway.engine import metrics

    if metrics_port:
        metrics.serve(metrics_port)

    kopf.run(
        standalone=standalone,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
