"""The notebooks: each .ipynb matches its jupytext .py source, and each runs top to bottom
(SMALL setting) in a fresh kernel of this venv, headlessly, and computes what it says.

Run just these: `.venv/bin/python -m pytest tests/test_notebooks.py` (about 2-3 minutes on
2 CPU cores; `-m "not slow"` keeps only the fast sync checks). Regenerate the .ipynb
files after editing a .py with `make notebooks`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = (
    "01_quick_start",
    "02_localizing_with_patching",
    "03_probes_and_geometry",
    "04_published_figures_cpu",
    "05_phase_diagram",
    "06_layernorm_grokking",
    "07_rule_extrapolation",
    "08_mechanism_and_circuit",
)
CELL_TIMEOUT = 180  # seconds per cell; the SMALL setting needs a few
PLOTLY = "application/vnd.plotly.v1+json"


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_every_notebook_is_tested():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    assert found == sorted(NAMES), "add the new notebook to NAMES in tests/test_notebooks.py"
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES), (
        "every notebook needs its generated .ipynb (and nothing else): run `make notebooks`"
    )


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_matches_py(name):
    """Same cells as the .py (types, sources, tags); saved without outputs."""
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    paired = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert _cells(paired) == _cells(source), (
        f"notebooks/{name}.ipynb is out of date with its .py: run `make notebooks`"
    )
    code = [c for c in paired.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"notebooks/{name}.ipynb holds outputs; regenerate it with `make notebooks`"
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_layout(name):
    """A markdown cell saying what it shows, then one parameters cell: SMALL = True."""
    cells = jupytext.read(NOTEBOOKS / f"{name}.py").cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    params = [c for c in cells if "parameters" in c.metadata.get("tags", ())]
    assert len(params) == 1 and params[0] is cells[1]
    assert re.fullmatch(r"SMALL = True  # False: .+", params[0].source.strip()), (
        "the parameters cell holds the one switch, committed as SMALL = True"
    )


# ------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel name that starts this venv's python.

    ipykernel (a dev dependency) provides the "python3" kernelspec of the environment it is
    installed in: its argv starts with "python", which jupyter_client replaces by
    sys.executable. If a user- or system-level "python3" spec points at another python,
    register one for this venv in a temporary JUPYTER_PATH (searched first) instead."""
    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        argv0 = None
    ours = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    if argv0 in ours or (argv0 and os.path.abspath(argv0) == os.path.abspath(sys.executable)):
        yield "python3"
        return
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "initlens-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "initlens (test)",
                "language": "python",
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "JUPYTER_PATH",
            os.pathsep.join([str(folder), *filter(None, [os.environ.get("JUPYTER_PATH")])]),
        )
        yield "initlens-test"


def _environment_check() -> str:
    """First cell: the kernel is this venv's python and imports this checkout's packages."""
    return (
        f"import sys\nfrom initlens import analyses, models, probes\n"
        f"assert sys.prefix == {sys.prefix!r}, sys.prefix\n"
        f"for _m in (models, probes, analyses):\n"
        f"    assert _m.__file__.startswith({str(ROOT) + os.sep!r}), _m.__file__\n"
    )


