"""The `probe` CLI: bad input gives one clear line and exit code 2; a tiny study reports."""

import json
import re
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
    lines = out.splitlines()
    # A table: a key column of 13 characters, then the value; no Python dicts or tuples.
    assert lines[1] == "status       state done, step 30"
    assert "keys=21,30" in out and "held_out=11,13;13,11" in out and "d_head=none" in out
    assert "{" not in out and "(21, 30)" not in out
    assert all(len(line) <= 100 for line in lines)
    assert all(re.match(r"[a-z]{1,12} +\S|^ {13}\S", line) for line in lines), out
    keys = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert keys == [
        "run", "status", "task", "model", "train", "checkpoints", "loaded", "init", "final"
    ]  # fmt: skip
    assert "loaded       step 30: " in out
    code, out, _ = run_cli(capsys, "info", tiny_run.path, "--json")
    info = json.loads(out)
    assert info["status"]["state"] == "done" and info["checkpoints"][0] == 0
    assert info["loaded_step"] == 30 and info["config"]["task"]["keys"] == [21, 30]
    code, out, _ = run_cli(capsys, "info", tiny_run.path, "--step", "last")
    assert code == 0 and "loaded       step 30: " in out
    assert_user_error(
        run_cli(capsys, "info", tiny_run.path, "--step", "all"),
        r"^error: --step: 'all' is not last or a step number$",
    )


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
    assert len(pref) == 3 and pref[0].startswith("run,gamma,seed,task")
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
        "--pairs",
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
    # One heatmap per position, named without repeating the component; one plotly.js.
    assert sorted(p.name for p in out.glob("*.html")) == [
        f"patch_z_key_pos{p}.html" for p in range(5)
    ]
    assert (out / "plotly.min.js").exists() and len(list(out.iterdir())) == 2 + 5 + 1
    html = (out / "patch_z_key_pos3.html").read_text()
    assert 'src="plotly.min.js"' in html and len(html) < 100_000
    title = re.search(r'"title":\{"text":"(z, position 3[^"]*)"', html).group(1)
    assert title.startswith("z, position 3: key corruption, logit_diff, denoising")
    assert title.count("gamma") == 1 and "tiny, gamma 0.5, step 30, 16 pairs" in title
    assert "attribution vs exact: pearson" in stdout


def test_patch_figure_names_and_titles(capsys, tmp_path, tiny_run):
    """A residual component is one figure, PATCH_<component>_<corruption>; a run named
    after its gamma (a study's) does not get the gamma twice in the subtitle."""
    run = tmp_path / "gamma_0.5"
    shutil.copytree(tiny_run.path, run)
    out = tmp_path / "patch"
    code, _, err = run_cli(
        capsys, "patch", run, "--pairs", 8, "--out", out, "--step", "10", "--format", "html"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "patch_resid_pre_key.csv",
        "patch_resid_pre_key.html",
        "patch_resid_pre_key.parquet",
        "plotly.min.js",
    ]
    html = (out / "patch_resid_pre_key.html").read_text()
    title = re.search(r'"title":\{"text":"(resid_pre[^"]*)"', html).group(1)
    assert "gamma_0.5, step 10, 8 pairs" in title and "gamma 0.5" not in title
    from initlens.analyses.commands import run_label

    assert run_label("gamma_0.8", 0.8) == "gamma_0.8"
    assert run_label("seed1", 0.3) == "seed1, gamma 0.3"


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--component", "resid"], "unknown component 'resid'.*resid_pre"),
        (["--corruption", "swap"], "swap.*key.*anchor"),
        (["--step", "7"], "no checkpoint at step 7; available: 0"),
        (["--step", "all"], "--step: 'all' is not last or a step number"),
        (["--step", "10,30"], "--step: '10,30' is not last or a step number"),
        (["--metric", "kl"], "unknown metric 'kl'.*logit_diff"),
        (["--pairs", "0"], "--pairs: pairs=0: ask for 1 to"),
        (["--n", "0"], "--pairs: pairs=0: ask for 1 to"),  # the old name of --pairs
        (["--pairs", "4", "--n", "4"], "--n is the old name of --pairs: give one"),
        (["--format", "png,gif"], "--format: unknown figure format 'gif'"),
    ],
)
def test_patch_bad_input(capsys, tmp_path, tiny_run, args, pattern):
    pairs = [] if "--n" in args else ["--pairs", 8]
    assert_user_error(
        run_cli(capsys, "patch", tiny_run.path, *pairs, "--out", tmp_path / "p", *args), pattern
    )
    assert not (tmp_path / "p").exists()


