"""Start the kopf operator with Slipway's handlers (``slipway run``)."""

from __future__ import annotations

import logging

import kopf


def run(*, namespaces: list[str], liveness: str, standalone: bool, verbose: bool,
        metrics_port: int = 0) -> int:
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
