"""CLI command bodies: parse-free functions behind `probe patch`, `geometry`, `linear`, `report`."""
