"""The analysis commands on the demo study, as a user runs them: wall and CPU seconds,
alone and beside busy processes.

Usage: .venv/bin/python benchmarks/cli.py [--study demo_out] [--busy 0,1] [--repeats 1]
Needs a finished demo study (`make demo` writes demo_out/). Each command runs in a fresh
`probe` process with its defaults (outputs into a temporary folder), alone and beside N
single-threaded busy loops; prints Markdown rows for BENCHMARKS.md. `probe report` reuses
the analyses `make demo` cached, as it does for a user after the demo.
"""

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = str(Path(sys.executable).with_name("probe"))


def commands(study: Path, out: Path) -> dict[str, list[str]]:
    # gamma_<g> in a one-seed study, gamma_<g>_seed_<s> (the first seed) in a multi-seed one
    small, large = (sorted(study.glob(f"gamma_{g}*"))[0] for g in ("0.8", "0.3"))
    return {
        "linear (default target)": ["linear", str(small), "--out", str(out / "l1")],
        "linear --target key,memorized": [
            "linear", str(small), "--target", "key,memorized", "--out", str(out / "l2")
        ],
        "geometry, two runs": ["geometry", str(large), str(small), "--out", str(out / "g")],
        "patch --attribution": ["patch", str(small), "--attribution", "--out", str(out / "p")],
        "report (the study)": ["report", str(out / "study")],
    }  # fmt: skip


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (children) of one `probe ARGV` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([PROBE, *argv], env={**os.environ, "CI": "1"}, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"probe {' '.join(argv)} failed:\n{r.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("demo_out"))
    parser.add_argument("--busy", default="0,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", default="", help="only commands whose name contains this")
    args = parser.parse_args()
    if not (args.study / "study.json").exists():
        raise SystemExit(f"{args.study} is not a study folder; run `make demo` first")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"study {args.study}, best of {args.repeats}"
    )
    print("| command | busy processes | wall s | CPU s | wall vs alone |")
    print("|---|---|---|---|---|")
    alone: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        shutil.copytree(args.study, out / "study")  # the report writes into the study
        for n in [int(b) for b in args.busy.split(",")]:
            loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
            try:
                time.sleep(1.0 if n else 0.0)  # let the load settle
                for name, argv in commands(args.study, out).items():
                    if args.only not in name:
                        continue
                    wall, cpu = min(timed(argv) for _ in range(args.repeats))
                    alone.setdefault(name, wall)
                    print(
                        f"| `probe {name}` | {n} | {wall:.1f} | {cpu:.1f} | "
                        f"{wall / alone[name]:.2f}x |",
                        flush=True,
                    )
            finally:
                for p in loops:
                    p.kill()


if __name__ == "__main__":
    main()