def execute(name: str, kernel: str, workdir: Path) -> tuple[dict, object]:
    """Run the notebook's .ipynb in `workdir` (any error fails); its RESULT and the notebook."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.insert(0, new_code_cell(_environment_check()))
    nb.cells.append(new_code_cell("import json\nprint(json.dumps(RESULT, default=str))"))
    NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    ).execute()
    printed = "".join(
        o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream"
    )
    return json.loads(printed), nb


def _close(a: float, b: float, tol: float = 1e-4) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def check_quick_start(r: dict) -> None:
    assert r["gammas"] == [0.3, 0.8] and r["steps"] == [100, 100]
    for gamma in ("0.3", "0.8"):
        acc = r["final_acc"][gamma]
        assert set(acc) == {"final_acc_memory", "final_acc_reasoning", "final_acc_reasoning_test"}
        assert all(0 <= v <= 1 for v in acc.values())


def check_localizing(r: dict) -> None:
    # Layer-0 residual patches: the key position replaces the whole difference between the
    # prompts (restores the clean value), the others change nothing.
    assert abs(r["clean"] - r["corrupted"]) > 0.1
    assert _close(r["layer0_key_restores"], r["clean"])
    assert r["layer0_other_max_change"] < 1e-4
    assert r["gammas"] == [0.3, 0.8] and r["experiments"] == ["memory", "reasoning"]
    for stages in r["stages"].values():
        assert stages[0].startswith("init") and stages[-1].endswith("end")
    text = " ".join(r["summary"])
    assert "Gamma = 0.3" in text and "Gamma = 0.8" in text


def check_probes(r: dict) -> None:
    assert all(steps[0] == 0 and steps[-1] == 100 for steps in r["steps"].values())
    assert r["key_layer0_min_accuracy"] > 0.95  # the key's own embedding names the key
    assert r["weight_change_at_init"] == 0
    assert all(v > 0 for v in r["weight_change_at_end"].values())
    assert len(r["best_selectivity_end"]) == 2 * 2  # gammas x targets (SMALL: key, memorized)
    assert _close(r["cka_self"], 1.0, 1e-6)


def check_figures(r: dict) -> None:
    assert r["gammas"] == [0.3, 0.8] and r["preference_csv_rows"] == 2
    assert r["report_bytes"] > 10_000
    assert {
        "accuracy",
        "loss_gap",
        "steps_to_90",
        "cosine_gamma_0.3",
        "cosine_gamma_0.8",
        "pca_gamma_0.8",
    } <= set(r["figures"])
    assert r["files"] == len(r["figures"]) + 1  # an HTML file per figure, one plotly.min.js


def check_phase_diagram(r: dict) -> None:
    assert r["runs"] == r["done"] == 8
    assert r["grid"] == {"gamma": [0.3, 0.8], "n_layers": [1, 2], "seed": [0, 1]}
    assert r["panels"] == ["seed 0", "seed 1", "mean over 2 seeds"]
    assert r["held_out_by_gamma"].keys() == r["table_mean"].keys() == {"0.3", "0.8"}
    for g, v in r["held_out_by_gamma"].items():
        assert _close(v, r["table_mean"][g])
    assert r["files"] == 2


def check_layernorm_grokking(r: dict) -> None:
    placements = ["LN", "post", "none", "attn", "mlp", "qk", "v"]
    assert r["placements"] == placements and r["done"] == 7
    assert r["traces"] == 2 * 7  # test and train accuracy per placement
    labels = {f"normalization={p}" for p in placements}
    assert set(r["entropy_end"]) == set(r["components_90_end"]) == labels
    assert all(0 <= v <= math.log(3) + 1e-6 for v in r["entropy_end"].values())
    assert all(1 <= v <= 32 for v in r["components_90_end"].values())  # d_model 32 (SMALL)
    assert all(0 <= v <= 1 for v in r["final_test"].values())
    assert r["files"] == 4


def check_rule_extrapolation(r: dict) -> None:
    assert r["runs"] == r["done"] == 4
    cells = {"anbn 0.3", "anbn 0.8", "dyck 0.3", "dyck 0.8"}
    assert r["by_language_gamma"].keys() == r["table_mean"].keys() == cells
    for cell, v in r["by_language_gamma"].items():  # the diagram shows the table
        assert _close(v, r["table_mean"][cell]) and 0 <= v <= 1
    assert all(0 <= v <= 1 for v in r["id_accuracy"].values())
    assert r["files"] == 3


def _path_count(n_layers: int, n_heads: int, attn_only: bool) -> int:
    """Sender -> receiver pairs in which the receiver reads the sender's write: a layer's
    head inputs (q, k, v) read the embeddings and every earlier layer's heads and MLP; its
    MLP also reads that layer's heads; the logits read everything."""
    per_layer = n_heads + (0 if attn_only else 1)  # writes of one layer
    total = 0
    for layer in range(n_layers):
        before = 1 + layer * per_layer
        total += 3 * n_heads * before
        if not attn_only:
            total += before + n_heads
    return total + 1 + n_layers * per_layer


