"""Studies that combine runs and probes, their figures, reports and the `probe` CLI."""
