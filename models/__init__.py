"""Tasks, model construction at init scale gamma, training, and run directories."""

from models.build import build_model, realized_init, resolve_device
from models.config import ModelConfig, RunConfig, TrainConfig
from models.errors import UserError
from models.run import Run
from models.tasks import CompositeTask, MixtureTask
from models.train import train

__all__ = ["CompositeTask", "MixtureTask", "ModelConfig", "Run", "RunConfig", "TrainConfig",
           "UserError", "build_model", "realized_init", "resolve_device", "train"]