def check_mechanism_and_circuit(r: dict) -> None:
    from initlens.analyses.instruments.mechanism import CLAIMS

    m = r["model"]
    n_paths = _path_count(m["n_layers"], m["n_heads"], m["attn_only"])
    assert r["senders"][0] == "embed" and r["receivers"][-1] == "logits"
    assert r["n_paths"] == r["agreement_n"] == n_paths
    assert r["n_paths_study"] == [n_paths]  # every experiment at every checkpoint
    assert r["nan_pattern_equal"]
    # The key alone differs: the embeddings differ nowhere else, so patching them there
    # restores nothing, exactly (path patching and its attribution estimate alike).
    assert r["unchanged_positions"] == ["a1", "a2"]
    assert r["embed_unchanged_max_error"] < 1e-5
    assert r["embed_unchanged_max_error_attribution"] < 1e-5
    assert abs(r["clean"] - r["corrupted"]) > 0.1
    # The circuit study's path patch of the same pairs at the same checkpoint.
    assert r["hand_vs_study_paths"] == [n_paths, n_paths]
    assert r["hand_vs_study_max_error"] < 1e-4
    assert r["experiments"] == ["memory", "reasoning"] and len(r["edge_sentences"]) == 4
    # One verdict per claim and init scale, then small against large init; each re-derived
    # from the claim's thresholds and the last-step numbers (one run per gamma).
    claims = {c.key: c for c in CLAIMS}
    rows = r["verdicts"]
    said = list(dict.fromkeys(v["claim"] for v in rows))
    assert set(said) <= set(claims) and {"ordered", "memory_together"} <= set(said)
    assert len(r["claims_said"]) == len(said)
    for claim in said:
        got = {v["gamma"]: v["verdict"] for v in rows if v["claim"] == claim}
        assert list(got) == ["0.3", "0.8", "0.8 vs 0.3"]
        conditions = claims[claim].conditions
        for g in ("0.3", "0.8"):
            values = [r["last_values"][g].get(c.metric, math.nan) for c in conditions]
            holds = all(c.holds(v) for c, v in zip(conditions, values))
            expected = (
                "not measured"
                if any(math.isnan(v) for v in values)
                else ("holds" if holds else "does not hold")
            )
            assert got[g] == expected, (claim, g, got[g])
        first = conditions[0]
        a, b = (r["last_values"][g].get(first.metric, math.nan) for g in ("0.8", "0.3"))
        smaller = a < b if first.at_most else a > b
        expected = (
            "not measured"
            if math.isnan(a) or math.isnan(b)
            else ("holds" if smaller else "does not hold")
        )
        assert got["0.8 vs 0.3"] == expected, claim


CHECKS = {
    "01_quick_start": check_quick_start,
    "02_localizing_with_patching": check_localizing,
    "03_probes_and_geometry": check_probes,
    "04_published_figures_cpu": check_figures,
    "05_phase_diagram": check_phase_diagram,
    "06_layernorm_grokking": check_layernorm_grokking,
    "07_rule_extrapolation": check_rule_extrapolation,
    "08_mechanism_and_circuit": check_mechanism_and_circuit,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.integration
def test_notebook_runs(name, kernel, tmp_path, monkeypatch):
    # One torch thread in the kernel: these models are tiny, and on a busy 2-core machine
    # two spinning OpenMP threads per process slow training down many times over.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    result, nb = execute(name, kernel, tmp_path)
    CHECKS[name](result)
    figures = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if PLOTLY in o.get("data", {})
    ]
    assert figures, "the notebook shows no plotly figure"
    assert (tmp_path / "notebook_out").is_dir()  # outputs go under the working directory
