"""Tasks: the ``layer-by-layer-32`` benchmark, task resolution, offline data, mirroring."""

from mteb_midlayer.tasks.benchmark import (
    LAYER_BY_LAYER_32,
    LAYER_BY_LAYER_32_TASKS,
    get_benchmark,
    resolve_tasks,
    task_main_score,
)
from mteb_midlayer.tasks.local import LocalDataError, is_local_task, local_task, read_task_data
from mteb_midlayer.tasks.mirror import HubUnreachableError, mirror_task, mirror_tasks

__all__ = [
    "LAYER_BY_LAYER_32",
    "LAYER_BY_LAYER_32_TASKS",
    "HubUnreachableError",
    "LocalDataError",
    "get_benchmark",
    "is_local_task",
    "local_task",
    "mirror_task",
    "mirror_tasks",
    "read_task_data",
    "resolve_tasks",
    "task_main_score",
]
