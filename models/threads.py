"""Threads that sleep when they wait, and a thread count chosen from the free cores on request.

On a busy machine, a process that starts one OpenMP thread per core makes every parallel
region wait for its slowest thread, which shares a core with another job, and by default
the waiting threads spin, burning the core the other job needs. OMP_WAIT_POLICY=PASSIVE
(set when `initlens` is imported, before torch loads) makes them sleep instead.

The thread count is left as torch chooses it (one per core), because it changes the last
bits of sums and so of results: same seed, same numbers needs the same count. Choose it
with INITLENS_THREADS=N, or INITLENS_THREADS=auto for the cores idle when the process starts
(fastest on a busy machine, at the price of bit-reproducibility across loads).
OMP_NUM_THREADS, where set, is left alone.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

USER_SETTING = "INITLENS_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def running_elsewhere(samples: int = 5, interval_s: float = 0.004) -> float:
    """Runnable threads of other processes now: the median of a few reads of /proc/loadavg.

    Its fourth field counts the threads runnable at this instant, this process's included;
    the median of a few reads ignores a short-lived blip. 0 where /proc is absent."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(running - 1)  # this process's one thread
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(statistics.median(counts), 0.0)


def free_cores(cores: int, busy: float) -> int:
    """Threads to use: the cores not taken by `busy` runnable threads, at least one."""
    return max(1, min(cores, cores - round(busy)))


def chosen_threads() -> int | None:
    """The thread count INITLENS_THREADS asks for, or None (leave torch's own choice)."""
    value = os.environ.get(USER_SETTING, "").strip().lower()
    if not value:
        return None
    if value == "auto":
        return free_cores(usable_cores(), running_elsewhere())
    if value.isdigit() and int(value) >= 1:
        return int(value)
    warnings.warn(
        f"{USER_SETTING}={value!r}: expected a whole number of threads (>= 1) or "
        f"'auto'; leaving the thread count as it is",
        stacklevel=2,
    )
    return None


def configure_threads(threads: int | None = None) -> int:
    """Set torch's and the BLAS libraries' thread counts (default: chosen_threads()).

    Called when `initlens` is imported; call it again (e.g. with INITLENS_THREADS=auto) in
    a long session after the machine's load changed. Returns the count in effect."""
    if threads is None:
        threads = chosen_threads()
    import torch

    if threads is None:
        return torch.get_num_threads()
    import threadpoolctl

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)  # BLAS libraries loaded so far (numpy's)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # read by those loaded later
        os.environ.setdefault(var, str(threads))
    return threads
