"""Where a run's numbers go: its metrics.csv, W&B (offline or online), and library noise kept out of the way."""
