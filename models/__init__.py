"""Tasks, model construction at init scale gamma, training, and run directories."""

from initlens.models.build import build_model, realized_init, resolve_device
from initlens.models.config import ModelConfig, RunConfig, TrainConfig
from initlens.models.errors import UserError
from initlens.models.run import Run
from initlens.models.tasks import CompositeTask, MixtureTask
from initlens.models.train import train

__all__ = [
    "CompositeTask",
    "MixtureTask",
    "ModelConfig",
    "Run",
    "RunConfig",
    "TrainConfig",
    "UserError",
    "build_model",
    "realized_init",
    "resolve_device",
    "train",
]
