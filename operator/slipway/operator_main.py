"""Start the kopf operator with Slipway's handlers (``slipway run``)."""

from __future__ import annotations

import logging

import kopf


def run(*, namespaces: list[str], liveness: str, standalone: bool, verbose: bool) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    from slipway import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=standalone,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=liveness or None,
    )
    return 0
