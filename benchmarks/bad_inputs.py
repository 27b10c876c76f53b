"""Bad input thrown at `probe`: how many end in a traceback, a wrong exit code, more than
one line, or a changed file.

Usage: .venv/bin/python benchmarks/bad_inputs.py [--probe "CMD"] [--only TEXT]
Trains one tiny run, then runs each case below in a fresh process and checks what a user
should see: exit code 2, one line starting "error: ", no traceback, and no file written or
changed (the run folders are compared byte for byte before and after). `--probe` runs
another checkout's CLI, e.g. `--probe "python -c 'from initlens.analyses.cli import main;
main()'"` with that checkout first on PYTHONPATH, to measure before and after a change.
Prints one row per failing case and a Markdown summary row for BENCHMARKS.md.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import TINY  # noqa: E402

PROBE = [str(Path(sys.executable).with_name("probe"))]


def _with(options: list[str], **changes) -> list[str]:
    """TINY with some options replaced."""
    out = list(options)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def damage(run: Path, what: str) -> None:
    """Damage a copy of a run folder in one of the ways the checks must catch."""
    ckpts = sorted((run / "checkpoints").glob("step_*.safetensors"))
    if what == "checkpoint is a folder":
        ckpts[-1].unlink()
        ckpts[-1].mkdir()
    elif what == "checkpoint of another model":
        other = run.parent / "other"
        subprocess.run(
            [*PROBE, "train", "--out", str(other), *_with(TINY, d_model="8", steps="2")],
            check=True,
            capture_output=True,
        )
        shutil.copy(sorted((other / "checkpoints").glob("step_*"))[-1], ckpts[-1])
        shutil.rmtree(other)
    elif what == "optimizer without its step":
        from safetensors.torch import load_file, save_file

        f = run / "checkpoints" / "optimizer.safetensors"
        save_file(load_file(f), f)  # metadata dropped
    elif what == "NaN weights":
        from safetensors.torch import load_file, save_file

        t = load_file(ckpts[-1])
        save_file({k: v * float("nan") for k, v in t.items()}, ckpts[-1])
    elif what == "truncated metrics line":
        lines = (run / "metrics.jsonl").read_text().splitlines()
        lines[3] = lines[3][:10]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elif what == "non-UTF-8 config":
        (run / "config.json").write_bytes(b"\xff\xfe{}")
    elif what == "status.json a list":
        (run / "status.json").write_text("[1, 2]")
    elif what == "only config.json":
        for p in run.iterdir():
            if p.name != "config.json":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif what == "checkpoints is a file":
        shutil.rmtree(run / "checkpoints")
        (run / "checkpoints").write_text("x")
    else:
        raise ValueError(what)


def cases(tmp: Path, run: Path) -> dict[str, list]:
    """{name: argv}; "{run}" and "{damaged:KIND}" are filled in when the case runs."""
    file = tmp / "a_file"
    file.write_text("x")
    o = lambda name: str(tmp / "out" / name)  # noqa: E731
    return {
        # options the parser or the config checks must refuse
        **{
            f"train --{f} abc": ["train", "--out", o("t"), *TINY, f"--{f}", "abc"]
            for f in ("d-head", "n-ctx", "d-mlp", "init-rank", "batch-seed", "steps", "gamma")
        },
        "train --keys 21": ["train", "--out", o("t"), *_with(TINY, keys="21")],
        "train --keys 1,2,3": ["train", "--out", o("t"), *_with(TINY, keys="1,2,3")],
        "train --task ''": ["train", "--out", o("t"), *TINY, "--task", ""],
        "train --n-ctx 0": ["train", "--out", o("t"), *TINY, "--n-ctx", "0"],
        "train --n-checkpoints -3": ["train", "--out", o("t"), *_with(TINY, n_checkpoints="-3")],
        "train --steps 1e30": ["train", "--out", o("t"), *_with(TINY, steps="1e30")],
        "train --gamma nan": ["train", "--out", o("t"), *TINY, "--gamma", "nan"],
        "train --lr inf": ["train", "--out", o("t"), *TINY, "--lr", "inf"],
        "train --device cuda:abc": ["train", "--out", o("t"), *TINY, "--device", "cuda:abc"],
        "train --beta1 1": ["train", "--out", o("t"), *TINY, "--beta1", "1"],
        "train --seed -1": ["train", "--out", o("t"), *TINY, "--seed", "-1"],
        "train --out under a file": ["train", "--out", str(file / "run"), *TINY],
        "train, no such command": ["trian", "--out", o("t")],
        "patch --seed -1": ["patch", "{run}", "--out", o("p"), "--seed", "-1"],
        "patch --max-memory-mb nan": ["patch", "{run}", "--out", o("p"), "--max-memory-mb", "nan"],
        "patch --n 0": ["patch", "{run}", "--out", o("p"), "--n", "0"],
        "patch --n 10**12": ["patch", "{run}", "--out", o("p"), "--n", str(10**12)],
        "patch --step abc": ["patch", "{run}", "--out", o("p"), "--step", "abc"],
        "patch --component resid": ["patch", "{run}", "--out", o("p"), "--component", "resid"],
        "patch --format bmp": ["patch", "{run}", "--out", o("p"), "--format", "bmp"],
        "patch --out under a file": ["patch", "{run}", "--out", str(file / "p")],
        "linear --target ''": ["linear", "{run}", "--out", o("l"), "--target", ""],
        "linear --component ''": ["linear", "{run}", "--out", o("l"), "--component", ""],
        "linear --n -1": ["linear", "{run}", "--out", o("l"), "--n", "-1"],
        "linear --C 0": ["linear", "{run}", "--out", o("l"), "--C", "0"],
        "linear --C -1": ["linear", "{run}", "--out", o("l"), "--C", "-1"],
        "linear --C nan": ["linear", "{run}", "--out", o("l"), "--C", "nan"],
        "linear --step abc": ["linear", "{run}", "--out", o("l"), "--step", "abc"],
        "linear --format bmp": ["linear", "{run}", "--out", o("l"), "--format", "bmp"],
        "geometry --n -1": ["geometry", "{run}", "--out", o("g"), "--n", "-1"],
        "geometry --step abc": ["geometry", "{run}", "--out", o("g"), "--step", "abc"],
        "geometry --out under a file": ["geometry", "{run}", "--out", str(file / "g")],
        "linear --out under a file": ["linear", "{run}", "--out", str(file / "l")],
        "study --out under a file": ["study", "--out", str(file / "s"), *TINY],
        "sweep --out under a file": ["sweep", "--out", str(file / "w"), *TINY, "--gammas", "0.3"],
        "report --out under a file": ["report", "{run}", "--out", str(file / "r.html")],
        "study --format bmp": ["study", "--out", o("s"), *TINY, "--format", "bmp"],
        "sweep --format bmp": [
            "sweep",
            "--out",
            o("w"),
            *TINY,
            "--gammas",
            "0.3,0.5",
            "--format",
            "bmp",
        ],
        "sweep --retries -1": [
            "sweep",
            "--out",
            o("w"),
            *TINY,
            "--gammas",
            "0.3",
            "--retries",
            "-1",
        ],
        "report --format bmp": ["report", "{run}", "--format", "bmp", "--no-analysis"],
        "info, no such run": ["info", o("nope")],
        # damaged run folders
        **{
            f"{cmd} on {kind}": [*args[:1], f"{{damaged:{kind}}}", *args[1:]]
            for kind in (
                "checkpoint is a folder",
                "checkpoint of another model",
                "NaN weights",
                "truncated metrics line",
                "non-UTF-8 config",
                "status.json a list",
            )
            for cmd, args in (
                ("info", ["info"]),
                ("patch", ["patch", "--out", o("p"), "--n", "4"]),
            )
            if "metrics" not in kind and "status" not in kind  # they read neither
        },
        **{
            f"report on {kind}": ["report", f"{{damaged:{kind}}}", "--no-analysis"]
            for kind in ("truncated metrics line", "non-UTF-8 config", "status.json a list")
        },
        **{
            f"train --resume on {kind}": ["train", "--resume", "--out", f"{{damaged:{kind}}}"]
            for kind in (
                "checkpoint is a folder",
                "checkpoint of another model",
                "optimizer without its step",
                "NaN weights",
                "truncated metrics line",
                "non-UTF-8 config",
                "checkpoints is a file",
            )
        },
        "report --no-analysis on only config.json": [
            "report",
            "{damaged:only config.json}",
            "--no-analysis",
        ],
    }


def snapshot(folder: Path) -> dict[str, bytes | None]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def check(probe: list[str], tmp: Path, run: Path, name: str, argv: list[str]) -> list[str]:
    """What is wrong with how `probe ARGV` handled its bad input (empty: nothing)."""
    argv = list(argv)
    target = run
    for i, a in enumerate(argv):
        if a == "{run}":
            argv[i] = str(run)
        elif a.startswith("{damaged:"):
            target = tmp / "damaged"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(run, target)
            if "--resume" in argv:  # as if killed mid-run, so that resuming reads it all
                (target / "status.json").write_text('{"state": "running", "step": 20}')
            damage(target, a[len("{damaged:") : -1])
            argv[i] = str(target)
    before = snapshot(target)
    start = time.time()
    r = subprocess.run([*probe, *argv], capture_output=True, text=True, timeout=900)
    seconds = time.time() - start
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    problems = []
    if "Traceback" in r.stderr + r.stdout:
        problems.append("traceback")
    if r.returncode != 2:
        problems.append(f"exit {r.returncode}")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"lines: {len(lines)}")
    if (tmp / "out").exists() and any((tmp / "out").iterdir()):
        problems.append("wrote files")
    if snapshot(target) != before:
        problems.append("changed the run")
    if seconds > 20:
        problems.append(f"took {seconds:.0f} s (work before the check?)")
    shutil.rmtree(tmp / "out", ignore_errors=True)
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", help="command that runs the CLI (default: this venv's probe)")
    ap.add_argument("--only", default="", help="only the cases whose name contains this")
    args = ap.parse_args()
    probe = shlex.split(args.probe) if args.probe else PROBE
    tmp = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    run = tmp / "run"
    subprocess.run([*PROBE, "train", "--out", str(run), *TINY], check=True, capture_output=True)
    table = {k: v for k, v in cases(tmp, run).items() if args.only in k}
    tally = {k: 0 for k in ("traceback", "exit", "lines", "wrote", "changed", "took")}
    failing = 0
    for name, argv in table.items():
        problems = check(probe, tmp, run, name, argv)
        for p in problems:
            tally[p.split()[0].rstrip(":")] += 1
        if problems:
            failing += 1
            print(f"{name}: {', '.join(problems)}")
    shutil.rmtree(tmp)
    print(
        "| cases | mishandled | tracebacks | wrong exit code | not one line | files written "
        "or changed | slow refusals |"
    )
    print(
        f"| {len(table)} | {failing} | {tally['traceback']} | {tally['exit']} | "
        f"{tally['lines']} | {tally['wrote'] + tally['changed']} | {tally['took']} |"
    )


if __name__ == "__main__":
    main()
