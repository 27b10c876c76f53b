"""A run directory: the one artifact that connects training to every later analysis.

    RUN/config.json                 RunConfig (task, model, train)
    RUN/init.json                   realized init: per parameter, d_in, target and drawn std
    RUN/status.json                 {"state": running|done|failed, "step": ..., "reason",
                                     "diverged": true when training diverged}
    RUN/metrics.jsonl               tidy rows: {"step", "group", "metric", "value"}, appended
    RUN/summary.json                final metrics, wall time (written when training ends)
    RUN/checkpoints/step_NNNNNNN.safetensors   weights in TransformerLens state-dict names
    RUN/checkpoints/optimizer.safetensors      AdamW state at the last checkpoint (for resume)
    RUN/.lock                       while a process trains the run: its pid, host, start time

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
from initlens.models.emb_mlp import EmbMLP
from initlens.models.errors import UserError

CKPT = re.compile(r"step_(\d+)\.safetensors$")
METRIC_COLUMNS = ["step", "group", "metric", "value"]


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.safetensors"


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The rows of a metrics.jsonl and the bytes they fill; a last line without its newline
    (a write cut short by a kill) is left out. A UserError if another line is damaged."""
    try:
        raw = path.read_bytes() if path.exists() else b""
    except OSError as e:
        raise UserError(f"metrics file {path} cannot be read ({e.strerror})") from None
    size = raw.rfind(b"\n") + 1
    rows = []
    for n, line in enumerate(raw[:size].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({k: row[k] for k in METRIC_COLUMNS})
            step, group, metric = row["step"], row["group"], row["metric"]
            if not (isinstance(step, int) and isinstance(group, str) and isinstance(metric, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"metrics file {path} is damaged at line {n}; restore it, or delete that line"
            ) from None
    return rows, size


def _finite_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors; a UserError if any is NaN or infinite (training never saves
    such a step, so the file is damaged)."""
    tensors, _ = load_tensors(path)
    damaged = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if damaged:
        raise UserError(
            f"checkpoint {path} holds non-finite weights ({damaged[0]}); the file is "
            f"damaged: restore it, choose another step, or retrain"
        )
    return tensors


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
            raise UserError(
                f"{path} is not a run directory (no config.json); point to a "
                f"folder written by `probe train` or `probe study`"
            )
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
        return self._read(f, "status file", dict) if f.exists() else {"state": "unknown"}

    @property
    def done(self) -> bool:
        return self.status.get("state") == "done"

    @property
    def summary(self) -> dict:
        f = self.path / "summary.json"
        return self._read(f, "summary", dict) if f.exists() else {}

    @property
    def init(self) -> list[dict]:
        return self._read(self.path / "init.json", "init record", list)

    @staticmethod
    def _read(path: Path, what: str, kind: type):
        value = read_json(path, what)
        if not isinstance(value, kind):
            raise UserError(
                f"{what} {path} is damaged: it holds a JSON "
                f"{type(value).__name__}, not a {kind.__name__}; restore or "
                f"delete it"
            )
        return value

    def checkpoint_steps(self) -> list[int]:
        folder = self.path / "checkpoints"
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a file, not the run's checkpoint folder; restore it")
        steps = (
            [
                int(m.group(1))
                for f in folder.glob("step_*.safetensors")
                if (m := CKPT.search(f.name))
            ]
            if folder.exists()
            else []
        )
        return sorted(steps)

    def resume_point(self) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(step, weights, optimizer state) of the checkpoint to resume from; None if none."""
        self.checkpoint_steps()  # the checkpoint folder is a folder
        state_file = self.path / "checkpoints" / "optimizer.safetensors"
        if not state_file.exists():
            return None
        optimizer, meta = load_tensors(state_file)
        step = meta.get("step", "")
        if not step.isdigit():
            raise UserError(
                f"optimizer state {state_file} does not say its step; restore it, "
                f"or delete it to retrain the run from the start"
            )
        return int(step), _finite_weights(checkpoint_path(self.path, int(step))), optimizer

    def resolve_step(self, step: int | str | None = None) -> int:
        """`None`/"last" is the last checkpoint; an int must be one of the checkpoints."""
        steps = self.checkpoint_steps()
        if not steps:
            raise UserError(
                f"run {self.path} has no checkpoints; it may have failed before "
                f"step 0 was saved: retrain it"
            )
        if step is None or step == "last":
            return steps[-1]
        step = int(step)
        if step not in steps:
            raise UserError(
                f"run {self.path} has no checkpoint at step {step}; available: "
                f"{', '.join(map(str, steps))}"
            )
        return step

    def load_model(
        self, step: int | str | None = None, device: str | torch.device | None = None
    ) -> TransformerBridge | EmbMLP:
        """The model at a checkpoint (default: the last), ready for TransformerLens tools."""
        step = self.resolve_step(step)
        path = checkpoint_path(self.path, step)
        tensors = _finite_weights(path)
        model = build_model(self.config, device="cpu")
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise UserError(
                f"checkpoint {path} does not match the run's config.json ({first}); "
                f"the file belongs to another model: restore it or retrain"
            ) from None
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
        return read_metrics(self.path / "metrics.jsonl")[0]

    def metrics(self) -> pd.DataFrame:
        """Tidy metrics: one row per (step, group, metric) (its first write), with the run's
        gamma attached."""
        df = pd.DataFrame(self._metric_rows, columns=METRIC_COLUMNS)
        df = df.drop_duplicates(["step", "group", "metric"]).reset_index(drop=True)
        return df.assign(run=self.name, gamma=self.config.model.gamma)
