"""The `probe` CLI: bad input gives one clear line and exit code 2; a tiny study reports."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SMALL_ANALYSIS, TINY, assert_user_error, run_cli
from initlens.models import Run


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--task", "sorting"], "unknown task 'sorting'.*mixture"),
        (["--gamma", "0"], "gamma=0.0 is invalid.*> 0"),
        (["--gamma", "-0.5"], "gamma=-0.5 is invalid"),
        (["--d-model", "64", "--n-heads", "3"], "not divisible by n_heads=3"),
        (["--d-model", "64", "--n-heads", "2", "--d-head", "0"], "d_head=0 must be >= 1"),
        (["--final-ln", "maybe"], "expected true, false or none"),
        (["--schedule", "step"], "schedule='step' is not one of"),
        (["--normalization", "rms"], "normalization='rms' is not one of"),
        (["--keys", "a,b"], "expected integers"),
        (["--task", "composite", "--memory-anchors", "1,2"], "does not apply to task"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, tmp_path, args, pattern):
    out = tmp_path / "run"
    assert_user_error(run_cli(capsys, "train", "--out", out, *args), pattern)
    assert not out.exists()  # rejected before anything was written


def test_config_file_with_unknown_key(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"gamma": 0.8, "widht": 3}}))
    assert_user_error(
        run_cli(capsys, "train", "--out", tmp_path / "r", "--config", bad),
        "unknown key\\(s\\) widht",
    )
    bad.write_text("{not json")
    assert_user_error(
        run_cli(capsys, "train", "--out", tmp_path / "r", "--config", bad), "not valid JSON"
    )
    assert_user_error(
        run_cli(capsys, "train", "--out", tmp_path / "r", "--config", tmp_path / "nope.json"),
        "does not exist",
    )


def test_config_file_then_options(capsys, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"gamma": 0.8}, "train": {"lr": 0.002}}))
    code, out, err = run_cli(
        capsys, "train", "--out", tmp_path / "r", "--config", cfg, *TINY, "--lr", "0.003"
    )
    assert code == 0, err
    saved = Run.open(tmp_path / "r").config
    assert saved.model.gamma == 0.8 and saved.train.lr == 0.003 and saved.task.keys == (21, 30)


def test_missing_and_half_written_run_directories(capsys, tmp_path, tiny_run):
    assert_user_error(run_cli(capsys, "info", tmp_path / "nowhere"), "does not exist")
    half = tmp_path / "half"
    (half / "checkpoints").mkdir(parents=True)
    assert_user_error(run_cli(capsys, "info", half), "not a run directory")
    (half / "config.json").write_text('{"model": {"gam')  # cut off mid-write
    assert_user_error(run_cli(capsys, "info", half), "config.json is not valid JSON")


def test_corrupt_or_mismatched_checkpoint(capsys, tmp_path, tiny_run):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    last = run_dir / "checkpoints" / "step_0000030.safetensors"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    from initlens.models import UserError

    with pytest.raises(UserError, match="corrupt"):
        Run.open(run_dir).load_model()
    assert_user_error(run_cli(capsys, "info", run_dir), "corrupt")
    assert run_cli(capsys, "info", run_dir, "--step", "0")[0] == 0  # earlier ones still load
    # A checkpoint of a different architecture: named as mismatched, file kept as it was.
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"]["d_model"] = 32
    (run_dir / "config.json").write_text(json.dumps(cfg))
    last.write_bytes(good)
    with pytest.raises(UserError, match="does not match"):
        Run.open(run_dir).load_model()
    assert last.read_bytes() == good


def test_resume_with_corrupt_checkpoint_is_a_clear_error(capsys, tmp_path):
    out = tmp_path / "r"
    from helpers import tiny_config
    from initlens.models import train

    train(tiny_config(), out, stop_at=12, progress=False)
    ckpt = out / "checkpoints" / "step_0000012.safetensors"
    ckpt.write_bytes(b"garbage")
    assert_user_error(run_cli(capsys, "train", "--out", out, "--resume"), "corrupt")
    assert (out / "checkpoints" / "step_0000000.safetensors").exists()


def test_info_prints_config_init_and_final_metrics(capsys, tiny_run):
    code, out, _ = run_cli(capsys, "info", tiny_run.path)
    assert code == 0
    assert "gamma=0.5" in out and "embed.weight" in out and "memory/accuracy" in out
    code, out, _ = run_cli(capsys, "info", tiny_run.path, "--json")
    info = json.loads(out)
    assert info["status"]["state"] == "done" and info["checkpoints"][0] == 0


@pytest.mark.integration
def test_tiny_study_end_to_end(capsys, tmp_path):
    study = tmp_path / "study"
    code, out, err = run_cli(
        capsys, "study", "--out", study, "--gammas", "0.3,0.8", *TINY, *SMALL_ANALYSIS
    )
    assert code == 0, err
    html = (study / "report.html").read_text()
    assert "<script src=" not in html and "Plotly" in html  # plotly.js inlined: offline
    for group in ("memory", "reasoning", "reasoning_test"):  # both task types' curves
        assert f'"name":"{group}"' in html
    assert "gamma = 0.3" in html and "gamma = 0.8" in html
    assert "relative loss gap" in html and "Preference summary" in html
    pref = (study / "preference.csv").read_text().splitlines()
    assert len(pref) == 3 and pref[0].startswith("run,gamma,task")
    # The localization study: every analysis section, for both gammas.
    for heading in (
        "Which components carry each task type?",
        "When do these components form?",
        "Can attribution patching find them?",
        "What do the layers represent?",
        "How are key and anchor tokens embedded?",
        "How do attention and the weights move?",
    ):
        assert heading in html
    import pandas as pd

    loc = pd.read_csv(study / "localization.csv")
    assert set(loc.gamma) == {0.3, 0.8} and set(loc.experiment) == {"reasoning", "memory"}
    assert set(pd.read_csv(study / "probes.csv").gamma) == {0.3, 0.8}
    assert (study / "gamma_0.8" / "analysis" / "analysis.json").exists()
    # Re-running the same study resumes (nothing retrained); a different one is refused.
    before = (study / "gamma_0.3" / "checkpoints" / "step_0000030.safetensors").stat().st_mtime
    assert (
        run_cli(capsys, "study", "--out", study, "--gammas", "0.3,0.8", *TINY, *SMALL_ANALYSIS)[0]
        == 0
    )
    assert (
        study / "gamma_0.3" / "checkpoints" / "step_0000030.safetensors"
    ).stat().st_mtime == before
    assert_user_error(
        run_cli(capsys, "study", "--out", study, "--gammas", "0.5", *TINY), "different study"
    )
    # A missing run is listed in the report, not silently dropped.
    shutil.rmtree(study / "gamma_0.8")
    assert run_cli(capsys, "report", study, *SMALL_ANALYSIS)[0] == 0
    html = (study / "report.html").read_text()
    assert "Missing or failed runs" in html and "gamma_0.8" in html


@pytest.mark.integration
def test_console_script_exit_code_and_no_traceback(tmp_path):
    probe = Path(sys.executable).parent / "probe"
    result = subprocess.run(
        [str(probe), "train", "--out", str(tmp_path / "r"), "--gamma", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: gamma=0.0 is invalid")


def test_patch_writes_tables_and_figures(capsys, tmp_path, tiny_run):
    out = tmp_path / "patch"
    code, stdout, err = run_cli(
        capsys,
        "patch",
        tiny_run.path,
        "--component",
        "z",
        "--corruption",
        "key",
        "--n",
        16,
        "--out",
        out,
        "--attribution",
    )
    assert code == 0, err
    import pandas as pd

    table = pd.read_parquet(out / "patch_z_key.parquet")
    assert set(table.columns) >= {
        "run",
        "step",
        "component",
        "layer",
        "position",
        "head",
        "value",
        "normalized",
        "attribution",
    }
    assert len(table) == 2 * 5 * 2 and table.step.eq(30).all()
    assert pd.read_csv(out / "patch_z_key.csv").shape == table.shape
    html = list(out.glob("patch_z_key_z_pos*.html"))
    assert len(html) == 5 and "<script src=" not in html[0].read_text()
    assert "attribution vs exact: pearson" in stdout


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--component", "resid"], "unknown component 'resid'.*resid_pre"),
        (["--corruption", "swap"], "swap.*key.*anchor"),
        (["--step", "7"], "no checkpoint at step 7; available: 0"),
        (["--metric", "kl"], "unknown metric 'kl'.*logit_diff"),
    ],
)
def test_patch_bad_input(capsys, tmp_path, tiny_run, args, pattern):
    assert_user_error(
        run_cli(capsys, "patch", tiny_run.path, "--n", 8, "--out", tmp_path / "p", *args), pattern
    )
