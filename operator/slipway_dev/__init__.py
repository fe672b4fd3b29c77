"""Developer tooling for Slipway (test binaries, local clusters)."""
