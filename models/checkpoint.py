"""Checkpoint files: safetensors + JSON, written atomically, loaded without unpickling."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from initlens.models.errors import UserError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str = "file") -> dict | list:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is corrupt ({e.msg}); restore or delete it") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text; restore or delete it") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror}); restore it") from None


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write tensors (copied to contiguous CPU memory) as safetensors."""
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, st_save(cpu, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its metadata; a clear UserError if it is bad."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"checkpoint {path} does not exist; list the run's checkpoints with `probe info RUN`"
        ) from None
    except OSError as e:
        raise UserError(
            f"checkpoint {path} cannot be read ({e.strerror}); restore it, or "
            f"delete it and resume from an earlier one"
        ) from None
    try:
        tensors = st_load(raw)
        metadata = _metadata(raw)
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise UserError(
            f"checkpoint {path} is corrupt or not a safetensors file ({e}); "
            f"delete it and resume from an earlier one"
        ) from None
    return tensors, metadata


def _metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return header.get("__metadata__", {}) or {}


def optimizer_tensors(
    opt: torch.optim.Optimizer, member: int | None = None
) -> dict[str, torch.Tensor]:
    """AdamW moment estimates and step counts, keyed by parameter index.

    member: of parameters stacked along a first (member) axis, this member's state alone,
    in the layout of a model trained on its own."""
    out = {}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for k, v in opt.state.get(p, {}).items():
            if not torch.is_tensor(v):
                v = torch.tensor(float(v))
            elif member is not None and k != "step":
                v = v[member]
            out[f"{i}.{k}"] = v
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved AdamW state into `opt`; a ValueError if it does not fit its parameters."""
    params = [p for g in opt.param_groups for p in g["params"]]
    expected = {
        f"{i}.{name}": () if name == "step" else tuple(p.shape)
        for i, p in enumerate(params)
        for name in ("step", "exp_avg", "exp_avg_sq")
    }
    indices = {key.split(".", 1)[0] for key in tensors}
    complete = {f"{i}.{name}" for i in indices for name in ("step", "exp_avg", "exp_avg_sq")}
    if set(tensors) != complete or not complete <= set(expected):
        wrong = sorted(set(tensors) ^ (complete & set(expected)))
        raise ValueError(
            f"its keys do not match the model's parameters ({', '.join(wrong[:3])}"
            f"{', ...' if len(wrong) > 3 else ''})"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != expected[key]:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)}, the model needs {expected[key]}"
            )
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        p = params[int(i)]
        opt.state[p][name] = value.to(p.device) if name != "step" else value.to("cpu")
