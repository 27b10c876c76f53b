"""CLI command bodies: parse-free functions behind `probe patch`, `geometry`, `linear`, `report`."""


def run_label(name: str, gamma: float) -> str:
    """A run's name for a figure title, with its gamma unless the name already says it
    (a study's `gamma_0.8`)."""
    return name if "gamma" in name.lower() else f"{name}, gamma {gamma:g}"
