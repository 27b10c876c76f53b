"""A run directory under stress: kills, resumes, two writers, divergence, damaged files."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import TINY, assert_user_error, run_cli, tiny_config
from initlens.models import Run, train
from initlens.models.errors import UserError
from initlens.models.run_writer import FolderLock, RunWriter

PROBE = str(Path(sys.executable).with_name("probe"))


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def _raw_lines(run: Run) -> list[str]:
    return (run.path / "metrics.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The tiny run stopped at step 17, one of its checkpoint steps."""
    return train(
        tiny_config(), tmp_path_factory.mktemp("stopped") / "run", stop_at=17, progress=False
    )


# --- nothing saved is lost or doubled -----------------------------------------------------


def test_resume_at_a_checkpoint_rewrites_nothing(tmp_path, tiny_run, stopped):
    out = tmp_path / "run"
    shutil.copytree(stopped.path, out)
    before = (out / "metrics.jsonl").read_bytes()
    resumed = train(None, out, resume=True, progress=False)
    after = (out / "metrics.jsonl").read_bytes()
    assert after.startswith(before)  # appended to, never rewritten
    assert after == (tiny_run.path / "metrics.jsonl").read_bytes()
    assert resumed.metrics().drop(columns="run").equals(tiny_run.metrics().drop(columns="run"))


def test_kill_after_evaluations_past_the_checkpoint(tmp_path, tiny_run, stopped):
    """Killed while writing the step-30 checkpoint: the evaluations after step 17 are in
    metrics.jsonl, the last of them cut mid-line, and a temp file is left behind."""
    out = tmp_path / "run"
    shutil.copytree(stopped.path, out)
    full = _raw_lines(tiny_run)
    later = [line for line in full if json.loads(line)["step"] > 17]
    with open(out / "metrics.jsonl", "a") as f:
        f.write("".join(line + "\n" for line in later[:-3]) + later[-3][:20])
    (out / "checkpoints" / ".step_0000030.safetensors.x1.tmp").write_bytes(b"half")
    resumed = train(None, out, resume=True, progress=False)
    assert _raw_lines(resumed) == full  # the uninterrupted run's file, row for row
    assert not list(out.rglob("*.tmp"))
    assert len(resumed.metrics()) == len(tiny_run.metrics())


def test_kill_while_the_first_checkpoint_is_written(tmp_path, tiny_run):
    out = tmp_path / "run"
    train(tiny_config(), out, stop_at=0, progress=False)  # step 0 evaluated and saved
    os.replace(
        out / "checkpoints" / "optimizer.safetensors",
        out / "checkpoints" / ".optimizer.safetensors.k9.tmp",
    )
    resumed = train(None, out, resume=True, progress=False)
    assert resumed.done and not list(out.rglob("*.tmp"))
    assert _raw_lines(resumed) == _raw_lines(tiny_run)
    assert len(resumed.metrics()) == len(tiny_run.metrics())


def test_readers_ignore_a_half_written_last_line(tmp_path, tiny_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run.path, out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "group": "memo')
    assert Run(out).metrics().drop(columns="run").equals(tiny_run.metrics().drop(columns="run"))
    code, _, err = run_cli(capsys, "report", out, "--no-analysis")
    assert code == 0, err


def test_a_damaged_metrics_line_is_one_clear_error(tmp_path, tiny_run):
    out = tmp_path / "run"
    shutil.copytree(tiny_run.path, out)
    lines = _raw_lines(tiny_run)
    lines[5] = "{not json"
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="metrics file .* damaged at line 6"):
        Run(out).metrics()


def test_duplicate_rows_read_once(tmp_path, tiny_run):
    out = tmp_path / "run"
    shutil.copytree(tiny_run.path, out)
    lines = _raw_lines(tiny_run)
    (out / "metrics.jsonl").write_text("\n".join(lines + lines[-7:]) + "\n")
    assert Run(out).metrics().drop(columns="run").equals(tiny_run.metrics().drop(columns="run"))


# --- one writer per run directory ---------------------------------------------------------


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first training never got there")


def _wait_for_lock(path: Path, proc: subprocess.Popen) -> None:
    lock = path / ".lock"
    _wait_for(lambda: lock.exists() and str(proc.pid) in lock.read_text(), proc)


