"""How many CPU threads torch and the BLAS libraries use: the cores that are free now.

On a busy machine, a process that starts one OpenMP thread per core makes every parallel
region wait for its slowest thread, which shares a core with another job; the threads
spin while they wait. A 2-core machine with one other busy process then runs our work
three times slower instead of at most two. So the thread count is chosen when a process
starts from the cores that are idle at that moment, and threads sleep rather than spin
when they wait (OMP_WAIT_POLICY=PASSIVE, when set before torch loads).

The user decides instead with INITLENS_THREADS=N, or with OMP_NUM_THREADS, which we then
leave alone.
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
    """The thread count for this process, or None where the user set OMP_NUM_THREADS."""
    if value := os.environ.get(USER_SETTING, "").strip():
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n >= 1:
            return n
        warnings.warn(f"{USER_SETTING}={value!r} is not a whole number of threads (>= 1); "
                      f"using the free cores instead", stacklevel=2)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return free_cores(usable_cores(), running_elsewhere())


def configure_threads(threads: int | None = None) -> int:
    """Set torch's and the BLAS libraries' thread counts (default: chosen_threads()).

    Called once when `initlens` is imported; call it again in a long session after the
    machine's load changed. Returns the count in effect."""
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
