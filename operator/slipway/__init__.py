"""Slipway: a Kubernetes operator that turns a validated model bundle into a guarded service."""

__version__ = "0.1.0"
