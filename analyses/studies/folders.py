"""The output folder of a study or a sweep: new, or holding the same work (then it resumes).

Its own module so that `study` (which trains through `sweep`'s units) and `sweep` share it
without importing each other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from initlens.analyses.figures.export import check_folder_path
from initlens.models.checkpoint import read_json
from initlens.models.errors import UserError
from initlens.models.run_writer import LOCK


def check_folder(
    out: Path,
    marker: str,
    spec: dict,
    overwrite: bool,
    normalize: Callable[[dict], dict] = lambda d: d,
) -> None:
    """Refuse to mix work: `out` must be new, empty, or hold the same spec in its `marker`
    file (then it resumes; `normalize` fills in config fields added since it was written);
    `overwrite` empties only a folder with that marker (keeping the lock file of the
    process that holds it)."""
    check_folder_path(out)
    kind, file = Path(marker).stem, out / marker
    content = [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []
    if overwrite and file.exists():
        for path in content:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif overwrite and content:
        raise UserError(
            f"{out} is not a {kind} folder (no {marker}); refusing to overwrite "
            f"it: choose another folder",
            option="out",
        )
    elif file.exists() and normalize(read_json(file, f"{kind} file")) != spec:
        raise UserError(
            f"{out} holds a different {kind}; set overwrite to replace it, "
            f"or choose another folder",
            option="out",
        )
    elif content and not file.exists():
        raise UserError(f"{out} exists and is not empty; choose a new folder", option="out")