def test_step_and_steps_parsing():
    from initlens.analyses.cli import _step, _steps
    from initlens.models import UserError

    assert _step("last") == "last" and _step("30") == 30 and _step(" 7 ") == 7
    assert _steps("all") == "all" and _steps("last") == "last" and _steps("stages") == "stages"
    assert _steps("30") == [30] and _steps("0, 10,30,10") == [0, 10, 30]
    for bad in ("all", "-1", "3.5", "10,20", ""):
        with pytest.raises(UserError, match="is not last or a step number"):
            _step(bad)
    for bad in ("", ",", "1,x", "every", "-5", "last,10"):
        with pytest.raises(UserError, match="is not all, stages, last or step numbers"):
            _steps(bad)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["geometry", "--steps", "1,x"], "--steps: '1,x' is not all, stages, last or step numbers"),
        (["geometry", "--step", "abc"], "--steps: 'abc' is not all, stages, last"),  # old name
        (["geometry", "--steps", "0,7"], "no checkpoint at step 7; available: 0"),
        (["geometry", "--rows", "0"], "--rows: rows=0: must be an integer >= 1"),
        (["geometry", "--n", "-1"], "--rows: rows=-1: must be an integer >= 1"),
        (["geometry", "--rows", "5", "--n", "5"], "--n is the old name of --rows: give one"),
        (["linear", "--inverse-l2", "0"], "--inverse-l2: inverse_l2=0.0: must be a finite"),
        (["linear", "--C", "nan"], "--inverse-l2: inverse_l2=nan: must be a finite"),
        (["linear", "--C", "1", "--inverse-l2", "2"], "--C is the old name of --inverse-l2"),
        (["linear", "--rows", "0"], "--rows: rows=0: must be an integer >= 1"),
        (["linear", "--steps", "last,all"], "--steps: 'last,all' is not all, stages, last"),
    ],
)
def test_checkpoint_commands_bad_input(capsys, tmp_path, tiny_run, args, pattern):
    command, *rest = args
    out = tmp_path / "o"
    assert_user_error(run_cli(capsys, command, tiny_run.path, "--out", out, *rest), pattern)
    assert not out.exists()


def test_linear_steps_and_old_option_names(capsys, tmp_path, tiny_run):
    common = ["--target", "key", "--component", "resid_post", "--format", "png"]
    code, _, err = run_cli(
        capsys, "linear", tiny_run.path, "--out", tmp_path / "a", "--steps", "0,30",
        "--rows", 200, "--inverse-l2", 0.5, *common,
    )  # fmt: skip
    assert code == 0, err
    import pandas as pd

    table = pd.read_parquet(tmp_path / "a" / "probes.parquet")
    assert set(table.step) == {0, 30}
    # The old spellings still work: --step (one checkpoint), --n, --C.
    code, _, err = run_cli(
        capsys, "linear", tiny_run.path, "--out", tmp_path / "b", "--step", "10",
        "--n", 200, "--C", 0.5, *common,
    )  # fmt: skip
    assert code == 0, err
    assert set(pd.read_parquet(tmp_path / "b" / "probes.parquet").step) == {10}
    # --format png: no HTML figures (PNG, or HTML instead with a note where no Chromium)
    names = [p.name for p in (tmp_path / "b").iterdir()]
    assert not [n for n in names if n.endswith(".html")] or "note: wrote HTML instead" in err


def test_help_shows_the_current_names(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("TERMINAL_WIDTH", "250")
    from initlens.analyses.cli import PROBE_TARGETS
    from initlens.probes.linear import TARGETS

    assert PROBE_TARGETS == TARGETS  # the help's list is the probes' list
    help_of = {}
    for command in ("patch", "linear", "geometry", "study", "report", "info"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0
        help_of[command] = out
    for command, flags in {
        "patch": ["--pairs", "--step"],
        "linear": ["--rows", "--steps", "--inverse-l2"],
        "geometry": ["--rows", "--steps"],
        "info": ["--step", "--json"],
    }.items():
        for flag in flags:
            assert re.search(rf"{flag}\b", help_of[command]), (command, flag)
        assert not re.search(r"--n\b|--C\b", help_of[command]), command  # old names: hidden
    assert not re.search(r"--step\b", help_of["linear"] + help_of["geometry"])
    for command in ("study", "report"):
        text = " ".join(re.sub("[│╭╮╰╯─]", " ", help_of[command]).split())
        assert all(t in text for t in TARGETS), command  # --probe-targets lists every one
        assert "report.html itself is always written" in text