def test_second_writer_fails_naming_the_holder_and_a_kill_frees_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY[: TINY.index("--steps")], "--steps", "200", *TINY[TINY.index("--steps") + 2 :]]
    holder = subprocess.Popen(
        [PROBE, "train", "--out", str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_lock(out, holder)
        assert_user_error(
            run_cli(capsys, "train", "--out", out, *args),
            rf"--out: .* in use by another process \(pid {holder.pid} on ",
        )
        assert_user_error(
            run_cli(capsys, "train", "--resume", "--out", out),
            rf"in use by another process \(pid {holder.pid} on ",
        )
        _wait_for(lambda: (out / "config.json").exists(), holder)  # a run to resume
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = subprocess.run(
        [PROBE, "train", "--resume", "--out", str(out)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert Run(out).done and not (out / ".lock").exists()


def test_two_trainings_started_together_one_refused(tmp_path):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [PROBE, "train", "--out", str(out), *TINY],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = sorted((p.wait(), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    refused = results[1][1].strip().splitlines()
    assert len(refused) == 1 and (
        "in use by another process" in refused[0] or "already holds a run" in refused[0]
    )
    assert Run(out).done


def test_a_lock_in_one_process_refuses_another_writer_in_the_same(tmp_path):
    with RunWriter(tmp_path / "run"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            train(tiny_config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # made for the lock, left empty: removed


def test_a_second_sweep_on_a_busy_sweep_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    sweep = ["sweep", "--out", out, "--gammas", "0.3,1", *TINY, "--steps", "10"]
    assert run_cli(capsys, *sweep)[0] == 0
    before = _snapshot(out)
    with FolderLock(out, "sweep"):
        assert_user_error(
            run_cli(capsys, *sweep),
            rf"in use by another process \(pid "
            rf"{os.getpid()} on ",
        )
    assert _snapshot(out) == before


# --- divergence ---------------------------------------------------------------------------


def _all_checkpoints_finite(run: Run) -> bool:
    return all(
        torch.isfinite(t).all()
        for step in run.checkpoint_steps()
        for t in load_file(run.path / "checkpoints" / f"step_{step:07d}.safetensors").values()
    )


@pytest.mark.parametrize("lr", [3e37, 1e39])  # NaN weights after the update; AdamW overflow
def test_divergence_keeps_only_finite_checkpoints(tmp_path, capsys, lr):
    out = tmp_path / "run"
    assert_user_error(
        run_cli(capsys, "train", "--out", out, *TINY, "--lr", lr, "--grad-clip", 0),
        r"--lr: training diverged at step \d+",
    )
    run = Run(out)
    status = run.status
    assert status["state"] == "failed" and status["diverged"] is True
    assert f"diverged at step {status['step']}" in status["reason"]
    assert run.checkpoint_steps() and _all_checkpoints_finite(run)
    assert run.metrics().value.map(math.isfinite).all()


def test_non_finite_evaluation_stops_training(tmp_path, monkeypatch):
    train_module = sys.modules["initlens.models.train"]
    real, calls = train_module.evaluate, []

    def broken(*args):
        calls.append(1)
        scores = real(*args)
        return {k: float("nan") if len(calls) > 3 else v for k, v in scores.items()}

    monkeypatch.setattr(train_module, "evaluate", broken)
    with pytest.raises(UserError, match="evaluation gave non-finite"):
        train(tiny_config(), tmp_path / "run", progress=False)
    run = Run(tmp_path / "run")
    assert run.status["diverged"] and _all_checkpoints_finite(run)


# --- config files, field by field ---------------------------------------------------------


CONFIG_CASES = {
    "gamma text": (("model", "gamma"), "abc", r"gamma=\"abc\": expected a number"),
    "gamma null": (("model", "gamma"), None, r"gamma=null: expected a number"),
    "n_layers text": (("model", "n_layers"), "2", r"n_layers=\"2\": expected an integer"),
    "steps fraction": (("train", "steps"), 1.5, r"steps=1.5: expected an integer"),
    "steps huge": (("train", "steps"), 1e30, r"steps=1e\+30: expected an integer"),
    "steps huge int": (("train", "steps"), 10**12, r"steps=\d+: must be at most"),
    "one key": (("task", "keys"), [21], r"keys=\[21\]: expected a list \[an integer"),
    "no keys": (("task", "keys"), [], r"keys=\[\]: expected a list \[an integer"),
    "flat held_out": (("task", "held_out"), [11, 13], r"held_out=\[11, 13\]: expected a list"),
    "beta1 one": (("train", "beta1"), 1.0, r"beta1=1.0: must lie in \[0, 1\)"),
    "beta2 negative": (("train", "beta2"), -0.5, r"beta2=-0.5: must lie in \[0, 1\)"),
    "negative seed": (("train", "seed"), -3, r"seed=-3: must be >= 0"),
    "bad cuda": (("train", "device"), "cuda:abc", r"device='cuda:abc' is not one of"),
    "d_model float": (("model", "d_model"), 1e9, r"d_model=1000000000.0: expected an int"),
    "d_model huge": (("model", "d_model"), 10**9, r"d_model=\d+: is too large \(at most"),
    "model a list": (("model",), [1], r"model must be a JSON object"),
}


@pytest.mark.unchecked  # the annotation checks would refuse `model: [1]` first
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_file_fields_are_checked(tmp_path, capsys, tiny_cfg, case):
    where, value, pattern = CONFIG_CASES[case]
    data = tiny_cfg.to_dict()
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))
    assert_user_error(
        run_cli(capsys, "train", "--config", config, "--out", tmp_path / "o"), pattern
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "raw, pattern", [(b"\xff\xfe{}", "not UTF-8"), (b"[1, 2]", "must hold a JSON object")]
)
def test_config_file_of_the_wrong_kind(tmp_path, capsys, raw, pattern):
    (tmp_path / "c.json").write_bytes(raw)
    assert_user_error(
        run_cli(capsys, "train", "--config", tmp_path / "c.json", "--out", tmp_path / "o"), pattern
    )


def test_fields_added_later_are_checked_too():
    from dataclasses import dataclass

    from initlens.models.config import build

    @dataclass(frozen=True)
    class Future:
        width: int = 3
        scale: float | None = None

    assert build(Future, {"width": 4, "scale": 0.5}, "x") == Future(4, 0.5)
    with pytest.raises(UserError, match='x: width="4": expected an integer'):
        build(Future, {"width": "4"}, "x")
    with pytest.raises(UserError, match='scale="a": expected a number or null'):
        build(Future, {"scale": "a"}, "x")


def test_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert_user_error(
        run_cli(capsys, "train", "--out", tmp_path / "file" / "run", *TINY),
        r"--out: cannot use .* a file",
    )


# --- damaged run folders, read by every command -------------------------------------------


def _set_tensor(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"step": "17"})


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


CKPT = Path("checkpoints") / "step_0000017.safetensors"
OPT = Path("checkpoints") / "optimizer.safetensors"
DAMAGES = {
    "checkpoints is a file": lambda r: (
        shutil.rmtree(r / "checkpoints"),
        (r / "checkpoints").write_text("x"),
    ),
    "checkpoint is a folder": lambda r: _replace_with_folder(r / CKPT),
    "checkpoint of the wrong shape": lambda r: _set_tensor(
        r / CKPT, lambda t: t.update({"embed.weight": torch.zeros(3, 3)})
    ),
    "checkpoint missing a key": lambda r: _set_tensor(r / CKPT, lambda t: t.pop("embed.weight")),
    "checkpoint corrupt": lambda r: (r / CKPT).write_bytes(b"\x00" * 20),
    "optimizer without its step": lambda r: save_file(load_file(r / OPT), r / OPT),
    "optimizer of the wrong shape": lambda r: _set_tensor(
        r / OPT, lambda t: t.update({"0.exp_avg": torch.zeros(2)})
    ),
    "optimizer with a wrong key": lambda r: _set_tensor(
        r / OPT, lambda t: t.update({"999.exp_avg": torch.zeros(2)})
    ),
    "optimizer missing a key": lambda r: _set_tensor(r / OPT, lambda t: t.pop("0.exp_avg")),
    "status a list": lambda r: (r / "status.json").write_text("[1]"),
    "status not JSON": lambda r: (r / "status.json").write_text("{"),
    "init a string": lambda r: (r / "init.json").write_text('"x"'),
    "summary a list": lambda r: (r / "summary.json").write_text("[]"),
    "config a list": lambda r: (r / "config.json").write_text("[]"),
    "config not UTF-8": lambda r: (r / "config.json").write_bytes(b"{\xff}"),
    "config field of the wrong type": lambda r: (r / "config.json").write_text(
        (r / "config.json").read_text().replace('"n_layers": 2', '"n_layers": "2"')
    ),
    "metrics damaged mid-file": lambda r: (r / "metrics.jsonl").write_text(
        "{bad\n" + (r / "metrics.jsonl").read_text()
    ),
}
COMMANDS = {
    "resume": lambda r: ["train", "--resume", "--out", r],
    "info": lambda r: ["info", r],
    "report": lambda r: ["report", r, "--no-analysis"],
}
# Damage to files a command does not read is no error: info reads neither metrics nor the
# optimizer state, resume not init nor summary, a report without analysis only config,
# status and metrics.
SKIP = {
    ("info", "metrics damaged mid-file"),
    ("resume", "init a string"),
    ("resume", "summary a list"),
}
REPORT_READS = {
    "status a list",
    "status not JSON",
    "config a list",
    "config not UTF-8",
    "config field of the wrong type",
    "metrics damaged mid-file",
}


@pytest.mark.unchecked
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_run_folder(tmp_path, capsys, stopped, damage, command):
    if (
        (command, damage) in SKIP
        or (command == "info" and "optimizer" in damage)
        or (command == "report" and damage not in REPORT_READS)
    ):
        pytest.skip("this command does not read that file")
    out = tmp_path / "run"
    shutil.copytree(stopped.path, out)
    DAMAGES[damage](out)
    before = _snapshot(out)
    result = run_cli(capsys, *COMMANDS[command](out))
    code, _, err = result
    assert code == 2, result
    assert "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
    assert _snapshot(out) == before
