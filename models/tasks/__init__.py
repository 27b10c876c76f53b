"""Task generators: deterministic from a seed, returning a `datasets.Dataset`."""

from initlens.models.errors import UserError
from initlens.models.tasks.base import Group, Task, as_tensors, dataset_arrays, group_mask
from initlens.models.tasks.composite import CompositeTask
from initlens.models.tasks.formal import FormalTask
from initlens.models.tasks.mixture import MixtureTask
from initlens.models.tasks.modular import ModularTask
from initlens.models.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {
    "mixture": MixtureTask,
    "composite": CompositeTask,
    "modular": ModularTask,
    "formal": FormalTask,
    "text": TextTask,
}


def task_class(name: str) -> type[Task]:
    """The task class called `name`, or a UserError listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


__all__ = [
    "TASKS",
    "CompositeTask",
    "FormalTask",
    "Group",
    "MixtureTask",
    "ModularTask",
    "Task",
    "TextTask",
    "as_tensors",
    "dataset_arrays",
    "group_mask",
    "task_class",
]
