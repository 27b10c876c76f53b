"""Frozen configs for a run (task, model, training) and their JSON form.

`RunConfig` is everything needed to rebuild the model, the data and the results of a run;
it is written to `config.json` in the run directory. Unknown keys are an error, not ignored.
Missing keys take their defaults, except where a default changed (LEGACY_MODEL): a file
without `embed_fan_in` was written when the only convention was "vocab", and keeps it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initlens.models.errors import UserError
from initlens.models.tasks import MixtureTask, Task, task_class

# LayerNorm placements (models/layernorm.py): LN = pre-LN (TransformerLens); post-LN; none;
# only the attention input, only the MLP input, only the query/key or only the value input.
NORMALIZATIONS = ("LN", "post", "none", "attn", "mlp", "qk", "v")
ACT_FN_NAMES = ("relu", "gelu", "gelu_new", "silu")
EMBED_FAN_IN = ("vocab", "d_model")
SCHEDULES = ("warmup_cosine", "gradual_warmup", "inverse_sqrt")  # models/trainer.py lr_at
DECAY = ("matrices", "all")  # which parameters AdamW's weight decay applies to
# What a config.json written before a field existed meant (its value then, where the
# default has changed since): missing keys load with these values, not today's defaults.
LEGACY_MODEL = {"embed_fan_in": "vocab"}
ARCHITECTURES = ("transformer", "emb_mlp")  # emb_mlp: models/emb_mlp.py

# Field checks made from the annotations of every config dataclass (`check_fields`): the
# type, then these ranges. Integers are >= 0 unless SIGNED, and at most MAX_INT.
MAX_INT = 2**31 - 1
SIGNED = {"shifts", "twist_shift"}
RANGES = {"beta1": (0.0, 1.0), "beta2": (0.0, 1.0)}  # lo <= value < hi
SIZE_LIMITS = {
    "n_layers": 256,
    "d_model": 16384,
    "n_heads": 1024,
    "d_head": 16384,
    "d_mlp": 65536,
    "n_ctx": 65536,
}  # larger models do not fit one GPU


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and init scale. Every weight matrix W starts as N(0, d_in^-2*gamma).

    d_in is the fan-in of the matrix: d_model for W_Q/W_K/W_V, W_in and W_U; n_heads*d_head
    for W_O; d_mlp for W_out. For the embeddings W_E and W_pos, `embed_fan_in="d_model"` (the
    authors' released code, the default) uses d_model; `"vocab"` (the paper's text: one-hot
    input) uses d_vocab and n_ctx. Biases start at zero (`biases=False`: the attention and
    MLP biases stay exactly zero, frozen), LayerNorm weights at one. Two more init knobs:
    `readout_scale` multiplies the unembedding's std; `init_rank` r keeps the top r singular
    directions of every matrix larger than that (rescaled to the same norm, so the std is
    unchanged). `d_head` is free of d_model / n_heads; `final_ln` adds or drops the final
    LayerNorm (None: as the placement has it).
    """

    gamma: float = 0.5
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 1
    d_head: int | None = None  # default d_model // n_heads; any value when set
    d_mlp: int | None = None  # default 4 * d_model; 0 means attention-only
    act_fn: str = "relu"
    normalization: str = "LN"  # pre-LN; or one of NORMALIZATIONS (LayerNorm placement)
    embed_fan_in: str = "d_model"  # or "vocab" (d_vocab and n_ctx)
    biases: bool = True  # biases on Q/K/V/O and the MLP; False: zero and frozen
    final_ln: bool | None = None  # final LayerNorm; None: where the placement has one
    n_ctx: int | None = None  # default: the task's sequence length
    readout_scale: float = 1.0  # the unembedding starts at readout_scale * d_model^-gamma
    init_rank: int | None = None  # low-rank init: weight matrices start at this rank
    architecture: str = "transformer"  # or "emb_mlp": summed embeddings -> d_mlp -> vocab

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // max(self.n_heads, 1)

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    def validate(self) -> None:
        if not self.gamma > 0:
            raise UserError(
                f"gamma={self.gamma} is invalid: init std is d_in^-gamma, so gamma "
                f"must be > 0 (0.3 large init, 0.5 standard, 0.8 small init)"
            )
        for name in ("n_layers", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be >= 1")
        if self.d_head is None and self.d_model % self.n_heads:
            raise UserError(
                f"d_model={self.d_model} is not divisible by n_heads="
                f"{self.n_heads}; change one, or set d_head explicitly"
            )
        if self.head_dim < 1:
            raise UserError(f"d_head={self.d_head} must be >= 1")
        if self.mlp_dim < 0:
            raise UserError(f"d_mlp={self.d_mlp} must be >= 0 (0 = attention-only)")
        if not self.readout_scale > 0:
            raise UserError(f"readout_scale={self.readout_scale} must be > 0")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise UserError(f"n_ctx={self.n_ctx} must be >= 1 (or none: the task's length)")
        if self.init_rank is not None and self.init_rank < 1:
            raise UserError(f"init_rank={self.init_rank} must be >= 1 (or none: full rank)")
        _choice("act_fn", self.act_fn, ACT_FN_NAMES)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        if self.normalization == "mlp" and self.mlp_dim == 0:
            raise UserError(
                "normalization='mlp' puts LayerNorm on the MLP input, but d_mlp=0 "
                "(attention-only) has no MLP; choose another placement"
            )
        _choice("embed_fan_in", self.embed_fan_in, EMBED_FAN_IN)
        if self.final_ln and self.normalization == "none":
            raise UserError(
                "final_ln=True needs LayerNorm, but normalization='none' has "
                "none; choose another placement or drop final_ln"
            )
        _choice("architecture", self.architecture, ARCHITECTURES)
        if self.architecture == "emb_mlp" and self.mlp_dim == 0:
            raise UserError(
                "architecture='emb_mlp' is embeddings -> hidden layer -> vocabulary; "
                "it needs d_mlp > 0"
            )


@dataclass(frozen=True)
class TrainConfig:
    """AdamW with a warm-up then decay schedule; loss on the label (last) position.

    schedule: "warmup_cosine" (linear warm-up from lr/warmup_steps to lr, cosine decay to
    lr * min_lr_ratio), "gradual_warmup" (the authors' GradualWarmupScheduler + cosine:
    warm-up from lr / warmup_multiplier), "inverse_sqrt" (linear warm-up, then
    lr * sqrt(warmup_steps / step)). decay: weight decay on "matrices" only or on "all"
    parameters (biases and LayerNorm weights too).
    """

    steps: int = 3000
    batch_size: int = 100
    lr: float = 3e-3
    weight_decay: float = 0.01
    decay: str = "matrices"  # or "all"
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    schedule: str = "warmup_cosine"  # or "gradual_warmup", "inverse_sqrt"
    warmup_multiplier: float = 20.0  # gradual_warmup: the warm-up starts at lr / this
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 50  # plus a denser, log-spaced schedule early in training
    eval_size: int = 1000  # rows per evaluation group (fixed subset)
    n_checkpoints: int = 12  # besides step 0 and the last step
    seed: int = 0  # init and batch order
    data_seed: int = 0  # task data (e.g. the memorized lookup table)
    batch_seed: int | None = None  # batch order when set (one value: runs share batches)
    device: str = "auto"  # auto = cuda when present, else cpu

    @property
    def batch_order_seed(self) -> int:
        """The seed of the batch order: batch_seed, else seed."""
        return self.seed if self.batch_seed is None else self.batch_seed

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise UserError(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise UserError("weight_decay, grad_clip and warmup_steps must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        if not self.warmup_multiplier >= 1:
            raise UserError(f"warmup_multiplier={self.warmup_multiplier} must be >= 1")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("decay", self.decay, DECAY)
        if not re.fullmatch(r"cuda:\d+", self.device):
            _choice("device", self.device, ("auto", "cpu", "cuda", "cuda:N"))


@dataclass(frozen=True)
class RunConfig:
    """One training run: which task, which model, how to train."""

    task: Task = field(default_factory=MixtureTask)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def n_ctx(self) -> int:
        return self.task.seq_len if self.model.n_ctx is None else self.model.n_ctx

    def validate(self) -> RunConfig:
        for section in ("task", "model", "train"):
            obj = getattr(self, section)
            check_fields(type(obj), _fields(obj), section)
        self.model.validate()
        self.train.validate()
        self.task.validate(n_ctx=self.n_ctx)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": {"name": self.task.name, **dataclasses.asdict(self.task)},
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        _reject_unknown(data, {"task", "model", "train"}, source)
        task_data = data.get("task", {})
        if not isinstance(task_data, dict):
            raise UserError(f"{source}: task must be a JSON object")
        task_data = dict(task_data)
        name = task_data.pop("name", "mixture")
        if not isinstance(name, str):
            raise UserError(f"{source}: task: name={name!r}: expected a string")
        task_cls = task_class(name)
        return cls(
            task=build(task_cls, task_data, f"{source}: task"),
            model=build(
                ModelConfig, _legacy(data.get("model", {}), LEGACY_MODEL), f"{source}: model"
            ),
            train=build(TrainConfig, data.get("train", {}), f"{source}: train"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config file (JSON), with a clear error for a missing or malformed one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist; check the path") from None
        except json.JSONDecodeError as e:
            raise UserError(
                f"config file {path} is not valid JSON ({e.msg} at line "
                f"{e.lineno}); fix or regenerate it"
            ) from None
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not UTF-8 text; fix or regenerate it") from None
        except OSError as e:
            raise UserError(f"config file {path} cannot be read ({e.strerror})") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data, source=str(path))

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some fields of some sections changed: replace(model={"gamma": 0.8})."""
        parts = {"task": self.task, "model": self.model, "train": self.train}
        for section, changes in sections.items():
            if changes:
                parts[section] = build(
                    type(parts[section]), {**_fields(parts[section]), **changes}, section
                )
        return RunConfig(**parts)


def _fields(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _legacy(data, legacy: dict[str, Any]):
    """`data` with the old meaning of the fields it lacks (see LEGACY_MODEL)."""
    return {**legacy, **data} if isinstance(data, dict) else data


def _reject_unknown(data: dict, known: set[str], source: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known keys are "
            f"{', '.join(sorted(known))}"
        )


def build(cls, data: dict[str, Any], source: str):
    """Instantiate a config dataclass from a dict, converting JSON lists back to tuples."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(data, set(fields), source)
    values = {k: _tuplify(v) for k, v in data.items()}
    check_fields(cls, values, source)
    return cls(**values)


def check_fields(cls, values: dict[str, Any], source: str) -> None:
    """Check each value against its field's annotation in `cls` (type, then range): a
    UserError naming the field and what it expects."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            continue
        if not _matches(value, hint):
            raise UserError(f"{source}: {name}={_show(value)}: expected {_expected(hint)}")
        problem = _out_of_range(name, value)
        if problem:
            raise UserError(f"{source}: {name}={_show(value)}: {problem}")


def _show(value) -> str:
    """A value as its JSON text (lists for tuples), else its repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return True  # annotations this check does not know are left to `validate`


def _expected(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each item {_expected(args[0])}"
        return "a list [" + ", ".join(_expected(a) for a in args) + "]"
    return {
        type(None): "null",
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }.get(hint, str(hint))


def _out_of_range(name: str, value) -> str | None:
    """Why a value of the right type is out of range for field `name`, or None."""
    if isinstance(value, tuple):
        return next((p for v in value if (p := _out_of_range(name, v))), None)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, numbers.Integral):
        if value < 0 and name not in SIGNED:
            return "must be >= 0"
        if abs(value) > MAX_INT:
            return f"must be at most {MAX_INT}"
        if value > SIZE_LIMITS.get(name, MAX_INT):
            return f"is too large (at most {SIZE_LIMITS[name]})"
    if name in RANGES and not RANGES[name][0] <= value < RANGES[name][1]:
        lo, hi = RANGES[name]
        return f"must lie in [{lo:g}, {hi:g})"
    return None


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _choice(name: str, value: str, allowed: tuple[str, ...], prefix_ok: str = "") -> None:
    if value in allowed or (prefix_ok and str(value).startswith(prefix_ok)):
        return
    raise UserError(f"{name}={value!r} is not one of {', '.join(allowed)}")
