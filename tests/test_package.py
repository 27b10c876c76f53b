"""One importable name: `initlens`, and no top-level `models`/`probes`/`analyses`."""

import subprocess
import sys

import pytest


@pytest.mark.integration
def test_one_public_name(tmp_path):
    """From a folder with its own `models/` (as most ML projects have), both import right."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("MINE = True\n")
    code = (
        "import importlib.util, initlens.models, initlens.probes, initlens.analyses, models;"
        "assert models.MINE;"
        "assert initlens.models.__name__ == 'initlens.models';"
        "print(importlib.util.find_spec('probes'), importlib.util.find_spec('analyses'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["None", "None"]
