"""Pure decisions: rendering, the release lifecycle, rollout status and conditions. No I/O."""
