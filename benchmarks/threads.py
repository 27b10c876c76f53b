"""Training beside other busy processes: idle OpenMP threads spinning vs sleeping.

Usage: .venv/bin/python benchmarks/threads.py [--steps 300] [--busy 0,1,2]
Runs the same short `probe train` (demo architecture) in fresh processes, alone and beside
N single-threaded busy loops, with GNU OpenMP's default wait policy (spin a while, then
sleep), ACTIVE (always spin) and PASSIVE (sleep at once: what `import initlens` sets), plus
INITLENS_THREADS=auto (the cores free at start); prints wall and CPU seconds and the
slowdown against running alone, as Markdown rows for BENCHMARKS.md.
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = str(Path(sys.executable).with_name("probe"))
SETTINGS = {  # name -> environment on top of ours
    # An empty value keeps `import initlens` from setting PASSIVE, and GNU OpenMP then
    # behaves as with the variable unset (spin a while, then sleep): the behaviour before.
    "OpenMP's default": {"OMP_WAIT_POLICY": ""},
    "spinning (ACTIVE)": {"OMP_WAIT_POLICY": "ACTIVE"},
    "sleeping (PASSIVE, default)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "PASSIVE + INITLENS_THREADS=auto": {"OMP_WAIT_POLICY": "PASSIVE", "INITLENS_THREADS": "auto"},
}


def timed_train(steps: int, env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (children) of one `probe train` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            [
                PROBE,
                "train",
                "--out",
                f"{tmp}/run",
                "--steps",
                str(steps),
                "--eval-every",
                str(steps),
            ],
            env={**os.environ, "CI": "1", **env},
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--busy", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"`probe train --steps {args.steps}`, best of {args.repeats}"
    )
    print("| setting | busy processes | wall s | CPU s | wall vs alone |")
    print("|---|---|---|---|---|")
    alone: dict[str, float] = {}
    for n in [int(b) for b in args.busy.split(",")]:
        loops = busy_loops(n)
        try:
            time.sleep(1.0 if n else 0.0)  # let the load settle
            for name, env in SETTINGS.items():
                wall, cpu = min(timed_train(args.steps, env) for _ in range(args.repeats))
                alone.setdefault(name, wall)
                print(
                    f"| {name} | {n} | {wall:.1f} | {cpu:.1f} | {wall / alone[name]:.2f}x |",
                    flush=True,
                )
        finally:
            for p in loops:
                p.kill()


if __name__ == "__main__":
    main()
