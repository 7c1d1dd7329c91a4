"""distillbench: compare knowledge-distillation methods for transformer language models in one harness."""

from distillbench.errors import UserError
from distillbench.method import (
    DISTILL_MASK,
    EXAMPLE_INDEX,
    Method,
    ModelPair,
    Outputs,
    Stage,
    get_method,
    list_methods,
    register_method,
)
from distillbench.task import Task, get_task, list_tasks, register_task

__version__ = "0.1.0"

__all__ = [
    "DISTILL_MASK",
    "EXAMPLE_INDEX",
    "Method",
    "ModelPair",
    "Outputs",
    "Stage",
    "Task",
    "UserError",
    "get_method",
    "get_task",
    "list_methods",
    "list_tasks",
    "register_method",
    "register_task",
]
