"""Wall time and peak memory of the main job (`probe study` with the demo defaults).

Usage: .venv/bin/python benchmarks/demo.py [OUT_DIR]
Prints one Markdown table row for BENCHMARKS.md. Peak memory is the peak resident set
size of the `probe` process (getrusage of children).
"""

import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

out = sys.argv[1] if len(sys.argv) > 1 else "demo_out"
probe = Path(sys.executable).parent / "probe"
start = time.perf_counter()
subprocess.run([str(probe), "study", "--out", out, "--overwrite"], check=True)
wall = time.perf_counter() - start
peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
cpus = len(__import__("os").sched_getaffinity(0))
print(
    f"| probe study (demo defaults) | {wall:.0f} s | {peak_mib:.0f} MiB | "
    f"{platform.processor() or platform.machine()}, {cpus} cores, no GPU |"
)
