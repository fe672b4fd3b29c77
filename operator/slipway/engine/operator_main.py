"""Start the kopf operator with Slipway's handlers (``slipway run``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import threading
import time

import kopf

from slipway.engine import logs
from slipway.logic import leader

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


def malloc_trim_seconds() -> float:
    """SLIPWAY_MALLOC_TRIM_SECONDS (60): how often freed memory goes back to the system; 0
    never. Anything else stops the operator at once, saying why."""
    raw = os.environ.get("SLIPWAY_MALLOC_TRIM_SECONDS", "60").strip()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not (seconds == 0 or 1 <= seconds <= 86400):  # NaN fails both
        raise SystemExit(f"slipway: SLIPWAY_MALLOC_TRIM_SECONDS={raw!r} must be 0 (never) or "
                         "a number of seconds from 1 to 86400")
    return seconds


def trim_malloc() -> bool:
    """Give the pages glibc holds free back to the system (``malloc_trim(0)``): the cache's
    JSON strings and the answers of a burst are larger than Python's small-object allocator
    takes, and once freed they stay in the heap's middle, counted in the RSS that a memory
    limit holds against the pod. False where it is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    function(0)  # ctypes lets go of the GIL for the call
    return True


def start_malloc_trimmer(seconds: float) -> threading.Thread | None:
    """A daemon thread that trims every ``seconds`` (none for 0, or where it is not glibc)."""
    if seconds <= 0 or not trim_malloc():
        return None

    def loop() -> None:
        while True:
            time.sleep(seconds)
            trim_malloc()

    thread = threading.Thread(target=loop, name="slipway-malloc-trim", daemon=True)
    thread.start()
    return thread


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_LEASE_NAMESPACE = "slipway-system"  # where manifests/ install the operator


def lease_namespace(given: str | None) -> str:
    """Where the leader Lease lives: as given, else the operator pod's own namespace
    (POD_NAMESPACE, or its ServiceAccount's), else slipway-system."""
    if given:
        return given
    if os.environ.get("POD_NAMESPACE", "").strip():
        return os.environ["POD_NAMESPACE"].strip()
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            found = handle.read().strip()
    except OSError:
        found = ""
    return found or DEFAULT_LEASE_NAMESPACE


def election_timing() -> leader.Timing:
    """SLIPWAY_LEASE_SECONDS, SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS and
    SLIPWAY_LEASE_RETRY_SECONDS, client-go's 15, 10 and 2 by default; unsafe ones stop the
    operator at once, saying why."""
    from slipway.engine.handlers import env_float  # the handlers' own settings' reader

    lease = env_float("SLIPWAY_LEASE_SECONDS", 15)
    if lease != int(lease):
        raise SystemExit("slipway: SLIPWAY_LEASE_SECONDS must be whole seconds")
    timing = leader.Timing(lease_seconds=int(lease),
                           renew_deadline=env_float("SLIPWAY_LEASE_RENEW_DEADLINE_SECONDS", 10),
                           retry_period=env_float("SLIPWAY_LEASE_RETRY_SECONDS", 2))
    problems = timing.problems()
    if problems:
        raise SystemExit("slipway: unsafe leader election timing: " + "; ".join(problems))
    return timing


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_lease_names(namespace: str, name: str) -> None:
    """Names the API server would refuse, refused at start instead of on every retry."""
    if len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace):
        raise SystemExit(f"slipway: lease namespace {namespace!r} is not a valid namespace name "
                         "(lowercase letters, digits and '-', at most 63)")
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise SystemExit(f"slipway: lease name {name!r} is not a valid object name (lowercase "
                         "letters, digits, '-' and '.', at most 253)")


def run(*, namespaces: list[str], liveness: str, standalone: bool, verbose: bool,
        metrics_port: int = 0, leader_elect: bool = True, lease_ns: str | None = None,
        lease_name: str = "slipway-operator", identity: str | None = None,
        log_format: str = "text") -> int:
    logs.check(log_format)
    from slipway.engine import controller

    problem = controller.fetcher_image_problem()
    if problem:
        raise SystemExit(f"slipway: {problem}")
    timing = election_timing() if leader_elect else None
    if timing is not None:
        check_lease_names(lease_namespace(lease_ns), lease_name)
    trim_every = malloc_trim_seconds()
    limit_malloc_arenas()
    start_malloc_trimmer(trim_every)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logs.use(log_format)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # One line per smoke request and per handled child event would drown what matters: our own
    # Events are logged by the "slipway" logger.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from slipway.engine import handlers  # noqa: F401  (registers the handlers)
    from slipway.engine import metrics

    if timing is not None:
        from slipway.engine import leader as elector

        handlers.elect(elector.Elector(
            namespace=lease_namespace(lease_ns), name=lease_name,
            identity=identity or elector.default_identity(), timing=timing,
            on_started=handlers.take_over))
    if metrics_port:
        metrics.serve(metrics_port)

    kopf.run(
        standalone=standalone,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
