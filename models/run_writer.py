"""The one writer of a run directory (see `models.run` for its layout and the reader, `Run`).

Every file is written atomically (temp file + rename), except metrics.jsonl, which is only
ever appended to, one flushed line at a time. A resumed run redoes the evaluations after
its checkpoint; rows already in the file are not written again, so the file of a resumed
run equals that of an uninterrupted one.

One process writes a run at a time: the writer holds an exclusive `flock` on RUN/.lock
(which names the holder) for as long as it trains; the kernel releases it when the
process dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from initlens.models.checkpoint import atomic_write, save_tensors, write_json
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.run import Run, checkpoint_path, read_metrics

LOCK = ".lock"


class FolderLock:
    """An exclusive lock on a folder (FOLDER/.lock), held until `release` or process exit."""

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        """Take the lock (creating the folder), or raise a UserError naming its holder."""
        if self._fd is not None:
            return
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(
                f"cannot use {self.folder} as a {self.what} folder: it or a "
                f"folder above it is a file; choose another path",
                option="out",
            ) from None
        path = self.folder / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                raise UserError(
                    f"{self.folder} is in use by another process "
                    f"({_describe(holder)}); wait for it to finish or stop it, "
                    f"or choose another folder",
                    option="out",
                ) from None
            try:  # the previous holder may have removed the file before we locked it
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (and remove the folder if we made it and it
        stayed empty)."""
        if self._fd is None:
            return
        (self.folder / LOCK).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._created and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: str) -> str:
    """'pid 123 on host, since 2026-...' from a lock file's text."""
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on {h['host']}, since {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is still starting"


def leftovers(folder: Path) -> list[Path]:
    """Temp files of atomic writes that a killed process left behind."""
    return [p for d in (folder, folder / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp")]


class RunWriter:
    """Writes config, init record, metrics, checkpoints, status and summary of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._metrics = None  # metrics.jsonl, opened for appending on first use
        self._written: set[tuple] = set()  # (step, group, metric) rows already in the file
        self._lock = FolderLock(self.path)

    def __enter__(self) -> RunWriter:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.unlock()

    def lock(self) -> None:
        """Become the one writer of this run directory (a UserError if another process is)."""
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    def check_free(self) -> None:
        """Refuse to start a run in a folder that holds a run or any other files."""
        if (self.path / "config.json").exists():
            state = Run(self.path).status.get("state", "unknown")
            raise UserError(
                f"{self.path} already holds a run (state: {state}); resume it, "
                f"or choose another output folder",
                option="out",
            )
        ignored = {LOCK, *(p.name for p in leftovers(self.path))}
        if self.path.exists() and any(p.name not in ignored for p in self.path.iterdir()):
            raise UserError(
                f"{self.path} exists and is not empty; choose a new output folder", option="out"
            )

    def _clean(self) -> None:
        for tmp in leftovers(self.path):
            tmp.unlink(missing_ok=True)

    def start(self, cfg: RunConfig, init: list[dict]) -> None:
        """config.json, the realized init and an empty metrics file of a new run."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._clean()
        atomic_write(self.path / "config.json", cfg.to_json() + "\n")
        write_json(self.path / "init.json", init)
        atomic_write(self.path / "metrics.jsonl", "")
        self._written = set()

    def resume(self, init: list[dict]) -> None:
        """Continue a run: keep its metrics (cut back a line a kill left half-written) and
        remember which rows they hold, so that redone evaluations are not written twice."""
        self._clean()
        if not (self.path / "init.json").exists():
            write_json(self.path / "init.json", init)
        path = self.path / "metrics.jsonl"
        rows, size = read_metrics(path)
        if path.exists() and path.stat().st_size != size:
            os.truncate(path, size)
        self._written = {(r["step"], r["group"], r["metric"]) for r in rows}

    def append_metrics(self, step: int, values: dict[tuple[str, str], float]) -> None:
        """Append one evaluation to metrics.jsonl as tidy rows, one per (group, metric)."""
        if self._metrics is None:
            self._metrics = (self.path / "metrics.jsonl").open("a")
        lines = []
        for (group, metric), value in values.items():
            if (step, group, metric) not in self._written:
                self._written.add((step, group, metric))
                lines.append(
                    json.dumps({"step": step, "group": group, "metric": metric, "value": value})
                    + "\n"
                )
        self._metrics.write("".join(lines))
        self._metrics.flush()

    def save_checkpoint(self, step: int, weights: dict, optimizer: dict) -> None:
        """Weights at `step`, the optimizer state to resume from, and the running status."""
        save_tensors(checkpoint_path(self.path, step), weights, {"step": str(step)})
        save_tensors(
            self.path / "checkpoints" / "optimizer.safetensors", optimizer, {"step": str(step)}
        )
        write_json(self.path / "status.json", {"state": "running", "step": step})

    def fail(self, step: int, reason: str, diverged: bool = False) -> None:
        """Mark the run failed at `step`, saying why (and whether it diverged); its
        checkpoints are kept."""
        status = {"state": "failed", "step": step, "reason": reason}
        if diverged:
            status["diverged"] = True
        write_json(self.path / "status.json", status)

    def finish(self, n_params: int, device, seconds: float) -> None:
        """summary.json (final metrics) and the done status of a run that reached its last
        step."""
        run = Run(self.path)
        steps = run.config.train.steps
        final = run.metrics().query("step == @steps")
        write_json(
            self.path / "summary.json",
            {
                "final": {f"{r.group}/{r.metric}": r.value for r in final.itertuples()},
                "steps": steps,
                "n_params": n_params,
                "device": str(device),
                "train_seconds_last_session": round(seconds, 2),
            },
        )
        write_json(self.path / "status.json", {"state": "done", "step": steps})

    def close(self) -> None:
        """Close metrics.jsonl (a later append reopens it)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
