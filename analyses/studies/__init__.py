"""Studies: runs and instruments composed (preference, localization, sweeps, reports)."""
