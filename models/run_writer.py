"""The one writer of a run directory (see `models.run` for its layout and the reader, `Run`).

Every file is written atomically (temp file + rename), except metrics.jsonl, which is
appended to one flushed line at a time and cut back to a checkpoint on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from initlens.models.checkpoint import atomic_write, save_tensors, write_json
from initlens.models.config import RunConfig
from initlens.models.errors import UserError
from initlens.models.run import Run, checkpoint_path


class RunWriter:
    """Writes config, init record, metrics, checkpoints, status and summary of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._metrics = None  # metrics.jsonl, opened for appending on first use

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_free(self) -> None:
        """Refuse to start a run in a folder that holds a run or any other files."""
        if (self.path / "config.json").exists():
            state = Run(self.path).status.get("state", "unknown")
            raise UserError(f"{self.path} already holds a run (state: {state}); resume it, "
                            f"or choose another output folder", option="out")
        if self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"{self.path} exists and is not empty; choose a new output folder",
                            option="out")

    def start(self, cfg: RunConfig, init: list[dict]) -> None:
        """config.json, the realized init and an empty metrics file of a new run."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "config.json", cfg.to_json() + "\n")
        write_json(self.path / "init.json", init)
        atomic_write(self.path / "metrics.jsonl", "")

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics written after the checkpoint we resume from (they will be redone)."""
        path = self.path / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        atomic_write(path, "".join(line + "\n" for line in keep))

    def append_metrics(self, step: int, values: dict[tuple[str, str], float]) -> None:
        """Append one evaluation to metrics.jsonl as tidy rows, one per (group, metric)."""
        if self._metrics is None:
            self._metrics = (self.path / "metrics.jsonl").open("a")
        for (group, metric), value in values.items():
            self._metrics.write(json.dumps({"step": step, "group": group, "metric": metric,
                                            "value": value}) + "\n")
        self._metrics.flush()

    def save_checkpoint(self, step: int, weights: dict, optimizer: dict) -> None:
        """Weights at `step`, the optimizer state to resume from, and the running status."""
        save_tensors(checkpoint_path(self.path, step), weights, {"step": str(step)})
        save_tensors(self.path / "checkpoints" / "optimizer.safetensors", optimizer,
                     {"step": str(step)})
        write_json(self.path / "status.json", {"state": "running", "step": step})

    def fail(self, step: int, reason: str) -> None:
        """Mark the run failed at `step`, saying why; its checkpoints are kept."""
        write_json(self.path / "status.json", {"state": "failed", "step": step,
                                               "reason": reason})

    def finish(self, n_params: int, device, seconds: float) -> None:
        """summary.json (final metrics) and the done status of a run that reached its last
        step."""
        run = Run(self.path)
        steps = run.config.train.steps
        final = run.metrics().query("step == @steps")
        write_json(self.path / "summary.json", {
            "final": {f"{r.group}/{r.metric}": r.value for r in final.itertuples()},
            "steps": steps, "n_params": n_params, "device": str(device),
            "train_seconds_last_session": round(seconds, 2)})
        write_json(self.path / "status.json", {"state": "done", "step": steps})

    def close(self) -> None:
        """Close metrics.jsonl (a later append reopens it)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
