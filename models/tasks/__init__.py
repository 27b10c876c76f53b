"""Task generators: deterministic from a seed, returning a `datasets.Dataset`."""

from models.errors import UserError
from models.tasks.base import Group, Task, as_tensors, dataset_arrays, group_mask
from models.tasks.composite import CompositeTask
from models.tasks.formal import FormalTask
from models.tasks.mixture import MixtureTask
from models.tasks.modular import ModularTask
from models.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {"mixture": MixtureTask, "composite": CompositeTask,
                                "modular": ModularTask, "formal": FormalTask, "text": TextTask}


def task_class(name: str) -> type[Task]:
    """The task class called `name`, or a UserError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "CompositeTask", "FormalTask", "Group", "MixtureTask", "ModularTask", "Task",
           "TextTask", "as_tensors", "dataset_arrays", "group_mask", "task_class"]
