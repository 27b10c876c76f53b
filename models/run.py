"""A run directory: the one artifact that connects training to every later analysis.

    RUN/config.json                 RunConfig (task, model, train)
    RUN/init.json                   realized init: per parameter, d_in, target and drawn std
    RUN/status.json                 {"state": running|done|failed, "step": last checkpoint, ...}
    RUN/metrics.jsonl               tidy rows: {"step", "group", "metric", "value"}
    RUN/summary.json                final metrics, wall time (written when training ends)
    RUN/checkpoints/step_NNNNNNN.safetensors   weights in TransformerLens state-dict names
    RUN/checkpoints/optimizer.safetensors      AdamW state at the last checkpoint (for resume)

`Run` reads these files; `models.run_writer.RunWriter` is the one thing that writes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from initlens.models.build import build_model, resolve_device
from initlens.models.checkpoint import load_tensors, read_json
from initlens.models.config import RunConfig
from initlens.models.errors import UserError

CKPT = re.compile(r"step_(\d+)\.safetensors$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.safetensors"


@dataclass(frozen=True)
class Run:
    """A run directory on disk; everything is read lazily from its files."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """Open a run directory, or raise a UserError saying why it is not one."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"run directory {path} does not exist; check the path")
        if not path.is_dir():
            raise UserError(f"{path} is a file, not a run directory")
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a run directory (no config.json); point to a "
                            f"folder written by `probe train` or `probe study`")
        return cls(path)

    @cached_property
    def config(self) -> RunConfig:
        return RunConfig.load(self.path / "config.json")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> dict:
        f = self.path / "status.json"
        return read_json(f, "status file") if f.exists() else {"state": "unknown"}

    @property
    def done(self) -> bool:
        return self.status.get("state") == "done"

    @property
    def summary(self) -> dict:
        f = self.path / "summary.json"
        return read_json(f, "summary") if f.exists() else {}

    @property
    def init(self) -> list[dict]:
        return read_json(self.path / "init.json", "init record")

    def checkpoint_steps(self) -> list[int]:
        folder = self.path / "checkpoints"
        steps = [int(m.group(1)) for f in folder.glob("step_*.safetensors")
                 if (m := CKPT.search(f.name))] if folder.exists() else []
        return sorted(steps)

    def resume_point(self) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(step, weights, optimizer state) of the checkpoint to resume from; None if none."""
        state_file = self.path / "checkpoints" / "optimizer.safetensors"
        if not state_file.exists():
            return None
        optimizer, meta = load_tensors(state_file)
        step = int(meta["step"])
        weights, _ = load_tensors(checkpoint_path(self.path, step))
        return step, weights, optimizer

    def resolve_step(self, step: int | str | None = None) -> int:
        """`None`/"last" is the last checkpoint; an int must be one of the checkpoints."""
        steps = self.checkpoint_steps()
        if not steps:
            raise UserError(f"run {self.path} has no checkpoints; it may have failed before "
                            f"step 0 was saved: retrain it")
        if step is None or step == "last":
            return steps[-1]
        step = int(step)
        if step not in steps:
            raise UserError(f"run {self.path} has no checkpoint at step {step}; available: "
                            f"{', '.join(map(str, steps))}")
        return step

    def load_model(self, step: int | str | None = None,
                   device: str | torch.device | None = None) -> TransformerBridge:
        """The model at a checkpoint (default: the last), ready for TransformerLens tools."""
        step = self.resolve_step(step)
        path = checkpoint_path(self.path, step)
        tensors, _ = load_tensors(path)
        model = build_model(self.config, device="cpu")
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise UserError(f"checkpoint {path} does not match the run's config.json ({first}); "
                            f"the file belongs to another model: restore it or retrain") from None
        model.eval()
        device = resolve_device(str(device or self.config.train.device))
        return model.to(device, print_details=False)

    def dataset(self):
        """The run's task data (same data seed), torch-formatted: ds[:8]["tokens"] is a tensor."""
        cfg = self.config
        return cfg.task.generate(cfg.train.data_seed).with_format("torch")

    @cached_property
    def _metric_rows(self) -> list[dict]:
        """metrics.jsonl, parsed once per Run object (reopen the run to see new rows)."""
        f = self.path / "metrics.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] \
            if f.exists() else []

    def metrics(self) -> pd.DataFrame:
        """Tidy metrics: one row per (step, group, metric), with the run's gamma attached."""
        df = pd.DataFrame(self._metric_rows, columns=["step", "group", "metric", "value"])
        return df.assign(run=self.name, gamma=self.config.model.gamma)
